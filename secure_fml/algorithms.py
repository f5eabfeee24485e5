"""Federated meta-learning algorithms as small strategy objects.

Each algorithm turns (global parameters, one client's data) into **one flat
float32 update vector**, the only thing a client contributes to a round. The
server only consumes the sum of those vectors and the number of contributors,
and applies ``params <- server_optimizer(params, sum / count)``. Privacy
(clipping, noise) and secure aggregation wrap that update path; algorithms know
nothing about them.

The global state is one packed vector ``[theta, log_alpha]``: ``theta`` are the
model parameters and, for Meta-SGD only, ``log_alpha`` parameterises the
per-coordinate inner learning rates ``alpha = exp(log_alpha)``, which keeps
``alpha`` positive by construction whatever the server optimizer does. The
update's alpha part is therefore ``dL/dlog_alpha = alpha * dL/dalpha``.

Update conventions (what the server averages):

- MAML / FOMAML / Meta-SGD (FedMeta, Chen et al. 2018): the meta-gradient
  ``d L_query(theta_u) / d(theta[, log_alpha])`` where ``theta_u`` is ``theta``
  after ``k`` inner SGD steps on the support set. FOMAML drops second
  derivatives.
- Reptile, FedAvg, Per-FedAvg: the model delta ``theta - theta_local`` after
  local training; with server SGD at learning rate 1 this is exactly FedAvg's
  average of local models (Jiang et al. 2019 read it as Reptile).

Every local gradient step takes its gradient through one seam,
:meth:`Algorithm.local_grad` (and its per-parameter and query-loss forms), and
the support/query split through :meth:`Algorithm.support_query`. A privacy
wrapper sets :attr:`Algorithm.oracle` to answer them privately (record-level
DP-SGD, :mod:`secure_fml.record_dp`); with no oracle they are the plain
mini-batch gradient and split, exactly as before.
"""

from __future__ import annotations

import enum
import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from privacy.errors import ConfigError
from secure_fml._functional import Batch, FunctionalModel

if TYPE_CHECKING:
    from secure_fml.record_dp import RecordDPReceipt

__all__ = [
    "Algorithm",
    "AlgorithmConfig",
    "AlgorithmName",
    "ClientUpdate",
    "GradientOracle",
    "LocalOptimizer",
    "SplitMode",
    "UpdateKind",
    "make_algorithm",
]


class AlgorithmName(enum.Enum):
    MAML = "maml"
    FOMAML = "fomaml"
    METASGD = "metasgd"
    METASGD_FO = "metasgd-fo"
    REPTILE = "reptile"
    PERFEDAVG_FO = "perfedavg-fo"
    PERFEDAVG_HF = "perfedavg-hf"
    FEDAVG = "fedavg"
    FEDAVG_META = "fedavg-meta"


class UpdateKind(enum.Enum):
    META_GRADIENT = "meta-gradient"  # server default: Adam (the FedMeta paper's choice)
    MODEL_DELTA = "model-delta"  # server default: SGD lr 1 (model averaging)


class LocalOptimizer(enum.Enum):
    SGD = "sgd"
    ADAM = "adam"


class SplitMode(enum.Enum):
    """How a client divides its data into support and query sets each round."""

    PER_ROUND = "per-round"  # a fresh random split every round
    #: The same split every round (FedMeta: "the division of support/query sets remains
    #: the same"): a function of the client's data alone, so it survives restarts.
    FIXED = "fixed"


