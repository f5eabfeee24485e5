"""Classification metrics for evaluation on unseen sites: accuracy is not enough.

On imbalanced clinical data a model can beat 70% accuracy by always answering
"disease". So every result carries, beside accuracy, the **balanced accuracy**
(mean recall over the classes present) and, for binary tasks (two outputs;
label 1 is the positive class), **sensitivity** (recall of 1), **specificity**
(recall of 0) and **AUROC** of the positive-class probability.

AUROC is the Mann-Whitney statistic: the probability that a random positive is
scored above a random negative, ties counting one half (average ranks), which
is what ``sklearn.metrics.roc_auc_score`` computes. It is undefined (``None``)
when only one class is present.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["auroc", "balanced_accuracy", "classification_metrics"]


def auroc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float | None:
    """Area under the ROC curve of ``scores`` for binary labels (1 = positive)."""
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata  # ~1 s to import: only when an AUC is computed

    ranks = rankdata(s)  # average ranks: ties count 1/2
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def balanced_accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if y.size == 0:
        raise ValueError("balanced_accuracy of an empty set")
    recalls = [float(np.mean(p[y == c] == c)) for c in np.unique(y)]
    return float(np.mean(recalls))


def classification_metrics(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    *,
    num_outputs: int,
    positive_scores: npt.ArrayLike | None = None,
) -> dict[str, Any]:
    """Accuracy and balanced accuracy; for ``num_outputs == 2`` also sensitivity,
    specificity and (with ``positive_scores``, e.g. P(y=1)) AUROC."""
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} differ in shape")
    if y.size == 0:
        raise ValueError("metrics of an empty set")
    out: dict[str, Any] = {
        "accuracy": float(np.mean(y == p)),
        "balanced_accuracy": balanced_accuracy(y, p),
    }
    if num_outputs == 2:
        pos, neg = y == 1, y == 0
        out["sensitivity"] = float(np.mean(p[pos] == 1)) if pos.any() else None
        out["specificity"] = float(np.mean(p[neg] == 0)) if neg.any() else None
        out["auroc"] = auroc(y, positive_scores) if positive_scores is not None else None
        out["positives"] = int(pos.sum())
        out["negatives"] = int(neg.sum())
    return out
