"""Baselines printed beside every result: what a site gets without federated (meta-)learning.

For the same unseen test clients and the same support/query splits as
:func:`secure_fml.evaluation.evaluate` (seeded by ``seed`` and the client's
index), on the query points only:

* ``chance``: expected accuracy of a uniform guess, ``1 / num_classes``;
* ``majority``: always predicting the class most frequent in the client's own
  **support** set (ties: the smallest label), so no query label is looked at;
* ``untrained_adapted``: the untrained initial model personalized exactly as
  the trained one is (same steps, same learning rate);
* ``local_only``: the same architecture trained by the site alone, from the
  same initialization, on its support set only: ``steps`` full-batch Adam
  steps; with several learning rates, the one chosen by k-fold
  cross-validation on the support set itself (the query set is never seen).

A federated result that does not clearly beat ``local_only`` and ``majority``
has demonstrated nothing. :func:`baseline_summary` bundles them for
``summary.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from secure_fml._functional import Batch, FunctionalModel
from secure_fml.algorithms import Algorithm
from secure_fml.config import Config
from secure_fml.data import ClientData, ClientSplit, FederatedDataset, InputKind
from secure_fml.evaluation import evaluate, predict, support_query_for_eval, to_batch
from secure_fml.metrics import classification_metrics

__all__ = [
    "DEFAULT_LOCAL_LRS",
    "DEFAULT_LOCAL_STEPS",
    "baseline_summary",
    "chance_rate",
    "local_only",
    "majority_class",
    "summary_fields",
    "train_alone",
]

DEFAULT_LOCAL_STEPS = 100
DEFAULT_LOCAL_LRS: tuple[float, ...] = (0.01,)

#: Called once per finished client (index, number of clients); e.g. a progress bar.
ClientCallback = Callable[[int, int], None]


def chance_rate(num_classes: int) -> float:
    """Expected accuracy of guessing uniformly among ``num_classes`` labels."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return 1.0 / num_classes


def _splits(
    clients: Sequence[ClientData], *, support_fraction: float, seed: int
) -> list[tuple[ClientData, ClientData]]:
    if not clients:
        raise ValueError("baselines need at least one client")
    return [
        support_query_for_eval(c, support_fraction=support_fraction, seed=seed, index=i)
        for i, c in enumerate(clients)
    ]


def majority_class(
    clients: Sequence[ClientData], *, num_classes: int, support_fraction: float, seed: int
) -> dict[str, Any]:
    """Metrics of predicting each client's support-set majority class on its query set."""
    ys, preds = [], []
    for support, query in _splits(clients, support_fraction=support_fraction, seed=seed):
        counts = np.bincount(support.y, minlength=num_classes)
        ys.append(query.y)
        preds.append(np.full(len(query), int(np.argmax(counts)), dtype=np.int64))
    y, p = np.concatenate(ys), np.concatenate(preds)
    # A constant predictor scores every point alike: its AUROC is 1/2 by definition.
    scores = np.zeros(len(y)) if num_classes == 2 else None
    return classification_metrics(y, p, num_outputs=num_classes, positive_scores=scores)