@dataclass(frozen=True, kw_only=True)
class AlgorithmConfig:
    """Hyper-parameters of the client-side algorithm.

    ``inner_lr`` is alpha: the MAML/FOMAML inner step size, Meta-SGD's initial
    alpha, Per-FedAvg's alpha and the step size used when personalizing.
    ``local_lr`` is the local training step size of FedAvg/Reptile and
    Per-FedAvg's beta.
    """

    name: AlgorithmName = AlgorithmName.MAML
    inner_lr: float = 0.05
    inner_steps: int = 1
    support_fraction: float = 0.2
    batch_size: int | None = None
    query_batch_size: int | None = None
    local_lr: float = 0.05
    local_epochs: int = 1
    local_steps: int | None = None
    local_optimizer: LocalOptimizer = LocalOptimizer.SGD
    adapt_steps: int | None = None
    adapt_lr: float | None = None
    hf_delta: float = 1e-3
    split: SplitMode = SplitMode.PER_ROUND

    def __post_init__(self) -> None:
        def positive(field: str, value: float) -> None:
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"algorithm.{field} must be a positive number, got {value!r}")

        if not isinstance(self.name, AlgorithmName):
            raise ConfigError(f"algorithm.name must be an AlgorithmName, got {self.name!r}")
        if not isinstance(self.split, SplitMode):
            raise ConfigError(f"algorithm.split must be a SplitMode, got {self.split!r}")
        positive("inner_lr", self.inner_lr)
        positive("local_lr", self.local_lr)
        positive("hf_delta", self.hf_delta)
        for field in ("inner_steps", "local_epochs"):
            v = getattr(self, field)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"algorithm.{field} must be an integer >= 1, got {v!r}")
        for field in ("batch_size", "query_batch_size", "local_steps", "adapt_steps"):
            v = getattr(self, field)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"algorithm.{field} must be an integer >= 1, got {v!r}")
        if self.adapt_lr is not None:
            positive("adapt_lr", self.adapt_lr)
        if not 0.0 < self.support_fraction < 1.0:
            raise ConfigError(
                f"algorithm.support_fraction must be in (0, 1), got {self.support_fraction!r}"
            )


@dataclass(frozen=True)
class ClientUpdate:
    vector: torch.Tensor  # flat float32, same length as the packed global state
    loss: float  # the client's training objective before the update (diagnostic only)
    num_samples: int
    # Record-level DP: what this update cost the site (charge it before it leaves the site).
    receipt: RecordDPReceipt | None = None


class GradientOracle(Protocol):
    """Answers every local gradient step of an algorithm (see :attr:`Algorithm.oracle`).

    ``grad`` returns the gradient estimate for one step over ``pool`` (the site's
    data, or a support/query set that ``split`` returned); ``split`` divides the
    site's data into support and query sets.
    """

    def grad(self, flat: torch.Tensor, pool: Batch) -> torch.Tensor: ...

    def split(self, data: Batch, support_fraction: float) -> tuple[Batch, Batch]: ...


def _batches(n: int, batch_size: int | None, gen: torch.Generator) -> list[torch.Tensor]:
    """One epoch of shuffled mini-batch indices (a single full batch if batch_size is None)."""
    perm = torch.randperm(n, generator=gen)
    if batch_size is None or batch_size >= n:
        return [perm]
    return list(torch.split(perm, batch_size))


def _sample(batch: Batch, size: int | None, gen: torch.Generator) -> Batch:
    if size is None or size >= len(batch):
        return batch
    return batch.take(torch.randperm(len(batch), generator=gen)[:size])


def _data_seed(data: Batch) -> int:
    """A seed that is a function of the client's labels and size (a fixed split's draw)."""
    h = hashlib.sha256(data.y.detach().cpu().numpy().tobytes())
    h.update(str(len(data)).encode())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


def split_support_query(
    data: Batch, support_fraction: float, gen: torch.Generator
) -> tuple[Batch, Batch]:
    n = len(data)
    if n < 2:
        raise ConfigError("a client needs at least 2 samples for a support/query split")
    perm = torch.randperm(n, generator=gen)
    k = min(max(1, round(support_fraction * n)), n - 1)
    return data.take(perm[:k]), data.take(perm[k:])


