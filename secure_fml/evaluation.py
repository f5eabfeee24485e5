"""Evaluation on unseen clients: global (no adaptation) and personalized accuracy.

Each test client's data is split once, deterministically, into a support set
(fraction p) and a query set. Personalization adapts only on the support set;
accuracy is measured only on the query set. We report the paper's pooled
accuracy over all query points and the per-client distribution (mean, std,
10th percentile) as a fairness view (Jiang et al. 2019: always report both the
global and the personalized numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from secure_fml._functional import Batch
from secure_fml.algorithms import Algorithm
from secure_fml.data import ClientData, InputKind

__all__ = ["EvalResult", "evaluate", "to_batch"]


def to_batch(client: ClientData, input_kind: InputKind) -> Batch:
    x = torch.from_numpy(np.ascontiguousarray(client.x))
    x = x.long() if input_kind is InputKind.SEQUENCE else x.float()
    unit = None
    if client.units is not None:
        # Local codes 0..U-1 of the client's privacy units (a person's rows share one).
        _, codes = np.unique(client.units, return_inverse=True)
        unit = torch.from_numpy(codes.astype(np.int64).reshape(-1))
    return Batch(x, torch.from_numpy(np.ascontiguousarray(client.y)).long(), unit)


@dataclass(frozen=True)
class EvalResult:
    num_clients: int
    num_query_points: int
    global_accuracy: float
    personalized_accuracy: float
    global_loss: float
    personalized_loss: float
    per_client_global: tuple[float, ...]
    per_client_personalized: tuple[float, ...]

    @staticmethod
    def _dist(values: Sequence[float]) -> dict[str, float]:
        a = np.asarray(values, dtype=np.float64)
        return {"mean": float(a.mean()), "std": float(a.std()), "p10": float(np.percentile(a, 10))}

    def as_dict(self, *, per_client: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: v for k, v in asdict(self).items() if not k.startswith("per_client")
        }
        out["per_client_global"] = self._dist(self.per_client_global)
        out["per_client_personalized"] = self._dist(self.per_client_personalized)
        if per_client:
            out["per_client_global"]["values"] = list(self.per_client_global)
            out["per_client_personalized"]["values"] = list(self.per_client_personalized)
        return out


def support_query_for_eval(
    client: ClientData, *, support_fraction: float, seed: int, index: int
) -> tuple[ClientData, ClientData]:
    return client.split_support_query(
        support_fraction=support_fraction, rng=np.random.default_rng([seed, index])
    )


def evaluate(
    algorithm: Algorithm,
    state: torch.Tensor,
    clients: Sequence[ClientData],
    *,
    input_kind: InputKind,
    support_fraction: float,
    seed: int = 0,
    adapt_steps: int | None = None,
) -> EvalResult:
    """Global and personalized accuracy of ``state`` on ``clients`` (never trained on)."""
    if not clients:
        raise ValueError("evaluate() needs at least one client")
    model = algorithm.model
    theta = algorithm.theta(state).detach()
    g_acc, p_acc = [], []
    g_correct = p_correct = n_total = 0
    g_loss = p_loss = 0.0
    for i, client in enumerate(clients):
        support, query = support_query_for_eval(
            client, support_fraction=support_fraction, seed=seed, index=i
        )
        s, q = to_batch(support, input_kind), to_batch(query, input_kind)
        adapted = algorithm.adapt(state, s, steps=adapt_steps).detach()
        cg, cp = model.correct(theta, q), model.correct(adapted, q)
        g_correct += cg
        p_correct += cp
        n_total += len(q)
        g_loss += model.mean_loss(theta, q) * len(q)
        p_loss += model.mean_loss(adapted, q) * len(q)
        g_acc.append(cg / len(q))
        p_acc.append(cp / len(q))
    return EvalResult(
        num_clients=len(clients),
        num_query_points=n_total,
        global_accuracy=g_correct / n_total,
        personalized_accuracy=p_correct / n_total,
        global_loss=g_loss / n_total,
        personalized_loss=p_loss / n_total,
        per_client_global=tuple(g_acc),
        per_client_personalized=tuple(p_acc),
    )
