"""load_npz: happy paths and every documented error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from secure_fml.data import Impute, InputKind, load_npz
from secure_fml.errors import ConfigError, DataError


def _write(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _image_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.integers(0, 256, (10, 4, 4), dtype=np.uint8),
        "y": np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2], dtype=np.uint8),
        "client_id": np.array([1, 0, 1, 0, 1, 0, 1, 2, 2, 2], dtype=np.int32),
        "writer_ids": np.array(["w_a", "w_b", "w_c"]),
    }


def test_image_npz_uses_writer_ids_and_scales_pixels(tmp_path: Path) -> None:
    arrays = _image_arrays()
    ds = load_npz(_write(tmp_path / "img.npz", **arrays), input_kind=InputKind.IMAGE)
    assert [c.client_id for c in ds.clients] == ["w_a", "w_b", "w_c"]
    assert [len(c) for c in ds.clients] == [3, 4, 3]
    assert ds.num_classes == 3 and ds.name == "img" and ds.sample_shape == (4, 4)
    w_b = ds.client("w_b")
    assert w_b.x.dtype == np.float32 and w_b.y.dtype == np.int64
    rows = np.flatnonzero(arrays["client_id"] == 1)
    # float32 division is correctly rounded, so it equals the rounded float64 k/255.
    expected = (arrays["x"][rows].astype(np.float64) / 255.0).astype(np.float32)
    np.testing.assert_array_equal(w_b.x, expected)
    np.testing.assert_array_equal(w_b.y, arrays["y"][rows])


def test_integer_ids_without_names_and_string_ids(tmp_path: Path) -> None:
    a = _image_arrays()
    del a["writer_ids"]
    ds = load_npz(_write(tmp_path / "a.npz", **a), input_kind=InputKind.IMAGE, num_classes=5)
    assert [c.client_id for c in ds.clients] == ["0", "1", "2"] and ds.num_classes == 5
    a["client_id"] = np.array(["s"] * 5 + ["t"] * 5)
    ds = load_npz(_write(tmp_path / "b.npz", **a), input_kind=InputKind.IMAGE)
    assert [len(c) for c in ds.clients] == [5, 5]


def test_tabular_npz_per_client_imputation(tmp_path: Path) -> None:
    x = np.array([[1, np.nan], [3, 4], [10, 20], [np.nan, 30], [50, 40]], dtype=np.float32)
    arrays = {
        "x": x,
        "y": np.array([0, 1, 0, 1, 1]),
        "client_id": np.array([0, 0, 1, 1, 1]),
        "feature_names": np.array(["age", "chol"]),
    }
    path = _write(tmp_path / "t.npz", **arrays)
    with pytest.raises(DataError, match=r"client '0'.*chol"):
        load_npz(path, input_kind=InputKind.TABULAR)
    ds = load_npz(path, input_kind=InputKind.TABULAR, impute=Impute.MEAN)
    assert ds.feature_names == ("age", "chol")
    np.testing.assert_allclose(ds.client("0").x, [[1, 4], [3, 4]])  # client 0's own mean
    np.testing.assert_allclose(ds.client("1").x[1], [30, 30])  # client 1's own mean of age


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"drop": "y"}, r"missing key\(s\) 'y'"),
        ({"drop": "client_id"}, r"missing key\(s\) 'client_id'"),
        ({"y": np.zeros(9, dtype=np.uint8)}, "length mismatch"),
        ({"y": np.full(10, 0.5)}, "must be integers"),
        ({"x": np.zeros((10, 4, 4), dtype=np.int32)}, "dtype int32"),
        ({"writer_ids": np.array(["w_a", "w_b", "w_c", "w_empty"])}, "'w_empty'.*no samples"),
        ({"client_id": np.full(10, 7, dtype=np.int32)}, "must index 'writer_ids'"),
        ({"client_id": np.full(10, 0.5)}, "integers or strings"),
    ],
)
def test_npz_errors(tmp_path: Path, change: dict[str, object], match: str) -> None:
    arrays = _image_arrays()
    drop = change.pop("drop", None)
    if drop is not None:
        del arrays[str(drop)]
    arrays.update(change)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=match):
        load_npz(_write(tmp_path / "e.npz", **arrays), input_kind=InputKind.IMAGE)


def test_npz_label_out_of_range_names_client(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.npz", **_image_arrays())
    with pytest.raises(DataError, match=r"client 'w_\w'.*out of range \[0, 2\)"):
        load_npz(path, input_kind=InputKind.IMAGE, num_classes=2)


def test_npz_nan_image_and_missing_file(tmp_path: Path) -> None:
    a = _image_arrays()
    x = a["x"].astype(np.float32) / 255
    x[8, 0, 0] = np.nan
    a["x"] = x
    with pytest.raises(DataError, match=r"'w_c'.*NaN"):
        load_npz(_write(tmp_path / "n.npz", **a), input_kind=InputKind.IMAGE)
    with pytest.raises(DataError, match="file not found"):
        load_npz(tmp_path / "nope.npz", input_kind=InputKind.IMAGE)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_npz(tmp_path / "bad.npz", input_kind=InputKind.IMAGE)


def test_npz_refuses_pickled_object_arrays(tmp_path: Path) -> None:
    a = _image_arrays()
    a["y"] = np.array([0, 1] * 5, dtype=object)
    with pytest.raises(DataError, match=r"'y'.*unpickle"):
        load_npz(_write(tmp_path / "o.npz", **a), input_kind=InputKind.IMAGE)


def test_npz_bad_impute_string_is_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "i.npz", **_image_arrays())
    with pytest.raises(ConfigError, match="impute must be one of none, mean, median"):
        load_npz(path, input_kind=InputKind.IMAGE, impute="zero")  # type: ignore[arg-type]