class Algorithm(ABC):
    """One federated (meta-)learning algorithm."""

    update_kind: UpdateKind = UpdateKind.MODEL_DELTA
    learns_alpha: bool = False
    #: Set by a privacy wrapper (record-level DP): every local gradient step and the
    #: support/query split then go through it. None: the plain mini-batch gradient.
    oracle: GradientOracle | None = None

    def __init__(self, config: AlgorithmConfig, model: FunctionalModel) -> None:
        self.config = config
        self.model = model

    # -- the gradient seam -------------------------------------------------------------------
    def local_grad(self, flat: torch.Tensor, pool: Batch, batch: Batch) -> torch.Tensor:
        """Gradient of one local step: on ``batch`` (drawn from ``pool``), or the oracle's."""
        if self.oracle is None:
            return self.model.grad(flat, batch)
        return self.oracle.grad(flat, pool)

    def local_grad_params(
        self, params: list[torch.Tensor], pool: Batch, batch: Batch
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`local_grad` for per-parameter tensors (no graph through the result)."""
        if self.oracle is None:
            pd = [x.detach().requires_grad_(True) for x in params]
            return torch.autograd.grad(self.model.loss_params(pd, batch), pd)
        flat = torch.cat([x.detach().reshape(-1) for x in params])
        return tuple(self.model.split(self.oracle.grad(flat, pool)))

    def query_loss(self, params: list[torch.Tensor], pool: Batch, batch: Batch) -> torch.Tensor:
        """The outer objective: its gradient w.r.t. ``params`` is the query gradient.

        With an oracle it is the linear surrogate ``<params, g>`` for the oracle's
        gradient ``g``, so autograd carries exactly ``g`` (and, through the first-order
        inner steps, Meta-SGD's ``-g * sum of inner gradients``) to the leaves.
        """
        if self.oracle is None:
            return self.model.loss_params(params, batch)
        flat = torch.cat([x.detach().reshape(-1) for x in params])
        g = self.model.split(self.oracle.grad(flat, pool))
        return sum(((x * gi).sum() for x, gi in zip(params, g, strict=True)), torch.zeros(()))

    def support_query(self, data: Batch, gen: torch.Generator) -> tuple[Batch, Batch]:
        fixed = self.config.split is SplitMode.FIXED
        if self.oracle is None:
            if fixed:
                gen = torch.Generator().manual_seed(_data_seed(data))
            return split_support_query(data, self.config.support_fraction, gen)
        if fixed:
            raise ConfigError(
                "algorithm.split = fixed is not available under record-level DP: its "
                "support/query split is part of the private sampling"
            )
        return self.oracle.split(data, self.config.support_fraction)

    @property
    def name(self) -> AlgorithmName:
        return self.config.name

    @property
    def state_dim(self) -> int:
        """Length of the packed global state (theta, plus log alpha for Meta-SGD)."""
        return self.model.dim * (2 if self.learns_alpha else 1)

    def initial_state(self, theta: torch.Tensor) -> torch.Tensor:
        """The packed global state for an initial ``theta``."""
        return theta.detach().clone().float()

    def theta(self, state: torch.Tensor) -> torch.Tensor:
        return state[: self.model.dim]

    def alpha(self, state: torch.Tensor) -> torch.Tensor | float:
        return self.config.inner_lr

    @abstractmethod
    def client_update(self, state: torch.Tensor, data: Batch, gen: torch.Generator) -> ClientUpdate:
        """Compute one client's contribution from its local training data."""

    def adapt(
        self, state: torch.Tensor, support: Batch, *, steps: int | None = None
    ) -> torch.Tensor:
        """Personalize on a new site's support set; returns its flat theta_u.

        Only the support set is ever used here: evaluation never adapts on
        query points.
        """
        k = steps if steps is not None else (self.config.adapt_steps or self.config.inner_steps)
        lr: torch.Tensor | float = (
            self.config.adapt_lr if self.config.adapt_lr is not None else self.alpha(state)
        )
        p = self.theta(state).detach()
        # Seeded only to choose mini-batches of the site's own support data.
        gen = torch.Generator().manual_seed(0)
        for _ in range(k):
            b = _sample(support, self.config.batch_size, gen)
            p = p - lr * self.model.grad(p, b)
        return p


class _MetaGradient(Algorithm):
    """MAML (second order), FOMAML and Meta-SGD share one inner loop."""

    update_kind = UpdateKind.META_GRADIENT
    second_order = True

    def __init__(self, config: AlgorithmConfig, model: FunctionalModel) -> None:
        super().__init__(config, model)
        self._alpha_cache: tuple[torch.Tensor, int, list[torch.Tensor]] | None = None

    def _alpha_values(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter alpha = exp(log_alpha), cached for one version of ``state``.

        The cache holds a reference to ``state`` itself (so its identity cannot be
        reused by another tensor) and its version counter, which every in-place
        update (e.g. the server optimizer's step) increments.
        """
        c = self._alpha_cache
        if c is None or c[0] is not state or c[1] != state._version:
            with torch.no_grad():
                values = self.model.split(torch.exp(state[self.model.dim :]))
            self._alpha_cache = c = (state, state._version, values)
        return c[2]

    def client_update(self, state: torch.Tensor, data: Batch, gen: torch.Generator) -> ClientUpdate:
        support, query = self.support_query(data, gen)
        return self.meta_gradient(state, support, query, gen)

    def meta_gradient(
        self, state: torch.Tensor, support: Batch, query: Batch, gen: torch.Generator
    ) -> ClientUpdate:
        # The hot loop works on per-parameter tensors (one autograd leaf each) and
        # concatenates once at the end: gradients w.r.t. a flat leaf would cost an
        # extra full-size copy (the backward of the split) at every step.
        model = self.model
        if self.second_order and self.oracle is not None:
            raise ConfigError(f"{self.name.value} is second order: no gradient oracle applies")
        d = model.dim
        theta = [t.detach().requires_grad_(True) for t in model.split(state[:d])]
        leaves = list(theta)
        alpha: list[torch.Tensor | float]
        alpha_values: list[torch.Tensor] = []
        if self.learns_alpha:
            # alpha = exp(log_alpha) is the same for every client of a round: computed once
            # per global state; the chain rule to log_alpha is applied after autograd.
            alpha_values = self._alpha_values(state)
            alpha_leaves = [a.detach().requires_grad_(True) for a in alpha_values]
            leaves += alpha_leaves
            alpha = list(alpha_leaves)
        else:
            alpha = [self.config.inner_lr] * len(theta)
        with torch.enable_grad():
            p: list[torch.Tensor] = theta
            for _ in range(self.config.inner_steps):
                b = _sample(support, self.config.batch_size, gen)
                if self.second_order:
                    g = torch.autograd.grad(model.loss_params(p, b), p, create_graph=True)
                else:
                    # First order: the inner gradient is a constant (no graph through it),
                    # so d theta_u / d theta is the identity, as FOMAML prescribes.
                    g = self.local_grad_params(p, support, b)
                p = [x - a * gi for x, a, gi in zip(p, alpha, g, strict=True)]
            q = _sample(query, self.config.query_batch_size, gen)
            loss = self.query_loss(p, query, q)
            grads = list(torch.autograd.grad(loss, leaves))
        if alpha_values:
            k = len(theta)
            # dL/dlog(alpha) = alpha * dL/dalpha
            grads[k:] = [g * a for g, a in zip(grads[k:], alpha_values, strict=True)]
        vector = torch.cat([g.reshape(-1) for g in grads])
        return ClientUpdate(vector, float(loss.detach()), len(support) + len(query))


class MAML(_MetaGradient):
    pass


class FOMAML(_MetaGradient):
    second_order = False


class MetaSGD(_MetaGradient):
    learns_alpha = True

    def initial_state(self, theta: torch.Tensor) -> torch.Tensor:
        log_alpha = torch.full_like(theta, math.log(self.config.inner_lr))
        return torch.cat([theta.detach().float(), log_alpha.float()])

    def alpha(self, state: torch.Tensor) -> torch.Tensor:
        return torch.exp(state[self.model.dim :])


class MetaSGDFO(MetaSGD):
    """First-order Meta-SGD: inner gradients are constants, as in FOMAML.

    ``dL/dtheta`` is the query gradient at ``theta_u``; ``dL/dalpha`` is
    ``-g_query * sum_k g_k`` over the inner gradients ``g_k``. Every gradient it
    uses is a local gradient step, so it runs under record-level DP (second-order
    Meta-SGD differentiates through the support gradients and does not).
    """

    second_order = False


class _LocalTraining(Algorithm):
    """FedAvg and Reptile: local training, the update is theta - theta_local."""

    def _local_train(self, theta: torch.Tensor, data: Batch, gen: torch.Generator) -> torch.Tensor:
        """``local_epochs`` epochs of mini-batch SGD/Adam, or exactly ``local_steps`` steps."""
        cfg = self.config
        p = theta.detach().clone()
        adam = cfg.local_optimizer is LocalOptimizer.ADAM
        m = torch.zeros_like(p) if adam else None
        v = torch.zeros_like(p) if adam else None
        t = 0
        epoch = 0
        while True:
            for idx in _batches(len(data), cfg.batch_size, gen):
                g = self.local_grad(p, data, data.take(idx))
                t += 1
                if m is not None and v is not None:
                    m.mul_(0.9).add_(g, alpha=0.1)
                    v.mul_(0.999).addcmul_(g, g, value=0.001)
                    step = (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
                    p = p - cfg.local_lr * step
                else:
                    p = p - cfg.local_lr * g
                if cfg.local_steps is not None and t >= cfg.local_steps:
                    return p
            epoch += 1
            if cfg.local_steps is None and epoch >= cfg.local_epochs:
                return p

    def alpha(self, state: torch.Tensor) -> torch.Tensor | float:
        # Personalization fine-tunes with the local learning rate by default.
        return self.config.local_lr

    def client_update(self, state: torch.Tensor, data: Batch, gen: torch.Generator) -> ClientUpdate:
        theta = state.detach()
        loss = self.model.mean_loss(theta, data)
        local = self._local_train(theta, data, gen)
        return ClientUpdate((theta - local).float(), loss, len(data))


class FedAvg(_LocalTraining):
    """FedAvg; FedAvg(Meta) is the same training, fine-tuned on the support set before testing."""


class Reptile(_LocalTraining):
    pass


class PerFedAvg(Algorithm):
    """Per-FedAvg (Fallah et al. 2020), first-order (FO) or Hessian-free (HF).

    Local step on three independent batches D, D', D'':
    ``w <- w - beta (I - alpha H(w, D'')) grad f(w - alpha grad f(w, D), D')``;
    FO drops the Hessian term, HF approximates the Hessian-vector product by a
    central finite difference of gradients.
    """

    hessian_free = False

    def client_update(self, state: torch.Tensor, data: Batch, gen: torch.Generator) -> ClientUpdate:
        cfg = self.config
        w0 = state.detach()
        loss = self.model.mean_loss(w0, data)
        w = w0.clone()
        steps = cfg.local_steps or max(1, math.ceil(len(data) / (cfg.batch_size or len(data))))
        for _ in range(steps):
            b1 = _sample(data, cfg.batch_size, gen)
            b2 = _sample(data, cfg.batch_size, gen)
            tmp = w - cfg.inner_lr * self.local_grad(w, data, b1)
            g = self.local_grad(tmp, data, b2)
            if self.hessian_free:
                b3 = _sample(data, cfg.batch_size, gen)
                g = g - cfg.inner_lr * self.hvp_finite_difference(w, b3, g)
            w = w - cfg.local_lr * g
        return ClientUpdate((w0 - w).float(), loss, len(data))

    def hvp_finite_difference(self, w: torch.Tensor, batch: Batch, v: torch.Tensor) -> torch.Tensor:
        if self.oracle is not None:
            raise ConfigError("perfedavg-hf's Hessian term takes no gradient oracle")
        norm = float(v.norm())
        if norm == 0.0:
            return torch.zeros_like(v)
        delta = self.config.hf_delta / norm
        plus = self.model.grad(w + delta * v, batch)
        minus = self.model.grad(w - delta * v, batch)
        return (plus - minus) / (2 * delta)


class PerFedAvgHF(PerFedAvg):
    hessian_free = True


_REGISTRY: dict[AlgorithmName, type[Algorithm]] = {
    AlgorithmName.MAML: MAML,
    AlgorithmName.FOMAML: FOMAML,
    AlgorithmName.METASGD: MetaSGD,
    AlgorithmName.METASGD_FO: MetaSGDFO,
    AlgorithmName.REPTILE: Reptile,
    AlgorithmName.PERFEDAVG_FO: PerFedAvg,
    AlgorithmName.PERFEDAVG_HF: PerFedAvgHF,
    AlgorithmName.FEDAVG: FedAvg,
    AlgorithmName.FEDAVG_META: FedAvg,
}


def make_algorithm(config: AlgorithmConfig, model: FunctionalModel) -> Algorithm:
    return _REGISTRY[config.name](config, model)
