"""Presets: registry behaviour (no files needed) and real-data counts (``data`` marker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from secure_fml.data import (
    HELDOUT_METADATA_KEY,
    Impute,
    InputKind,
    describe_presets,
    load_preset,
    preset_names,
    split_clients_with_heldout,
)
from secure_fml.errors import ConfigError, DataError


def test_registry_lists_presets_and_rejects_unknowns(tmp_path: Path) -> None:
    assert set(preset_names()) == {"fewshot", "femnist", "shakespeare", "heart", "synthetic"}
    with pytest.raises(ConfigError, match=r"unknown dataset preset 'mnist'.*femnist"):
        load_preset("mnist")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) colour; valid: .*include_partial"):
        load_preset("femnist", root=tmp_path, colour=1)


def test_missing_files_name_the_file_and_where(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"heart_disease/heart_disease_4sites.npz.*not found at"):
        load_preset("heart", root=tmp_path)
    infos = {i.name: i for i in describe_presets(tmp_path)}
    assert infos["synthetic"].present and not infos["heart"].present
    assert infos["heart"].missing == ("heart_disease/heart_disease_4sites.npz",)
    assert "impute" in infos["heart"].options


def test_synthetic_preset_needs_no_files(tmp_path: Path) -> None:
    ds = load_preset("synthetic", root=tmp_path / "nowhere", num_clients=5, seed=2)
    assert len(ds.clients) == 5


@pytest.mark.data
def test_describe_presets_sees_real_files(data_root: Path) -> None:
    assert all(i.present for i in describe_presets(data_root))


@pytest.mark.data
def test_femnist_real_counts(data_root: Path) -> None:
    ds = load_preset("femnist", root=data_root)
    assert len(ds.clients) == 396 and ds.num_samples == 60_378 and ds.num_classes == 62
    assert ds.input_kind is InputKind.IMAGE and ds.sample_shape == (28, 28)
    c = ds.clients[0]
    assert c.client_id == "f1501_00" and c.x.dtype == np.float32 and c.y.dtype == np.int64
    assert float(c.x.min()) >= 0.0 and float(c.x.max()) == 1.0  # background is 255 -> 1.0
    assert len({int(y) for cl in ds.clients for y in np.unique(cl.y)}) == 62
    assert ds.class_names is not None and ds.class_names[10] == "A"

    split = ds.split_clients(seed=0)
    ids = [[c.client_id for c in g] for g in (split.train, split.val, split.test)]
    assert [len(g) for g in ids] == [316, 40, 40]
    assert len({i for g in ids for i in g}) == 396
    assert [c.client_id for c in ds.split_clients(seed=0).test] == ids[2]


@pytest.mark.data
def test_femnist_partial_writers_are_held_out(data_root: Path) -> None:
    ds = load_preset("femnist", root=data_root, include_partial=True)
    assert len(ds.clients) == 396 + 314 and ds.num_samples == 60_378 + 9_209
    heldout = set(ds.metadata[HELDOUT_METADATA_KEY].split(","))
    assert len(heldout) == 314
    split = split_clients_with_heldout(ds, seed=1)
    assert not heldout & {c.client_id for c in (*split.train, *split.val)}
    assert heldout <= {c.client_id for c in split.test} and len(split.test) == 40 + 314


@pytest.mark.data
def test_heart_real_counts_and_local_preprocessing(data_root: Path) -> None:
    ds = load_preset("heart", root=data_root)
    assert [c.client_id for c in ds.clients] == ["cleveland", "hungarian", "switzerland", "va"]
    assert [len(c) for c in ds.clients] == [303, 294, 123, 200] and ds.num_samples == 920
    assert ds.sample_shape == (13,) and ds.num_classes == 2 and ds.feature_names is not None
    for c in ds.clients:
        assert np.isfinite(c.x).all() and c.x.dtype == np.float32
        np.testing.assert_allclose(c.x.mean(axis=0), 0, atol=1e-4)
    assert round(float(ds.client("switzerland").y.mean()), 3) == 0.935
    loo = ds.leave_one_out("va")
    assert [c.client_id for c in loo.test] == ["va"] and len(loo.train) == 3

    with pytest.raises(DataError, match=r"client 'cleveland'.*ca, thal"):
        load_preset("heart", root=data_root, impute=Impute.NONE)
    flamby = load_preset(
        "heart", root=data_root, complete_rows_only=True, impute="median", standardize=False
    )
    assert [len(c) for c in flamby.clients] == [303, 261, 46, 130]
    with pytest.raises(ConfigError, match="features: unknown column"):
        load_preset("heart", root=data_root, features=["age", "bmi"])


@pytest.mark.data
def test_shakespeare_windows_for_selected_clients(data_root: Path) -> None:
    ds = load_preset(
        "shakespeare", root=data_root, max_clients=8, max_samples_per_client=300, seed=5
    )
    assert len(ds.clients) == 8 and ds.num_classes == 73
    assert ds.input_kind is InputKind.SEQUENCE and ds.sample_shape == (80,)
    assert all(len(c) <= 300 and c.x.dtype == np.int64 for c in ds.clients)
    again = load_preset(
        "shakespeare", root=data_root, max_clients=8, max_samples_per_client=300, seed=5
    )
    assert [c.client_id for c in again.clients] == [c.client_id for c in ds.clients]

    # Full windows of a few roles equal the stored y (read without the 335 MB x).
    full = load_preset("shakespeare", root=data_root, max_clients=3, seed=0, seq_len=80)
    with np.load(data_root / "shakespeare" / "shakespeare_roles.npz") as z:
        names = [f"{p} / {s}" for p, s in zip(z["client_play"], z["client_speaker"], strict=True)]
        y, cid = z["y"], z["client_id"]
    for c in full.clients:
        np.testing.assert_array_equal(c.y, y[cid == names.index(c.client_id)])
        np.testing.assert_array_equal(c.x[1:, :-1], c.x[:-1, 1:])  # stride-1 windows
    short = load_preset("shakespeare", root=data_root, max_clients=2, seq_len=20, seed=0)
    assert short.sample_shape == (20,)


@pytest.mark.data
def test_load_npz_reads_real_heart_file_with_readable_ids(data_root: Path) -> None:
    from secure_fml.data import load_npz

    path = data_root / "heart_disease" / "heart_disease_4sites.npz"
    with pytest.raises(DataError, match=r"client 'cleveland'.*ca, thal"):
        load_npz(path, input_kind=InputKind.TABULAR, num_classes=2)
    ds = load_npz(path, input_kind=InputKind.TABULAR, num_classes=2, impute=Impute.MEAN)
    assert [c.client_id for c in ds.clients] == ["cleveland", "hungarian", "switzerland", "va"]
    assert ds.feature_names is not None and ds.feature_names[4] == "chol"
