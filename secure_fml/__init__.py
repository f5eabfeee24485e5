"""secure-fml: privacy-hardened federated meta-learning."""

__version__ = "0.1.0"
