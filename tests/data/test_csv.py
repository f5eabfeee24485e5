"""load_csv: per-client imputation / standardization and every documented error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fml.data import Impute, InputKind, load_csv
from secure_fml.errors import DataError

GOOD = """site,age,chol,label
A,40,200,0
A,60,?,1
A,50,300,1
B,30,100,0
B,,150,0
B,70,170,1
B,80,110,1
"""


def _csv(tmp_path: Path, text: str, name: str = "h.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _load(path: Path, **kw: object) -> object:
    return load_csv(path, client_column="site", label_column="label", **kw)  # type: ignore[arg-type]


def test_csv_happy_path_median_per_client(tmp_path: Path) -> None:
    ds = load_csv(
        _csv(tmp_path, GOOD), client_column="site", label_column="label", impute=Impute.MEDIAN
    )
    assert ds.input_kind is InputKind.TABULAR and ds.num_classes == 2
    assert ds.feature_names == ("age", "chol")
    assert [c.client_id for c in ds.clients] == ["A", "B"]
    a, b = ds.client("A"), ds.client("B")
    assert a.x.dtype == np.float32 and a.y.dtype == np.int64
    # Each site fills from its own rows only: A's chol median is 250, B's age median 70.
    np.testing.assert_allclose(a.x[1], [60, 250])
    np.testing.assert_allclose(b.x[1], [70, 150])
    np.testing.assert_array_equal(b.y, [0, 0, 1, 1])


def test_csv_mean_and_standardize_are_local(tmp_path: Path) -> None:
    ds = load_csv(
        _csv(tmp_path, GOOD),
        client_column="site",
        label_column="label",
        feature_columns=["chol"],
        impute=Impute.MEAN,
        standardize=True,
    )
    for c in ds.clients:
        np.testing.assert_allclose(c.x.mean(axis=0), 0, atol=1e-6)
        np.testing.assert_allclose(c.x.std(axis=0), 1, atol=1e-5)
    assert ds.feature_names == ("chol",)


def test_csv_nan_without_imputation_names_client_and_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"client 'A'.*chol.*Impute.MEDIAN"):
        _load(_csv(tmp_path, GOOD))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty file"),
        ("site,age,label\n", "header but no data rows"),
        ("site,age,y\nA,1,0\n", r"missing column\(s\) 'label'; available: site, age, y"),
        ("site,age,label\nA,abc,0\nA,2,1\n", r"line 2, column 'age': non-numeric value 'abc'"),
        ("site,age,label\nA,1,yes\n", r"line 2, label column 'label': 'yes' is not an integer"),
        ("site,age,label\nA,1,0.5\n", "'0.5' is not an integer"),
        ("site,age,label\nA,1,-1\n", "client 'A' has negative label"),
        ("site,age,label\nA,1,0,9\n", "line 2 has 4 fields"),
        ("site,age,label\n,1,0\n", "line 2: empty 'site'"),
        ("site,age,label\nA,inf,0\n", "non-finite"),
        ("site,age,age,label\nA,1,1,0\n", "duplicate column"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        _load(_csv(tmp_path, text))


def test_csv_label_out_of_range_and_missing_feature(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD.replace("B,80,110,1", "B,80,110,5"))
    with pytest.raises(DataError, match=r"client 'B'.*out of range \[0, 2\)"):
        _load(path, num_classes=2, impute=Impute.MEDIAN)
    with pytest.raises(DataError, match=r"missing column\(s\) 'bp'"):
        _load(path, feature_columns=["age", "bp"])
    with pytest.raises(DataError, match="file not found"):
        _load(tmp_path / "absent.csv")


def test_csv_integral_float_labels_and_inferred_classes(tmp_path: Path) -> None:
    ds = load_csv(
        _csv(tmp_path, "bank,amount,fraud\nX,1,0.0\nX,2,2\nY,3,1\n"),
        client_column="bank",
        label_column="fraud",
    )
    assert ds.num_classes == 3 and ds.client("X").y.tolist() == [0, 2]


PATIENTS = """site,patient_id,age,chol,label
A,p1,40,200,0
A,p1,41,210,0
A,p2,60,?,1
B,p1,30,100,0
B,p9,70,170,1
B,p9,80,110,1
"""


def test_csv_unit_column_is_kept_as_unit_ids_not_a_feature(tmp_path: Path) -> None:
    from secure_fml.evaluation import to_batch

    ds = load_csv(
        _csv(tmp_path, PATIENTS),
        client_column="site",
        label_column="label",
        unit_column="patient_id",
        impute=Impute.MEDIAN,
        standardize=True,
    )
    assert ds.feature_names == ("age", "chol")
    assert ds.metadata["unit_column"] == "patient_id"
    a, b = ds.client("A"), ds.client("B")
    assert a.units is not None and list(a.units) == ["p1", "p1", "p2"]
    assert a.num_units == 2 and b.num_units == 2
    # Units survive subsetting and become per-client codes in a Batch.
    assert list(b.subset(np.array([2, 0])).units) == ["p9", "p1"]  # type: ignore[arg-type]
    batch = to_batch(b, InputKind.TABULAR)
    assert batch.unit is not None and batch.unit.tolist() == [0, 1, 1]
    assert batch.take(np.array([2, 0])).unit.tolist() == [1, 0]  # type: ignore[union-attr]
    # Without the column, the patient id would have been read as a (non-numeric) feature.
    with pytest.raises(DataError, match="patient_id"):
        _load(_csv(tmp_path, PATIENTS))


def test_csv_unit_column_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a feature"):
        _load(
            _csv(tmp_path, PATIENTS),
            unit_column="patient_id",
            feature_columns=["age", "patient_id"],
        )
    with pytest.raises(DataError, match="missing column"):
        _load(_csv(tmp_path, PATIENTS), unit_column="person")
    bad = PATIENTS.replace("A,p2,", "A,,")
    with pytest.raises(DataError, match="line 4: empty 'patient_id'"):
        _load(_csv(tmp_path, bad), unit_column="patient_id", impute=Impute.MEDIAN)


_CELL = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from([" 1.5 ", "1e3", "-0", ".5", "1_000", "+2", "3.", "-1E-3"]),
)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["b", "a", "c"]), st.lists(_CELL, min_size=3, max_size=3)),
        min_size=1,
        max_size=30,
    )
)
def test_vectorized_parse_matches_python_float_cell_by_cell(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, list[str]]]
) -> None:
    """The column-wise parser agrees with the reference (Python's float per cell),
    including forms numpy's reader refuses ("1_000"); clients in order of first
    appearance, rows in file order."""
    path = tmp_path_factory.mktemp("csv") / "x.csv"
    lines = ["site,f0,f1,f2,label"] + [
        f"{s},{','.join(c)},{i % 2}" for i, (s, c) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    ds = load_csv(path, client_column="site", label_column="label", num_classes=2)
    order = list(dict.fromkeys(s for s, _ in rows))
    assert [c.client_id for c in ds.clients] == order
    for client in ds.clients:
        want = np.asarray(
            [[float(v) for v in c] for s, c in rows if s == client.client_id],
            dtype=np.float32,
        )
        np.testing.assert_array_equal(client.x, want)
        labels = [i % 2 for i, (s, _) in enumerate(rows) if s == client.client_id]
        assert client.y.tolist() == labels


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("abc", "line 3, column 'f1': non-numeric value 'abc'"),
        ("inf", "line 3, column 'f1': non-finite value 'inf'"),
    ],
)
def test_bad_cells_are_named_by_line_and_column(tmp_path: Path, cell: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"site,f0,f1,label\na,1,2,0\na,1,{cell},1\n")
    with pytest.raises(DataError, match=message):
        load_csv(path, client_column="site", label_column="label")
