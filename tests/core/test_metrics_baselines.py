"""Metrics (AUROC, balanced accuracy, sensitivity, specificity) and the baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fml._functional import FunctionalModel
from secure_fml.algorithms import AlgorithmConfig, AlgorithmName, make_algorithm
from secure_fml.baselines import (
    baseline_summary,
    chance_rate,
    local_only,
    majority_class,
    train_alone,
)
from secure_fml.data import ClientData, InputKind
from secure_fml.evaluation import evaluate, support_query_for_eval, to_batch
from secure_fml.metrics import auroc, balanced_accuracy, classification_metrics
from secure_fml.models import MLP


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Independent reference: the fraction of (positive, negative) pairs ranked right."""
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_auroc_known_answers() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)  # sklearn's doc
    assert auroc([0, 1], [0.2, 0.9]) == 1.0
    assert auroc([0, 1], [0.9, 0.2]) == 0.0
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count one half
    assert auroc([1, 1, 1], [0.1, 0.2, 0.3]) is None  # one class only


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=40).filter(
        lambda d: len({y for y, _ in d}) == 2
    )
)
def test_auroc_matches_pairwise_count(data: list[tuple[int, int]]) -> None:
    y = np.array([a for a, _ in data])
    s = np.array([b for _, b in data], dtype=np.float64) / 7.0  # many ties
    assert auroc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_balanced_accuracy_sensitivity_specificity() -> None:
    # 8 positives, 2 negatives; "always disease": accuracy 0.8, balanced 0.5.
    y = np.array([1] * 8 + [0] * 2)
    always = np.ones(10, dtype=int)
    m = classification_metrics(y, always, num_outputs=2, positive_scores=np.ones(10))
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.0 and m["auroc"] == 0.5
    assert (m["positives"], m["negatives"]) == (8, 2)
    pred = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 1])
    m = classification_metrics(y, pred, num_outputs=2)
    assert m["sensitivity"] == pytest.approx(6 / 8) and m["specificity"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx((6 / 8 + 0.5) / 2)
    assert balanced_accuracy([0, 1, 2, 2], [0, 1, 2, 0]) == pytest.approx((1 + 1 + 0.5) / 3)
    assert "sensitivity" not in classification_metrics([0, 1, 2], [0, 1, 2], num_outputs=3)


def _clients(n: int = 4, size: int = 30, seed: int = 0, cut: float = 0.8) -> list[ClientData]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        x = rng.standard_normal((size, 5)).astype(np.float32)
        y = (x[:, 0] + 0.3 * rng.standard_normal(size) > cut).astype(np.int64)  # 0.8: imbalanced
        out.append(ClientData(f"c{k}", x, y))
    return out


def test_majority_predicts_the_support_majority_on_the_query() -> None:
    clients = _clients()
    m = majority_class(clients, num_classes=2, support_fraction=0.3, seed=1)
    ys, correct = [], 0
    for i, c in enumerate(clients):
        s, q = support_query_for_eval(c, support_fraction=0.3, seed=1, index=i)
        major = int(np.argmax(np.bincount(s.y, minlength=2)))
        correct += int((q.y == major).sum())
        ys.append(q.y)
    assert m["accuracy"] == pytest.approx(correct / sum(len(y) for y in ys))
    assert m["auroc"] == 0.5 and m["balanced_accuracy"] <= 0.5 + 1e-12
    # A site whose support set is all 1 and whose query set is all 0: the baseline may only
    # look at the support labels, so it scores 0 (the query majority would score 1).
    x = np.arange(20, dtype=np.float32)[:, None]
    s, _ = support_query_for_eval(ClientData("s", x, np.zeros(20, np.int64)), support_fraction=0.3,
                                  seed=0, index=0)  # fmt: skip
    y = np.isin(np.arange(20), s.x[:, 0].astype(int)).astype(np.int64)
    odd = majority_class([ClientData("s", x, y)], num_classes=2, support_fraction=0.3, seed=0)
    assert odd["accuracy"] == 0.0
    assert chance_rate(2) == 0.5 and chance_rate(62) == pytest.approx(1 / 62)


@pytest.mark.slow  # trains 4 small models (a few seconds on 2 shared cores)
def test_local_only_learns_and_uses_only_the_support_set() -> None:
    torch.manual_seed(0)
    fm = FunctionalModel(MLP(5, 2, hidden=(8,)))
    init = fm.initial_parameters()
    clients = _clients(n=2, size=60, cut=0.0)
    kw = {"input_kind": InputKind.TABULAR, "support_fraction": 0.5, "seed": 0, "steps": 60}
    res = local_only(fm, init, clients, lrs=(0.05,), **kw)
    major = majority_class(clients, num_classes=2, support_fraction=0.5, seed=0)
    assert res["accuracy"] > 0.8 and res["auroc"] > 0.85  # x0 > 0 is learnable
    assert res["accuracy"] > major["accuracy"] + 0.2
    # Flip every query label: if training never saw them, the predictions are unchanged,
    # so the accuracy becomes exactly 1 - accuracy.
    flipped = []
    for i, c in enumerate(clients):
        s, _ = support_query_for_eval(c, support_fraction=0.5, seed=0, index=i)
        in_support = np.array([any(np.array_equal(r, t) for t in s.x) for r in c.x])
        flipped.append(ClientData(c.client_id, c.x, np.where(in_support, c.y, 1 - c.y)))
    res_flipped = local_only(fm, init, flipped, lrs=(0.05,), **kw)
    assert res_flipped["accuracy"] == pytest.approx(1 - res["accuracy"])
    s, _ = support_query_for_eval(clients[0], support_fraction=0.5, seed=0, index=0)
    _, lr = train_alone(fm, init, to_batch(s, InputKind.TABULAR), steps=5, lrs=(1e-6, 0.05))
    assert lr == 0.05  # CV on the support set prefers a rate that learns


def test_baseline_summary_untrained_matches_evaluate_of_the_initial_state() -> None:
    torch.manual_seed(0)
    fm = FunctionalModel(MLP(5, 2, hidden=(8,)))
    alg = make_algorithm(AlgorithmConfig(name=AlgorithmName.MAML, inner_steps=2), fm)
    init = alg.initial_state(fm.initial_parameters())
    clients = _clients()
    b = baseline_summary(
        alg,
        init,
        clients,
        input_kind=InputKind.TABULAR,
        num_classes=2,
        support_fraction=0.3,
        seed=2,
        local_steps=5,
    )
    ev = evaluate(alg, init, clients, input_kind=InputKind.TABULAR, support_fraction=0.3, seed=2)
    assert b["untrained_adapted"] == ev.personalized_metrics
    assert b["query_points"] == ev.num_query_points
    assert b["chance"] == {"accuracy": 0.5}
    assert b["local_only"]["steps"] == 5
    assert ev.personalized_metrics["accuracy"] == pytest.approx(ev.personalized_accuracy)
    assert set(ev.global_metrics) >= {"auroc", "sensitivity", "specificity", "balanced_accuracy"}
