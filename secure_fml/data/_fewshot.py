"""A few-shot task family where meta-learning matters: one representation, many label maps.

The project's embedded default. Every client sees the same ``ways`` concepts
(class prototypes in a shared latent space, observed through one fixed random
non-linear embedding with high-variance nuisance directions), but each client
names them with its **own random label permutation** and holds only a handful
of examples. So:

* one global model cannot serve the clients without adaptation: the same input
  has different labels at different clients (a global accuracy near chance is
  the *expected* result, not a bug);
* a site alone cannot learn the embedding from its few support examples
  (the nuisance directions dominate the raw features);
* what transfers is the representation and an initialization from which a few
  gradient steps on a site's support set recover its label map: exactly what
  FedMeta (MAML, Meta-SGD) meta-learns and what FedAvg does not aim for.

Generation (seeded NumPy: public benchmark data, never DP noise or masks):

* prototypes ``mu_c ~ N(0, I_latent) * separation`` for ``c < ways``, shared;
* an embedding ``e(z) = tanh(z A + a) B`` with fixed random ``A``, ``a``, ``B``,
  shared; nuisance ``n ~ N(0, nuisance^2 I)`` in ``nuisance_dim`` extra features
  mixed into all features by a fixed random rotation ``R``;
* client k: a permutation ``pi_k`` of the ``ways`` labels and
  ``samples_per_client`` samples with concept ``c`` uniform,
  ``z = mu_c + N(0, noise^2 I)``, ``x = [e(z), n] R``, ``y = pi_k(c)``.
"""

from __future__ import annotations

import numpy as np

from privacy.errors import ConfigError

from ._core import ClientData, FederatedDataset, InputKind

__all__ = ["make_fewshot"]


def make_fewshot(
    *,
    num_clients: int = 200,
    ways: int = 5,
    samples_per_client: int = 50,
    latent_dim: int = 8,
    embed_dim: int = 16,
    nuisance_dim: int = 16,
    separation: float = 1.5,
    noise: float = 0.5,
    nuisance: float = 1.5,
    seed: int = 0,
) -> FederatedDataset:
    """Generate the few-shot label-permutation family as a TABULAR :class:`FederatedDataset`.

    ``embed_dim + nuisance_dim`` features per sample, ``ways`` classes, client ids
    ``client_000``, ... (zero-padded).
    """
    for name, value, minimum in (
        ("num_clients", num_clients, 1),
        ("ways", ways, 2),
        ("samples_per_client", samples_per_client, 2),
        ("latent_dim", latent_dim, 1),
        ("embed_dim", embed_dim, 1),
        ("nuisance_dim", nuisance_dim, 0),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    for name, fvalue in (("separation", separation), ("noise", noise), ("nuisance", nuisance)):
        if not isinstance(fvalue, int | float) or not np.isfinite(fvalue) or fvalue < 0:
            raise ConfigError(f"{name} must be a finite number >= 0, got {fvalue!r}")

    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((ways, latent_dim)) * separation
    A = rng.standard_normal((latent_dim, embed_dim)) / np.sqrt(latent_dim)
    a = rng.standard_normal(embed_dim) * 0.5
    B = rng.standard_normal((embed_dim, embed_dim)) / np.sqrt(embed_dim)
    dim = embed_dim + nuisance_dim
    R, _ = np.linalg.qr(rng.standard_normal((dim, dim)))

    width = len(str(num_clients - 1))
    clients: list[ClientData] = []
    for k in range(num_clients):
        perm = rng.permutation(ways)
        concept = rng.integers(0, ways, samples_per_client)
        z = mu[concept] + rng.standard_normal((samples_per_client, latent_dim)) * noise
        signal = np.tanh(z @ A + a) @ B
        nuis = rng.standard_normal((samples_per_client, nuisance_dim)) * nuisance
        x = np.concatenate([signal, nuis], axis=1) @ R
        y = perm[concept].astype(np.int64)
        clients.append(ClientData(f"client_{k:0{width}d}", x.astype(np.float32), y))
    return FederatedDataset(
        "fewshot",
        tuple(clients),
        ways,
        InputKind.TABULAR,
        feature_names=tuple(f"x{j}" for j in range(dim)),
        metadata={
            "generator": "few-shot label-permutation family (shared embedding, per-client labels)",
            "ways": str(ways),
            "samples_per_client": str(samples_per_client),
            "seed": str(seed),
        },
    )
