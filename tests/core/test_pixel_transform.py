"""FEMNIST's pixel transform (``invert``, 1 - x) is one recorded preprocessing step: the
same in training, evaluation, a new site's personalization and its predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import secure_fml
from secure_fml.adaptation import load_for_adaptation
from secure_fml.checkpoint import save_checkpoint
from secure_fml.cli import main
from secure_fml.config import config_from_dict
from secure_fml.data import (
    ClientData,
    PixelTransform,
    align_preprocessing,
    load_npz,
    load_preset,
    preprocessing_spec,
)
from secure_fml.data._core import InputKind
from secure_fml.errors import ConfigError, DataError
from secure_fml.evaluation import evaluate, predict, to_batch
from secure_fml.simulation import Simulation


def _raw_images(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    """LEAF-like raw pixels: white background (1.0), a dark stroke whose row is the label."""
    x = np.ones((len(y), 28, 28), dtype=np.float32)
    for i, label in enumerate(y):
        r = 4 + 6 * int(label)
        x[i, r : r + 3, 4:24] = rng.uniform(0.0, 0.3, size=(3, 20))
    return x


@pytest.fixture(scope="module")
def femnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    n_writers, per = 8, 16
    y = rng.integers(0, 3, size=n_writers * per)
    x = _raw_images(rng, y)
    cid = np.repeat(np.arange(n_writers), per)
    (root / "femnist").mkdir()
    np.savez(
        root / "femnist" / "femnist_leaf_writers.npz",
        x=x,
        y=y,
        client_id=cid,
        writer_ids=np.array([f"w{i}" for i in range(n_writers)]),
    )
    # A new site's raw file (the training data's stored encoding).
    y2 = rng.integers(0, 3, size=20)
    np.savez(
        root / "site.npz", x=_raw_images(rng, y2), y=y2, client_id=np.zeros(20, dtype=np.int64)
    )
    return root


def _raw(root: Path) -> np.ndarray:
    with np.load(root / "femnist" / "femnist_leaf_writers.npz") as z:
        return np.asarray(z["x"])


def test_preset_inverts_by_default_and_records_it(femnist_root: Path) -> None:
    ds = load_preset("femnist", root=femnist_root)
    raw = load_preset("femnist", root=femnist_root, pixels="none")
    assert ds.metadata["pixel_transform"] == "invert"
    assert raw.metadata["pixel_transform"] == "none"
    assert preprocessing_spec(ds)["pixel_transform"] == "invert"
    for c, r in zip(ds.clients, raw.clients, strict=True):
        np.testing.assert_array_equal(c.x, 1.0 - r.x)
    np.testing.assert_array_equal(np.concatenate([c.x for c in raw.clients]), _raw(femnist_root))
    with pytest.raises(ConfigError, match="pixels must be one of none, invert"):
        load_preset("femnist", root=femnist_root, pixels="flip")


def test_inverting_twice_is_refused() -> None:
    raw = np.ones((2, 28, 28), dtype=np.float32)
    once = PixelTransform.INVERT.apply(raw)
    with pytest.raises(DataError, match="already inverted"):
        PixelTransform.INVERT.apply(once)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        PixelTransform.INVERT.apply(raw * 2)


@pytest.fixture(scope="module")
def trained(
    femnist_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Simulation]:
    cfg = config_from_dict(
        {
            "data": {"preset": "femnist", "root": str(femnist_root), "min_samples": 2,
                     "client_fractions": [0.75, 0.0, 0.25]},
            "model": {"kind": "mlp", "hidden": [8]},
            "algorithm": {"name": "metasgd", "inner_lr": 0.1, "support_fraction": 0.25},
            "server": {"rounds": 2, "sampling": "all", "clients_per_round": None},
            "eval": {"every": 0, "local_only_steps": 0},
        }
    )  # fmt: skip
    sim = Simulation(cfg)
    sim.run(progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, sim.checkpoint())
    return path, sim


def test_training_and_evaluation_see_the_transformed_pixels(
    femnist_root: Path, trained: tuple[Path, Simulation]
) -> None:
    _, sim = trained
    raw = load_preset("femnist", root=femnist_root, pixels="none")
    for c in sim.split.train:
        torch.testing.assert_close(
            sim.batch(c.client_id).x, torch.from_numpy(1.0 - raw.client(c.client_id).x)
        )
    # Evaluation of the test writers is over the same transformed pixels.
    res = evaluate(
        sim.algorithm, sim.engine.state, sim.split.test, input_kind=InputKind.IMAGE,
        support_fraction=0.25, seed=0, adapt_steps=1,
    )  # fmt: skip
    inverted = [
        ClientData(c.client_id, 1.0 - raw.client(c.client_id).x, c.y) for c in sim.split.test
    ]
    res2 = evaluate(
        sim.algorithm, sim.engine.state, inverted, input_kind=InputKind.IMAGE,
        support_fraction=0.25, seed=0, adapt_steps=1,
    )  # fmt: skip
    assert res.personalized_loss == res2.personalized_loss
    assert res.global_loss == res2.global_loss


def test_personalization_applies_the_stored_transform(
    femnist_root: Path, trained: tuple[Path, Simulation]
) -> None:
    ckpt, _ = trained
    loaded = load_for_adaptation(ckpt)
    assert loaded.data_spec is not None and loaded.data_spec["pixel_transform"] == "invert"
    assert loaded.pixel_transform is PixelTransform.INVERT
    with np.load(femnist_root / "site.npz") as z:
        x_raw, y = np.asarray(z["x"]), np.asarray(z["y"])
    site = secure_fml.personalize(ckpt, (x_raw, y), steps=2)
    expect = loaded.algorithm.adapt(
        loaded.state, to_batch(ClientData("s", 1.0 - x_raw, y), InputKind.IMAGE), steps=2
    )
    torch.testing.assert_close(site.theta, expect)
    # A raw FederatedDataset is transformed; one loaded through the preset is already.
    raw_ds = load_npz(femnist_root / "site.npz", input_kind=InputKind.IMAGE)
    torch.testing.assert_close(secure_fml.personalize(ckpt, raw_ds, steps=2).theta, expect)
    aligned, notices = align_preprocessing(raw_ds, loaded.data_spec)
    assert notices and aligned.metadata["pixel_transform"] == "invert"
    torch.testing.assert_close(secure_fml.personalize(ckpt, aligned, steps=2).theta, expect)
    # Predictions take raw pixels and apply the same transform.
    pred, _ = predict(loaded.algorithm.model, expect, torch.from_numpy(1.0 - x_raw))
    assert np.array_equal(site.predict(x_raw), pred)
    # Already-transformed pixels passed as raw are refused, never inverted twice.
    with pytest.raises(DataError, match="already inverted"):
        secure_fml.personalize(ckpt, (1.0 - x_raw, y), steps=2)
    mismatch = load_preset("femnist", root=femnist_root)
    with pytest.raises(ConfigError, match="pixels=invert"):
        align_preprocessing(mismatch, {"pixel_transform": "none"})


def test_cli_adapt_applies_the_transform_to_a_raw_file(
    femnist_root: Path, trained: tuple[Path, Simulation], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    ckpt, _ = trained
    out = tmp_path / "a.json"
    argv = ["adapt", "--checkpoint", str(ckpt), "--data", str(femnist_root / "site.npz"),
            "--client", "0", "--input-kind", "image", "--steps", "2", "--local-steps", "0",
            "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "pixel transform (invert)" in capsys.readouterr().err
    got = json.loads(out.read_text())
    with np.load(femnist_root / "site.npz") as z:
        inverted = ClientData("0", 1.0 - np.asarray(z["x"]), np.asarray(z["y"]))
    loaded = load_for_adaptation(ckpt)
    res = evaluate(
        loaded.algorithm, loaded.state, [inverted], input_kind=InputKind.IMAGE,
        support_fraction=loaded.config.algorithm.support_fraction, seed=0, adapt_steps=2,
    )  # fmt: skip
    assert got["loss_after"] == pytest.approx(res.personalized_loss)
