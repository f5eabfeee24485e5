"""Per-example gradients equal single-example autograd.grad; the clipped sum has sensitivity C."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from privacy.errors import ConfigError
from secure_fml._functional import Batch, FunctionalModel
from secure_fml._per_example import PerExampleGradients
from secure_fml.models import MLP, CharLSTM


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=3, padding=1)
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv(x.unsqueeze(1))), 2)
        return self.fc(x.flatten(1))


class _EmbedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x).mean(dim=1))


class _SeqFirstLSTM(nn.Module):
    """Time-major, two layers, no bias: the other nn.LSTM code paths."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 3)
        self.lstm = nn.LSTM(3, 4, num_layers=2, bias=False)
        self.out = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x).transpose(0, 1))
        return self.out(h[-1])


def _images(n: int) -> torch.Tensor:
    return torch.rand(n, 6, 6, dtype=torch.float64)


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor], int]] = {
    "conv2d+linear": (_ConvNet, _images, 3),
    "linear (mlp)": (lambda: MLP(5, 3, hidden=(4,)), lambda n: torch.randn(n, 5).double(), 3),
    "embedding": (_EmbedNet, lambda n: torch.randint(0, 7, (n, 5)), 4),
    "lstm (CharLSTM)": (
        lambda: CharLSTM(vocab_size=9, embed_dim=3, hidden=4),
        lambda n: torch.randint(0, 9, (n, 6)),
        9,
    ),
    "lstm time-major 2 layers no bias": (_SeqFirstLSTM, lambda n: torch.randint(0, 6, (n, 5)), 6),
}


@pytest.mark.parametrize("name", list(CASES))
def test_per_example_gradients_equal_single_example_autograd(name: str) -> None:
    make, inputs, classes = CASES[name]
    torch.manual_seed(0)
    module = make().double()
    fm = FunctionalModel(module)
    flat = fm.initial_parameters().double() + 0.1 * torch.randn(fm.dim, dtype=torch.float64)
    x, y = inputs(5), torch.randint(0, classes, (5,))
    pe = PerExampleGradients(fm, chunk_size=2)
    got = torch.cat([g.reshape(5, -1) for g in pe.per_example(flat, Batch(x, y))], dim=1)
    ref = []
    for i in range(5):
        p = flat.clone().requires_grad_(True)
        # The reference runs the original module (nn.LSTM's fused kernel included).
        loss = nn.functional.cross_entropy(fm.logits(p, x[i : i + 1]), y[i : i + 1])
        (g,) = torch.autograd.grad(loss, p)
        ref.append(g)
    torch.testing.assert_close(got, torch.stack(ref), rtol=1e-9, atol=1e-12)
    assert got.abs().max() > 1e-3  # not trivially zero


def test_unit_gradient_is_the_mean_of_its_records_known_answer() -> None:
    torch.manual_seed(1)
    fm = FunctionalModel(MLP(4, 2, hidden=()).double())
    flat = torch.randn(fm.dim, dtype=torch.float64)
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    units = torch.tensor([2, 0, 2, 2, 7])
    pe = PerExampleGradients(fm, chunk_size=1)
    res = pe.clipped_sum(flat, Batch(x, y), clip_norm=1e9, unit_codes=units)
    g = torch.cat([t.reshape(5, -1) for t in pe.per_example(flat, Batch(x, y))], dim=1)
    expected = g[[0, 2, 3]].mean(0) + g[1] + g[4]
    torch.testing.assert_close(res.total, expected)
    assert res.units == 3 and res.clipped == 0


def test_batch_norm_is_refused() -> None:
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="mixes examples"):
        PerExampleGradients(FunctionalModel(module))


_FM = FunctionalModel(MLP(3, 2, hidden=(4,)).double())


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=9),
    num_units=st.integers(min_value=1, max_value=4),
    chunk=st.integers(min_value=1, max_value=4),
    clip=st.floats(min_value=1e-3, max_value=2.0),
    seed=st.integers(min_value=0, max_value=2**16),
    per_person=st.booleans(),
)
def test_removing_one_unit_moves_the_clipped_sum_by_at_most_the_clip_norm(
    n: int, num_units: int, chunk: int, clip: float, seed: int, per_person: bool
) -> None:
    """Sensitivity of the pre-noise sum: drop one record (or all of one person's records)."""
    g = torch.Generator().manual_seed(seed)
    x = 5.0 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g)
    flat = 3.0 * torch.randn(_FM.dim, generator=g, dtype=torch.float64)
    codes = torch.randint(0, num_units, (n,), generator=g) if per_person else torch.arange(n)
    pe = PerExampleGradients(_FM, chunk_size=chunk)
    full = pe.clipped_sum(flat, Batch(x, y), clip_norm=clip, unit_codes=codes)
    for u in torch.unique(codes).tolist():
        keep = torch.nonzero(codes != u).flatten()
        rest = pe.clipped_sum(flat, Batch(x, y).take(keep), clip_norm=clip, unit_codes=codes[keep])
        assert float((full.total - rest.total).norm()) <= clip * (1 + 1e-9)


@pytest.mark.parametrize("name", ["linear (mlp)", "conv2d+linear", "lstm (CharLSTM)"])
@pytest.mark.parametrize("clip", [1e-3, 0.05, 1e6])
def test_clipped_sum_is_the_sum_of_clipped_per_example_gradients(name: str, clip: float) -> None:
    """Known answer from the materialized per-example gradients (the all-Linear path
    never materializes them)."""
    make, inputs, classes = CASES[name]
    torch.manual_seed(2)
    fm = FunctionalModel(make().double())
    flat = fm.initial_parameters().double() + 0.3 * torch.randn(fm.dim, dtype=torch.float64)
    x, y = inputs(6), torch.randint(0, classes, (6,))
    pe = PerExampleGradients(fm, chunk_size=8)
    g = torch.cat([t.reshape(6, -1) for t in pe.per_example(flat, Batch(x, y))], dim=1)
    norms = g.norm(dim=1)
    expected = (g * (clip / (norms + 1e-6)).clamp(max=1.0).unsqueeze(1)).sum(0)
    res = pe.clipped_sum(flat, Batch(x, y), clip_norm=clip)
    torch.testing.assert_close(res.total, expected, rtol=1e-9, atol=1e-14)
    assert res.units == 6 and res.clipped == int((norms > clip).sum())
