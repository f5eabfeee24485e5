"""Synthetic(α, β): the FedProx federated task family (Li et al. 2020, MLSys).

It is the project's embedded default: it needs no files, is deterministic given
the seed, and its heterogeneity is tunable. ``alpha`` controls how much the
clients' *models* differ and ``beta`` how much their *inputs* differ; with both
at 0 the clients still have different data but share one generating
distribution family.

Generation, per client k (as in the FedProx reference generator
``generate_niid.py``; like that code, ``alpha`` and ``beta`` are used as standard
deviations):

* n_k = floor(LogNormal(4, 2)) + 50 samples (``min_samples`` is the +50),
* u_k ~ N(0, α), W_k ~ N(u_k, 1) of shape (dim, classes), b_k ~ N(u_k, 1),
* B_k ~ N(0, β), v_k ~ N(B_k, 1) of length dim,
* x ~ N(v_k, Σ) with Σ = diag(j^-1.2), j = 1..dim,
* y = argmax softmax(x W_k + b_k) = argmax(x W_k + b_k).

This module uses a seeded NumPy generator on purpose: it synthesizes public
benchmark data, never DP noise or masks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from privacy.errors import ConfigError

from ._core import ClientData, DatasetStream, FederatedDataset, InputKind

__all__ = ["make_synthetic", "stream_synthetic"]


def make_synthetic(
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    num_clients: int = 100,
    dim: int = 60,
    num_classes: int = 10,
    seed: int = 0,
    min_samples: int = 50,
    log_mean: float = 4.0,
    log_sigma: float = 2.0,
    max_samples: int | None = None,
) -> FederatedDataset:
    """Generate Synthetic(α, β) as a TABULAR float32 :class:`FederatedDataset`.

    ``max_samples`` (default: no cap, as in FedProx) bounds the heavy log-normal
    tail, which is handy for quick runs. Client ids are zero-padded: ``client_00``, ...
    """
    return stream_synthetic(
        alpha=alpha,
        beta=beta,
        num_clients=num_clients,
        dim=dim,
        num_classes=num_classes,
        seed=seed,
        min_samples=min_samples,
        log_mean=log_mean,
        log_sigma=log_sigma,
        max_samples=max_samples,
    ).materialize()


def stream_synthetic(
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    num_clients: int = 100,
    dim: int = 60,
    num_classes: int = 10,
    seed: int = 0,
    min_samples: int = 50,
    log_mean: float = 4.0,
    log_sigma: float = 2.0,
    max_samples: int | None = None,
) -> DatasetStream:
    """:func:`make_synthetic`'s dataset, one client at a time: each pass regenerates
    the clients in order (the same draws as :func:`make_synthetic`), holding one
    client's arrays and the O(num_clients) per-client scalars at once."""
    if alpha < 0 or beta < 0:
        raise ConfigError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
    if dim < 1:
        raise ConfigError(f"dim must be >= 1, got {dim}")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
    if min_samples < 1:
        raise ConfigError(f"min_samples must be >= 1, got {min_samples}")
    if log_sigma < 0:
        raise ConfigError(f"log_sigma must be >= 0, got {log_sigma}")
    if max_samples is not None and max_samples < min_samples:
        raise ConfigError(f"max_samples ({max_samples}) must be >= min_samples ({min_samples})")

    def clients() -> Iterator[ClientData]:
        rng = np.random.default_rng(seed)
        sizes = rng.lognormal(log_mean, log_sigma, num_clients).astype(np.int64) + min_samples
        if max_samples is not None:
            sizes = np.minimum(sizes, max_samples)
        u = rng.normal(0.0, alpha, num_clients)
        B = rng.normal(0.0, beta, num_clients)
        v = rng.normal(B[:, None], 1.0, (num_clients, dim))
        scale = np.power(np.arange(1, dim + 1, dtype=np.float64), -1.2) ** 0.5  # sqrt(diag Σ)
        width = len(str(num_clients - 1))
        for k in range(num_clients):
            W = rng.normal(u[k], 1.0, (dim, num_classes))
            b = rng.normal(u[k], 1.0, num_classes)
            x = v[k] + rng.standard_normal((int(sizes[k]), dim)) * scale
            y = np.argmax(x @ W + b, axis=1).astype(np.int64)
            yield ClientData(f"client_{k:0{width}d}", x.astype(np.float32), y)

    return DatasetStream(
        name=f"synthetic_{alpha:g}_{beta:g}",
        num_classes=num_classes,
        input_kind=InputKind.TABULAR,
        clients=clients,
        metadata={
            "generator": "Synthetic(alpha, beta), Li et al. 2020 (FedProx)",
            "alpha": f"{alpha:g}",
            "beta": f"{beta:g}",
            "seed": str(seed),
        },
    )
