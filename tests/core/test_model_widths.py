"""``model.hidden``: the MLP's widths or the LSTM's one width, resolved once into the model
spec (which checkpoints store), so a personalizing site rebuilds the trained width."""

from __future__ import annotations

import numpy as np
import pytest

from secure_fml.adaptation import load_for_adaptation
from secure_fml.config import ModelConfig, config_from_dict
from secure_fml.data import ClientData, FederatedDataset, InputKind
from secure_fml.errors import ConfigError
from secure_fml.models import CharLSTM, default_model
from secure_fml.simulation import Simulation, model_spec


def _sequences(vocab: int = 9, seq_len: int = 6) -> FederatedDataset:
    rng = np.random.default_rng(0)
    clients = []
    for c in range(4):
        x = rng.integers(0, vocab, size=(24, seq_len)).astype(np.int64)
        clients.append(ClientData(f"role{c}", x, (x[:, -1] + 1) % vocab))
    return FederatedDataset("toy-text", tuple(clients), vocab, InputKind.SEQUENCE)


def _lstm_width(module: object) -> int:
    assert isinstance(module, CharLSTM)
    return int(module.lstm.hidden_size)


@pytest.mark.parametrize(
    ("kind", "input_kind", "shape", "expected"),
    [
        ("auto", InputKind.SEQUENCE, (80,), [256]),  # LEAF's LSTM by default
        ("lstm", InputKind.SEQUENCE, (80,), [256]),
        ("auto", InputKind.TABULAR, (13,), [64]),
        ("mlp", InputKind.TABULAR, (13,), [64]),
    ],
)
def test_unset_hidden_resolves_per_kind_in_the_spec(
    kind: str, input_kind: InputKind, shape: tuple[int, ...], expected: list[int]
) -> None:
    spec = model_spec(kind, input_kind=input_kind, sample_shape=shape, num_classes=5, hidden=None)
    assert spec["hidden"] == expected


def test_lstm_width_is_built_and_layer_sizes_follow() -> None:
    m = default_model("lstm", sample_shape=(80,), num_classes=73, hidden=(32,))
    assert _lstm_width(m) == 32
    assert tuple(m.lstm.weight_hh_l1.shape) == (4 * 32, 32)  # both layers
    assert _lstm_width(default_model("lstm", sample_shape=(80,), num_classes=73)) == 256
    mlp = default_model("mlp", sample_shape=(4,), num_classes=3, hidden=(7, 5))
    assert next(tuple(p.shape) for p in mlp.parameters()) == (7, 4)


@pytest.mark.parametrize("hidden", [[32, 32], [], [0], [True]])
def test_bad_lstm_widths_are_refused(hidden: list[object]) -> None:
    with pytest.raises(ConfigError, match=r"model\.hidden"):
        ModelConfig(kind="lstm", hidden=tuple(hidden))  # type: ignore[arg-type]


def test_a_trained_lstm_width_survives_the_checkpoint() -> None:
    cfg = config_from_dict(
        {
            "data": {"client_fractions": [1.0, 0.0, 0.0]},
            "model": {"kind": "lstm", "hidden": [12]},
            "algorithm": {"name": "fomaml", "inner_lr": 0.1},
            "server": {"rounds": 1, "sampling": "all", "clients_per_round": None},
            "eval": {"every": 0, "local_only_steps": 0},
        }
    )
    sim = Simulation(cfg, dataset=_sequences())
    sim.run(progress=False)
    assert _lstm_width(sim.fmodel.module) == 12
    loaded = load_for_adaptation(sim.checkpoint())
    assert _lstm_width(loaded.module) == 12
    assert loaded.state.numel() == sim.state.numel()
