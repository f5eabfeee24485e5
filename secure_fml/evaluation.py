"""Evaluation on unseen clients: global (no adaptation) and personalized accuracy.

Each test client's data is split once, deterministically, into a support set
(fraction p) and a query set. Personalization adapts only on the support set;
accuracy is measured only on the query set. We report the paper's pooled
accuracy over all query points and the per-client distribution (mean, std,
10th percentile) as a fairness view (Jiang et al. 2019: always report both the
global and the personalized numbers). Beside accuracy, every result carries the
metrics of :func:`secure_fml.metrics.classification_metrics` (balanced accuracy;
for binary tasks sensitivity, specificity and AUROC), pooled over query points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from secure_fml._functional import Batch, FunctionalModel
from secure_fml.algorithms import Algorithm
from secure_fml.data import ClientData, InputKind
from secure_fml.metrics import classification_metrics

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
    global_metrics: dict[str, Any] = field(default_factory=dict)
    personalized_metrics: dict[str, Any] = field(default_factory=dict)

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


@torch.no_grad()
def predict(
    model: FunctionalModel, flat: torch.Tensor, x: torch.Tensor, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted labels and, for a two-output model, P(y = 1) for each row of ``x``."""
    preds: list[torch.Tensor] = []
    pos: list[torch.Tensor] = []
    for i in range(0, len(x), chunk):
        logits = model.logits(flat, x[i : i + chunk])
        preds.append(logits.argmax(dim=1))
        if logits.shape[1] == 2:
            pos.append(torch.softmax(logits.double(), dim=1)[:, 1])
    pred = torch.cat(preds).cpu().numpy()
    return pred, (torch.cat(pos).cpu().numpy() if pos else None)


def evaluate(
    algorithm: Algorithm,
    state: torch.Tensor,
    clients: Sequence[ClientData],
    *,
    input_kind: InputKind,
    support_fraction: float,
    seed: int = 0,
    adapt_steps: int | None = None,
    on_client: Callable[[int, int], None] | None = None,
    device: torch.device | None = None,
) -> EvalResult:
    """Global and personalized accuracy of ``state`` on ``clients`` (never trained on).

    ``on_client(done, total)`` is called after each client (e.g. ``Progress.update``).
    ``device``: where adaptation and prediction run (None: where ``state`` is).
    """
    if device is not None:
        state = state.to(device)
    if not clients:
        raise ValueError("evaluate() needs at least one client")
    model = algorithm.model
    theta = algorithm.theta(state).detach()
    g_acc, p_acc = [], []
    g_correct = p_correct = n_total = 0
    g_loss = p_loss = 0.0
    ys: list[np.ndarray] = []
    preds: dict[str, list[np.ndarray]] = {"g": [], "p": []}
    scores: dict[str, list[np.ndarray]] = {"g": [], "p": []}
    num_outputs = 0
    for i, client in enumerate(clients):
        support, query = support_query_for_eval(
            client, support_fraction=support_fraction, seed=seed, index=i
        )
        s, q = to_batch(support, input_kind), to_batch(query, input_kind)
        if device is not None:
            s, q = s.to(device), q.to(device)
        adapted = algorithm.adapt(state, s, steps=adapt_steps).detach()
        y = q.y.cpu().numpy()
        ys.append(y)
        for key, flat in (("g", theta), ("p", adapted)):
            pred, pos = predict(model, flat, q.x)
            preds[key].append(pred)
            if pos is not None:
                scores[key].append(pos)
                num_outputs = 2
        cg = int((preds["g"][-1] == y).sum())
        cp = int((preds["p"][-1] == y).sum())
        g_correct += cg
        p_correct += cp
        n_total += len(q)
        g_loss += model.mean_loss(theta, q) * len(q)
        p_loss += model.mean_loss(adapted, q) * len(q)
        g_acc.append(cg / len(q))
        p_acc.append(cp / len(q))
        if on_client is not None:
            on_client(i + 1, len(clients))
    y_all = np.concatenate(ys)

    def pooled(key: str) -> dict[str, Any]:
        return classification_metrics(
            y_all,
            np.concatenate(preds[key]),
            num_outputs=num_outputs,
            positive_scores=np.concatenate(scores[key]) if scores[key] else None,
        )

    return EvalResult(
        num_clients=len(clients),
        num_query_points=n_total,
        global_accuracy=g_correct / n_total,
        personalized_accuracy=p_correct / n_total,
        global_loss=g_loss / n_total,
        personalized_loss=p_loss / n_total,
        per_client_global=tuple(g_acc),
        per_client_personalized=tuple(p_acc),
        global_metrics=pooled("g"),
        personalized_metrics=pooled("p"),
    )
