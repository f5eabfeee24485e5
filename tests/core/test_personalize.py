"""A new hospital's CSV against a checkpoint: columns by name, stored preprocessing, and the
public ``secure_fml.personalize`` (also for a custom model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import secure_fml
from secure_fml.adaptation import load_for_adaptation
from secure_fml.checkpoint import save_checkpoint, training_checkpoint
from secure_fml.cli import main
from secure_fml.config import config_from_dict, config_to_dict
from secure_fml.data import load_csv, preprocessing_spec
from secure_fml.errors import ConfigError, DataError
from secure_fml.evaluation import predict, to_batch
from secure_fml.models import MLP, check_output_size, describe_module
from secure_fml.simulation import Simulation, model_spec_for

FEATURES = ["age", "chol", "bp"]


def _rows(rng: np.random.Generator, site: str, n: int) -> list[list[str]]:
    out = []
    for _ in range(n):
        age, chol, bp = rng.normal(55, 9), rng.normal(240, 40), rng.normal(130, 15)
        y = int(0.05 * (age - 55) + 0.02 * (chol - 240) + rng.normal() > 0)
        cells = [f"{age:.1f}", f"{chol:.0f}" if rng.random() > 0.1 else "", f"{bp:.0f}"]
        out.append([site, *cells, str(y)])
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A checkpoint trained on 3 hospitals' CSV (median imputation, standardized) that
    stores its data spec, and the folder for the new site's files."""
    d = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(0)
    rows = [r for s in ("a", "b", "c") for r in _rows(rng, s, 60)]
    (d / "train.csv").write_text("site,age,chol,bp,y\n" + "".join(",".join(r) + "\n" for r in rows))
    ds = load_csv(
        d / "train.csv", client_column="site", label_column="y", impute="median", standardize=True
    )
    cfg = config_from_dict(
        {
            "data": {"client_fractions": [1.0, 0.0, 0.0]},
            "model": {"hidden": [8]},
            "algorithm": {"inner_steps": 2, "inner_lr": 0.1},
            "server": {"rounds": 3, "sampling": "all", "clients_per_round": None},
            "eval": {"every": 0, "local_only_steps": 0},
        }
    )
    sim = Simulation(cfg, dataset=ds)
    sim.run(progress=False)
    ckpt = sim.checkpoint()  # the engine stores the data spec with the model
    assert ckpt.extra["data"] == preprocessing_spec(ds)
    save_checkpoint(d / "model.pt", ckpt)
    new = _rows(np.random.default_rng(1), "new", 50)
    # The new site exports its columns in another order, with an extra patient_id.
    (d / "site.csv").write_text(
        "patient_id,bp,y,site,chol,age\n"
        + "".join(f"p{i},{r[3]},{r[4]},{r[0]},{r[2]},{r[1]}\n" for i, r in enumerate(new))
    )
    (d / "site_train_order.csv").write_text(
        "site,age,chol,bp,y\n" + "".join(",".join(r) + "\n" for r in new)
    )
    (d / "site_missing.csv").write_text(
        "site,age,bp,y\n" + "".join(f"{r[0]},{r[1]},{r[3]},{r[4]}\n" for r in new)
    )
    return d / "model.pt", d


def _adapt(
    ckpt: Path, csv: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict | None, str]:
    argv = [
        "adapt", "--checkpoint", str(ckpt), "--data", str(csv), "--client", "new",
        "--client-column", "site", "--label-column", "y", "--steps", "3",
        "--local-steps", "0", "--output", str(out), *extra,
    ]  # fmt: skip
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, (json.loads(out.read_text()) if rc == 0 else None), err


def test_checkpoint_stores_the_data_spec(trained: tuple[Path, Path]) -> None:
    loaded = load_for_adaptation(trained[0])
    assert loaded.data_spec is not None
    assert loaded.data_spec["feature_names"] == FEATURES
    assert loaded.data_spec["impute"] == "median" and loaded.data_spec["standardize"] is True


