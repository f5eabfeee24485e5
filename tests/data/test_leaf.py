"""load_leaf_json: LEAF folders merged per user, text samples, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secure_fml.data import LEAF_SHAKESPEARE_VOCAB, InputKind, load_leaf_json
from secure_fml.errors import DataError


def _leaf(users: dict[str, tuple[list[Any], list[Any]]]) -> dict[str, Any]:
    return {
        "users": list(users),
        "num_samples": [len(y) for _, y in users.values()],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
    }


def _dump(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")


def _pix(v: float) -> list[float]:
    return [v] * 16


def test_leaf_train_and_test_merge_per_user(tmp_path: Path) -> None:
    _dump(
        tmp_path / "train" / "a.json",
        _leaf({"u1": ([_pix(0.1), _pix(0.2)], [1, 2]), "u2": ([_pix(0.3)], [3])}),
    )
    _dump(tmp_path / "test" / "b.json", _leaf({"u1": ([_pix(0.4)], [4]), "u3": ([_pix(0.5)], [5])}))
    ds = load_leaf_json(tmp_path, input_kind=InputKind.IMAGE, num_classes=62, name="mini")
    assert {c.client_id: len(c) for c in ds.clients} == {"u1": 3, "u2": 1, "u3": 1}
    u1 = ds.client("u1")
    assert u1.x.shape == (3, 4, 4) and u1.x.dtype == np.float32
    # test/ sorts before train/, so u1's test sample comes first.
    assert sorted(u1.y.tolist()) == [1, 2, 4] and ds.name == "mini"


def test_leaf_text_samples_use_vocab(tmp_path: Path) -> None:
    _dump(tmp_path / "s.json", _leaf({"ROMEO": (["abc", "bcd"], ["d", "e"])}))
    ds = load_leaf_json(
        tmp_path, input_kind=InputKind.SEQUENCE, num_classes=80, vocab=LEAF_SHAKESPEARE_VOCAB
    )
    c = ds.client("ROMEO")
    assert c.x.dtype == np.int64 and c.x.shape == (2, 3)
    assert "".join(LEAF_SHAKESPEARE_VOCAB[i] for i in c.x[1]) == "bcd"
    assert [LEAF_SHAKESPEARE_VOCAB[i] for i in c.y] == ["d", "e"]


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"users": ["u"]}, "missing key 'user_data'"),
        ({"users": ["u"], "user_data": {}}, "'u' has no user_data"),
        (_leaf({"u": ([_pix(0)], [0, 1])}), "'u'.*equal length"),
        (_leaf({"u": ([], [])}), "'u' has no samples"),
        (_leaf({"u": ([_pix(0)], [99])}), "'u'.*out of range"),
        (_leaf({"u": ([_pix(0)], [1.5])}), "'u'.*not an integer"),
        (_leaf({"u": ([_pix(0), [0.0]], [0, 1])}), "'u'.*different shapes|ragged"),
        ({**_leaf({"u": ([_pix(0)], [0])}), "num_samples": [3]}, "'u'.*num_samples says 3"),
        (_leaf({"u": (["ab"], ["c"])}), "'u'.*vocab"),
    ],
)
def test_leaf_errors(tmp_path: Path, doc: Any, match: str) -> None:
    _dump(tmp_path / "d.json", doc)
    with pytest.raises(DataError, match=match):
        load_leaf_json(tmp_path, input_kind=InputKind.IMAGE, num_classes=10)


def test_leaf_bad_json_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \*\.json files"):
        load_leaf_json(tmp_path, input_kind=InputKind.IMAGE, num_classes=10)
    with pytest.raises(DataError, match="LEAF folder not found"):
        load_leaf_json(tmp_path / "missing", input_kind=InputKind.IMAGE, num_classes=10)
    (tmp_path / "x.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.json: not valid JSON"):
        load_leaf_json(tmp_path, input_kind=InputKind.IMAGE, num_classes=10)
