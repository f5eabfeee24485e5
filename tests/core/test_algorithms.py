"""Each algorithm's update against a finite-difference or hand-computed reference (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from secure_fml._functional import Batch, FunctionalModel
from secure_fml.algorithms import AlgorithmConfig, AlgorithmName, make_algorithm
from secure_fml.models import MLP


def _setup(seed: int = 0) -> tuple[FunctionalModel, torch.Tensor, Batch, Batch]:
    torch.manual_seed(seed)
    module = MLP(3, 3, hidden=(4,)).double()
    fm = FunctionalModel(module)
    theta = fm.initial_parameters().double()
    x = torch.randn(12, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    return fm, theta, Batch(x[:5], y[:5]), Batch(x[5:], y[5:])


def _fd_grad(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    g = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e[i] = eps
        g[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def _cfg(name: AlgorithmName, **kw: object) -> AlgorithmConfig:
    return AlgorithmConfig(name=name, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_matches_finite_differences(steps: int) -> None:
    fm, theta, support, query = _setup()
    alg = make_algorithm(_cfg(AlgorithmName.MAML, inner_lr=0.3, inner_steps=steps), fm)
    upd = alg.meta_gradient(theta, support, query, torch.Generator())  # type: ignore[attr-defined]

    def query_loss_after_adaptation(t: torch.Tensor) -> float:
        p = t
        for _ in range(steps):
            p = p - 0.3 * fm.grad(p, support)
        return float(fm.loss(p, query))

    ref = _fd_grad(query_loss_after_adaptation, theta)
    torch.testing.assert_close(upd.vector, ref, rtol=1e-5, atol=1e-7)


def test_fomaml_is_query_gradient_at_adapted_point() -> None:
    fm, theta, support, query = _setup(1)
    alg = make_algorithm(_cfg(AlgorithmName.FOMAML, inner_lr=0.2, inner_steps=2), fm)
    upd = alg.meta_gradient(theta, support, query, torch.Generator())  # type: ignore[attr-defined]
    p = theta - 0.2 * fm.grad(theta, support)
    p = p - 0.2 * fm.grad(p, support)
    torch.testing.assert_close(upd.vector, fm.grad(p, query))
    # and it differs from the second-order meta-gradient (the Hessian term matters)
    maml = make_algorithm(_cfg(AlgorithmName.MAML, inner_lr=0.2, inner_steps=2), fm)
    full = maml.meta_gradient(theta, support, query, torch.Generator())  # type: ignore[attr-defined]
    assert not torch.allclose(full.vector, upd.vector, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2])
def test_metasgd_alpha_gradient_is_true_dloss_dalpha(steps: int) -> None:
    fm, theta, support, query = _setup(2)
    alg = make_algorithm(_cfg(AlgorithmName.METASGD, inner_lr=0.1, inner_steps=steps), fm)
    state = alg.initial_state(theta).double()
    gen = torch.Generator().manual_seed(0)
    d = fm.dim
    alpha = torch.exp(state[d:]) * (1 + 0.5 * torch.rand(d, generator=gen, dtype=torch.float64))
    state = torch.cat([theta, torch.log(alpha)])
    upd = alg.meta_gradient(state, support, query, gen)  # type: ignore[attr-defined]

    def loss(t: torch.Tensor, a: torch.Tensor) -> float:
        p = t
        for _ in range(steps):
            p = p - a * fm.grad(p, support)
        return float(fm.loss(p, query))

    d_alpha = _fd_grad(lambda a: loss(theta, a), alpha)
    d_theta = _fd_grad(lambda t: loss(t, alpha), theta)
    torch.testing.assert_close(upd.vector[:d], d_theta, rtol=1e-5, atol=1e-7)
    # the update's alpha part is dL/dlog_alpha = alpha * dL/dalpha
    torch.testing.assert_close(upd.vector[d:] / alpha, d_alpha, rtol=1e-5, atol=1e-7)


def test_metasgd_alpha_stays_positive_and_adapt_uses_it() -> None:
    fm, theta, support, _ = _setup(3)
    alg = make_algorithm(_cfg(AlgorithmName.METASGD, inner_lr=0.05), fm)
    state = alg.initial_state(theta).double()
    assert state.numel() == 2 * fm.dim
    state[fm.dim :] -= 30.0  # a large server step on log_alpha still leaves alpha > 0
    assert bool((alg.alpha(state) > 0).all())  # type: ignore[operator]
    state = alg.initial_state(theta).double()
    adapted = alg.adapt(state, support, steps=1)
    torch.testing.assert_close(adapted, theta - 0.05 * fm.grad(theta, support))


def test_fedavg_and_reptile_update_is_model_delta_of_local_sgd() -> None:
    fm, theta, support, query = _setup(4)
    data = Batch(torch.cat([support.x, query.x]), torch.cat([support.y, query.y]))
    for name in (AlgorithmName.FEDAVG, AlgorithmName.REPTILE):
        alg = make_algorithm(_cfg(name, local_lr=0.1, local_steps=3), fm)
        upd = alg.client_update(theta, data, torch.Generator())
        p = theta
        for _ in range(3):
            p = p - 0.1 * fm.grad(p, data)
        torch.testing.assert_close(upd.vector.double(), (theta - p), rtol=1e-5, atol=1e-6)


def test_perfedavg_fo_hand_computed() -> None:
    fm, theta, support, query = _setup(5)
    data = Batch(torch.cat([support.x, query.x]), torch.cat([support.y, query.y]))
    alg = make_algorithm(
        _cfg(AlgorithmName.PERFEDAVG_FO, inner_lr=0.2, local_lr=0.1, local_steps=2), fm
    )
    upd = alg.client_update(theta, data, torch.Generator())
    w = theta
    for _ in range(2):  # full batches: D = D' = all data
        w = w - 0.1 * fm.grad(w - 0.2 * fm.grad(w, data), data)
    torch.testing.assert_close(upd.vector.double(), theta - w, rtol=1e-5, atol=1e-6)


def test_perfedavg_hf_hessian_vector_product_matches_autograd() -> None:
    fm, theta, support, _ = _setup(6)
    alg = make_algorithm(_cfg(AlgorithmName.PERFEDAVG_HF, hf_delta=1e-5), fm)
    v = torch.randn_like(theta)
    approx = alg.hvp_finite_difference(theta, support, v)  # type: ignore[attr-defined]
    t = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fm.loss(t, support), t, create_graph=True)
    (exact,) = torch.autograd.grad(g @ v, t)
    torch.testing.assert_close(approx, exact, rtol=1e-4, atol=1e-6)
    # the HF update differs from FO by exactly -beta * alpha * H v per step
    data = support
    hf = make_algorithm(
        _cfg(AlgorithmName.PERFEDAVG_HF, inner_lr=0.2, local_lr=0.1, local_steps=1, hf_delta=1e-5),
        fm,
    )
    upd = hf.client_update(theta, data, torch.Generator())
    g_fo = fm.grad(theta - 0.2 * fm.grad(theta, data), data)
    tt = theta.detach().requires_grad_(True)
    (gg,) = torch.autograd.grad(fm.loss(tt, data), tt, create_graph=True)
    (hv,) = torch.autograd.grad(gg @ g_fo, tt)
    expected = 0.1 * (g_fo - 0.2 * hv)
    torch.testing.assert_close(upd.vector.double(), expected, rtol=1e-4, atol=1e-6)


def test_config_rejects_bad_values_naming_field() -> None:
    from secure_fml.errors import ConfigError

    with pytest.raises(ConfigError, match="inner_lr"):
        AlgorithmConfig(inner_lr=-1.0)
    with pytest.raises(ConfigError, match="inner_steps"):
        AlgorithmConfig(inner_steps=0)
    with pytest.raises(ConfigError, match="support_fraction"):
        AlgorithmConfig(support_fraction=1.0)
    with pytest.raises(ConfigError, match="inner_lr"):
        AlgorithmConfig(inner_lr=math.nan)