def test_csv_columns_match_by_name_and_extra_ones_are_named(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, d = trained
    rc, _, err = _adapt(ckpt, d / "site.csv", tmp_path / "x.json", capsys)
    assert rc == 2 and "patient_id" in err and "--ignore-columns patient_id" in err
    assert len(err.strip().splitlines()) == 1
    rc, by_name, _ = _adapt(
        ckpt, d / "site.csv", tmp_path / "a.json", capsys, "--ignore-columns", "patient_id"
    )
    rc2, in_order, _ = _adapt(ckpt, d / "site_train_order.csv", tmp_path / "b.json", capsys)
    assert rc == rc2 == 0 and by_name is not None and in_order is not None
    for key in ("accuracy_before", "accuracy_after", "loss_before", "loss_after"):
        assert by_name[key] == in_order[key], key  # reordered columns: identical results
    rc, _, err = _adapt(ckpt, d / "site_missing.csv", tmp_path / "c.json", capsys)
    assert rc == 2 and "chol" in err and "missing" in err
    rc, _, err = _adapt(
        ckpt, d / "site.csv", tmp_path / "d.json", capsys, "--ignore-columns", "nope"
    )
    assert rc == 2 and "nope" in err


def test_stored_preprocessing_is_applied_and_overrides_are_said(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, d = trained
    csv = d / "site_train_order.csv"
    _, stored, err = _adapt(ckpt, csv, tmp_path / "a.json", capsys)
    assert "notice" not in err
    _, explicit, _ = _adapt(
        ckpt, csv, tmp_path / "b.json", capsys, "--impute", "median", "--standardize"
    )
    _, raw, err = _adapt(ckpt, csv, tmp_path / "c.json", capsys, "--no-standardize")
    assert stored is not None and explicit is not None and raw is not None
    assert stored["loss_before"] == explicit["loss_before"]
    assert raw["loss_before"] != stored["loss_before"]
    assert "notice: standardize=False overrides the training data's standardize=True" in err


def test_personalize_api_adapts_and_checks_labels_and_shapes(
    trained: tuple[Path, Path],
) -> None:
    ckpt, d = trained
    site = load_csv(
        d / "site_train_order.csv",
        client_column="site",
        label_column="y",
        impute="median",
        standardize=True,
    )
    res = secure_fml.personalize(ckpt, site, steps=4)
    assert res.steps == 4 and res.client_id == "new" and res.num_samples == 50
    loaded = load_for_adaptation(ckpt)
    batch = to_batch(site.clients[0], site.input_kind)
    expect = loaded.algorithm.adapt(loaded.state, batch, steps=4)
    torch.testing.assert_close(res.theta, expect)
    x = site.clients[0].x
    pred, _ = predict(loaded.algorithm.model, expect, torch.from_numpy(x))
    assert np.array_equal(res.predict(x), pred)  # the returned module carries the weights
    assert res.predict_proba(x).shape == (50, 2)
    c = site.clients[0]
    with pytest.raises(DataError, match="label 2"):
        secure_fml.personalize(ckpt, (c.x, np.where(c.y == 1, 2, 0)))
    with pytest.raises(DataError, match="shape"):
        secure_fml.personalize(ckpt, (c.x[:, :2], c.y))
    with pytest.raises(ConfigError, match="steps"):
        secure_fml.personalize(ckpt, site, steps=0)


class Net(nn.Module):
    def __init__(self, outputs: int = 2) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_custom_module_spec_round_trip_and_output_size(tmp_path: Path) -> None:
    default = {"kind": "mlp", "sample_shape": [3], "num_classes": 2, "hidden": [4],
               "input_kind": "tabular"}  # fmt: skip
    torch.manual_seed(0)
    assert describe_module(MLP(3, 2, hidden=(4,)), default=default) == default
    net = Net()
    spec = describe_module(net, default=default)
    assert spec["kind"] == "custom" and spec["class"].endswith("Net")
    assert spec["parameters"][0] == ["a.weight", [4, 3]]
    cfg = config_from_dict({"eval": {"local_only_steps": 0}})
    fm_state = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    class _Opt:
        def state_dict(self) -> dict:
            return {}

    ckpt = training_checkpoint(
        round=1,
        state=fm_state,
        optimizer=_Opt(),
        model_spec=spec,
        config=config_to_dict(cfg),
        algorithm="maml",
    )
    save_checkpoint(tmp_path / "c.pt", ckpt)
    with pytest.raises(ConfigError, match=r"module=Net\(\.\.\.\)"):
        load_for_adaptation(tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="layout"):
        load_for_adaptation(tmp_path / "c.pt", module=MLP(3, 2, hidden=(5,)))
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    y = np.arange(10) % 2
    res = secure_fml.personalize(tmp_path / "c.pt", (x, y), module=Net(), steps=1)
    assert res.predict(x).shape == (10,)
    check_output_size(Net(2), torch.zeros(1, 3), 2)
    with pytest.raises(ConfigError, match="3 outputs but the data has 2 classes"):
        check_output_size(Net(3), torch.zeros(1, 3), 2)
    with pytest.raises(ConfigError, match="1 outputs but the data has 2"):
        check_output_size(Net(1), torch.zeros(1, 3), 2, exact=False)
    with pytest.raises(ConfigError, match="cannot take"):
        check_output_size(Net(2), torch.zeros(1, 5), 2)
    _ = model_spec_for  # the engine's default spec, which describe_module takes as `default`