def train_alone(
    model: FunctionalModel,
    init: torch.Tensor,
    support: Batch,
    *,
    steps: int = DEFAULT_LOCAL_STEPS,
    lrs: Sequence[float] = DEFAULT_LOCAL_LRS,
    folds: int = 3,
) -> tuple[torch.Tensor, float]:
    """Parameters trained on ``support`` alone from ``init``, and the learning rate used.

    With more than one learning rate, the one with the most correct held-out
    predictions in ``folds``-fold cross-validation on ``support`` is chosen
    (ties: the first listed).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not lrs:
        raise ValueError("lrs must list at least one learning rate")

    def fit(train: Batch, lr: float) -> torch.Tensor:
        p = torch.nn.Parameter(init.detach().clone())
        opt = torch.optim.Adam([p], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            with torch.enable_grad():
                model.loss(p, train).backward()
            opt.step()
        return p.detach()

    n = len(support)
    best = float(lrs[0])
    if len(lrs) > 1 and n >= 2:
        k = min(folds, n)
        parts = np.array_split(np.random.default_rng(0).permutation(n), k)
        best_correct = -1
        for lr in lrs:
            correct = 0
            for part in parts:
                mask = np.ones(n, dtype=bool)
                mask[part] = False
                p = fit(support.take(torch.from_numpy(np.flatnonzero(mask))), float(lr))
                correct += model.correct(p, support.take(torch.from_numpy(part)))
            if correct > best_correct:
                best, best_correct = float(lr), correct
    return fit(support, best), best


def local_only(
    model: FunctionalModel,
    init: torch.Tensor,
    clients: Sequence[ClientData],
    *,
    input_kind: InputKind,
    support_fraction: float,
    seed: int,
    steps: int = DEFAULT_LOCAL_STEPS,
    lrs: Sequence[float] = DEFAULT_LOCAL_LRS,
    on_client: ClientCallback | None = None,
) -> dict[str, Any]:
    """Metrics of each client training the model alone on its support set (see module doc)."""
    ys, preds, scores, chosen = [], [], [], []
    per_client = []
    splits = _splits(clients, support_fraction=support_fraction, seed=seed)
    for i, (support, query) in enumerate(splits):
        s, q = to_batch(support, input_kind), to_batch(query, input_kind)
        p, lr = train_alone(model, init, s, steps=steps, lrs=lrs)
        pred, pos = predict(model, p, q.x)
        ys.append(q.y.numpy())
        preds.append(pred)
        if pos is not None:
            scores.append(pos)
        chosen.append(lr)
        per_client.append(float(np.mean(pred == ys[-1])))
        if on_client is not None:
            on_client(i + 1, len(splits))
    y = np.concatenate(ys)
    out = classification_metrics(
        y,
        np.concatenate(preds),
        num_outputs=2 if scores else 0,
        positive_scores=np.concatenate(scores) if scores else None,
    )
    out["per_client_accuracy_mean"] = float(np.mean(per_client))
    out["steps"] = steps
    out["lrs"] = [float(x) for x in lrs]
    out["lr_chosen"] = chosen
    return out


def baseline_summary(
    algorithm: Algorithm,
    initial_state: torch.Tensor,
    clients: Sequence[ClientData],
    *,
    input_kind: InputKind,
    num_classes: int,
    support_fraction: float,
    seed: int,
    adapt_steps: int | None = None,
    local_steps: int = DEFAULT_LOCAL_STEPS,
    local_lrs: Sequence[float] = DEFAULT_LOCAL_LRS,
    on_client: ClientCallback | None = None,
) -> dict[str, Any]:
    """Every baseline of the module doc for ``clients`` (the unseen test clients).

    ``initial_state`` is the packed state training started from (the untrained
    model, e.g. ``algorithm.initial_state(fmodel.initial_parameters())``);
    ``local_steps = 0`` skips the local-only baseline (``None`` in the result).
    """
    untrained = evaluate(
        algorithm,
        initial_state,
        clients,
        input_kind=input_kind,
        support_fraction=support_fraction,
        seed=seed,
        adapt_steps=adapt_steps,
    )
    theta0 = algorithm.theta(initial_state).detach()
    return {
        "clients": len(clients),
        "query_points": untrained.num_query_points,
        "chance": {"accuracy": chance_rate(num_classes)},
        "majority": majority_class(
            clients, num_classes=num_classes, support_fraction=support_fraction, seed=seed
        ),
        "untrained_adapted": untrained.personalized_metrics,
        "local_only": local_only(
            algorithm.model,
            theta0,
            clients,
            input_kind=input_kind,
            support_fraction=support_fraction,
            seed=seed,
            steps=local_steps,
            lrs=local_lrs,
            on_client=on_client,
        )
        if local_steps > 0
        else None,
    }


def summary_fields(
    config: Config,
    *,
    dataset: FederatedDataset,
    split: ClientSplit,
    algorithm: Algorithm,
    progress: bool = False,
) -> dict[str, Any]:
    """The ``summary.json`` fields this module owns: ``held_out`` and ``baselines``.

    ``held_out`` names the leave-one-out site (``data.leave_out``) or is None;
    ``baselines`` is :func:`baseline_summary` on the test clients (None when there
    are none), with the run's support fraction, split seed, adaptation steps and
    ``eval.local_only_*`` settings. The untrained model is rebuilt from the
    module's own initialization (which functional training never modifies).
    """
    from secure_fml.observability import Progress

    out: dict[str, Any] = {"held_out": config.data.leave_out, "baselines": None}
    if not split.test:
        return out
    initial = algorithm.initial_state(algorithm.model.initial_parameters())
    with Progress(total=len(split.test), desc="baselines", unit="client", enabled=progress) as bar:
        out["baselines"] = baseline_summary(
            algorithm,
            initial,
            split.test,
            input_kind=dataset.input_kind,
            num_classes=dataset.num_classes,
            support_fraction=config.algorithm.support_fraction,
            seed=config.data.split_seed,
            adapt_steps=config.eval.adapt_steps,
            local_steps=config.eval.local_only_steps,
            local_lrs=config.eval.local_only_lrs,
            on_client=lambda i, n: bar.update(1),
        )
    return out
