"""Record-level (patient / customer) differential privacy inside each site.

A wrapper, not a branch in every algorithm: :class:`RecordDPAlgorithm` wraps a
first-order algorithm and answers every local gradient step it takes through
the algorithms' gradient seam (:attr:`secure_fml.algorithms.Algorithm.oracle`)
with DP-SGD (Abadi et al. 2016):

1. **Poisson sampling** of the pool's privacy units at rate ``q = B / n``
   (``B`` the expected batch size, ``n`` the pool's expected number of units),
   one coin per unit from the CSPRNG (:class:`privacy.GaussianNoiseSource`);
2. **per-unit clipping**: each unit's gradient (the mean over that person's
   records when ``privacy.unit_column`` groups records; otherwise one record)
   is scaled to L2 norm at most ``C_r``;
3. **Gaussian noise** N(0, σ²C_r²) from the same CSPRNG added to the sum;
4. division by the **fixed** expected batch size ``q·n`` (never the realized
   count, which depends on the data).

Pools are the site's data (FedAvg, Reptile, Per-FedAvg FO: every step at
``q = B/n``) or, for first-order meta-learning (FOMAML, Meta-SGD FO), a support
and a query set from a per-unit Bernoulli(p) split drawn from the CSPRNG (so
adding or removing one unit never changes where the others go); support steps
use ``q = B/(p·n)``, the query step ``q = B_q/((1-p)·n)``. The number of steps
and the rates are a function of the configuration and of the site's size,
which is treated as public (as Opacus does for a dataset's size).

Every step is a Poisson-subsampled Gaussian mechanism under add/remove-one-unit
neighbours; everything else the site sends (the update, Meta-SGD's step-size
gradient ``-g_q * sum_k g_k``, FedAvg's Adam moments) is post-processing of
those outputs. :meth:`RecordDPAlgorithm.client_update` returns, with the
update, a :class:`RecordDPReceipt` of what it cost; the site charges it to its
own ledger (``receipt.event(round=..., site_id=...)``, a
:class:`privacy.RecordLevelRelease`) **before** the update leaves the site.

Refused (one-line :class:`~privacy.errors.ConfigError` naming the first-order
alternative): second-order MAML and Meta-SGD, whose meta-gradient differentiates
through the support gradient, and Per-FedAvg HF, whose finite-difference
Hessian term divides a gradient difference by ``2δ``; a clipped support record
has no bounded influence on either (``docs/record_level_dp.md``).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

import privacy
from privacy import GaussianNoiseSource
from privacy.errors import ConfigError, PrivacyError
from secure_fml._functional import Batch
from secure_fml._per_example import PerExampleGradients
from secure_fml.algorithms import (
    FOMAML,
    Algorithm,
    AlgorithmName,
    ClientUpdate,
    FedAvg,
    MetaSGDFO,
    PerFedAvg,
    Reptile,
    SplitMode,
    _LocalTraining,
    _MetaGradient,
)
from secure_fml.rounds import participation_bound

__all__ = [
    "RecordDPAlgorithm",
    "RecordDPReceipt",
    "RecordLevelDP",
    "RecordLevelLedger",
    "num_units",
    "record_level_from_config",
    "record_level_rounds",
    "refuse_unsupported",
    "site_schedule",
    "unsupported_reason",
    "wrap_for_config",
]

if TYPE_CHECKING:
    from secure_fml.config import Config
    from secure_fml.data import FederatedDataset

log = logging.getLogger(__name__)

# Algorithms whose every gradient goes through the oracle (exact classes: a subclass
# could compute something else).
_SUPPORTED: tuple[type[Algorithm], ...] = (FedAvg, Reptile, FOMAML, MetaSGDFO, PerFedAvg)
_ALTERNATIVE = {
    AlgorithmName.MAML: ("fomaml", "its meta-gradient differentiates through support gradients"),
    AlgorithmName.METASGD: (
        "metasgd-fo",
        "its meta-gradient differentiates through support gradients",
    ),
    AlgorithmName.PERFEDAVG_HF: (
        "perfedavg-fo",
        "its Hessian term divides a gradient difference by 2*hf_delta",
    ),
}


_SUPPORTED_NAMES = "fedavg, fedavg-meta, reptile, fomaml, metasgd-fo, perfedavg-fo"


def unsupported_reason(name: str) -> str | None:
    """Why the algorithm named ``name`` cannot run under record-level DP (None: it can).

    A deployed site checks the algorithm a round start names with this one line.
    """
    try:
        algo = AlgorithmName(name)
    except ValueError:
        return (
            f"algorithm {name!r} is unknown (supported under record-level DP: {_SUPPORTED_NAMES})"
        )
    known = _ALTERNATIVE.get(algo)
    if known is None:
        return None
    alt, why = known
    return (
        f"algorithm.name={algo.value!r} has no per-record sensitivity bound under "
        f"record-level DP ({why}); use {alt!r}"
    )


def refuse_unsupported(algorithm: Algorithm) -> None:
    """Raise a one-line :class:`ConfigError` unless ``algorithm`` can run under record-level DP."""
    if type(algorithm) in _SUPPORTED:
        return
    reason = unsupported_reason(algorithm.name.value)
    if reason is not None:
        raise ConfigError(reason)
    raise ConfigError(
        f"algorithm {type(algorithm).__name__} is not supported under record-level DP "
        f"(supported: {_SUPPORTED_NAMES})"
    )


@dataclass(frozen=True, kw_only=True)
class RecordLevelDP:
    """Record-level DP-SGD at each site.

    Give ``noise_multiplier`` (σ, the same at every site) or ``target_epsilon``
    (each site calibrates its own σ from its size so that ``rounds`` rounds cost at
    most ``target_epsilon`` at ``delta``). ``unit`` labels the privacy unit in
    receipts and reports: ``"record"``, or the person column's name.
    """

    clip_norm: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    rounds: int | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    unit: str = "record"
    chunk_size: int = 32
    insecure_seed: int | None = None

    def __post_init__(self) -> None:
        def positive(name: str, v: object) -> None:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigError(f"privacy.record_{name} must be a finite number, got {v!r}")
            if v <= 0:
                raise ConfigError(f"privacy.record_{name} must be > 0, got {v!r}")

        positive("clip_norm", self.clip_norm)
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError(
                "record-level DP: set exactly one of privacy.record_noise_multiplier and "
                "privacy.record_target_epsilon"
            )
        if self.noise_multiplier is not None:
            positive("noise_multiplier", self.noise_multiplier)
        if self.target_epsilon is not None:
            positive("target_epsilon", self.target_epsilon)
            if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 1:
                raise ConfigError("record-level calibration to a target epsilon needs rounds >= 1")
        if not (isinstance(self.delta, float) and 0.0 < self.delta < 1.0):
            raise ConfigError(f"privacy.delta must be in (0, 1), got {self.delta!r}")
        if self.accountant not in ("rdp", "prv"):
            raise ConfigError(
                "record-level accounting uses 'rdp' or 'prv' (upper bounds), got "
                f"{self.accountant!r}"
            )
        if not isinstance(self.unit, str) or not self.unit:
            raise ConfigError("privacy.unit_column must be a non-empty string")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be an integer >= 1, got {self.chunk_size!r}")

    def noise_source(self) -> GaussianNoiseSource:
        """The CSPRNG for sampling and noise (seeded only in insecure test mode, loudly)."""
        if self.insecure_seed is None:
            return GaussianNoiseSource()
        return GaussianNoiseSource(seed=self.insecure_seed, insecure_test_mode=True)


Schedule = tuple[tuple[float, int], ...]


@dataclass(frozen=True, kw_only=True)
class RecordDPReceipt:
    """What one site's update cost at record level: ``steps[i]`` DP-SGD steps at
    Poisson rate ``sample_rates[i]``, each clipped to ``clip_norm`` with noise
    multiplier ``noise_multiplier``; ``units`` is the site's (public) size."""

    noise_multiplier: float
    clip_norm: float
    unit: str
    sample_rates: tuple[float, ...]
    steps: tuple[int, ...]
    units: int
    clipped_fraction: float  # diagnostic, stays at the site (not noised)

    @property
    def schedule(self) -> Schedule:
        return tuple(zip(self.sample_rates, self.steps, strict=True))

    def event(self, *, round: int, site_id: str) -> privacy.RecordLevelRelease:
        """The ledger event a site records before its update leaves it."""
        return privacy.RecordLevelRelease(
            round=round,
            site_id=site_id,
            unit=self.unit,
            noise_multiplier=self.noise_multiplier,
            clip_norm=self.clip_norm,
            sample_rates=self.sample_rates,
            steps=self.steps,
        )


@dataclass
class _Pool:
    batch: Batch
    inverse: torch.Tensor  # per record: index of its unit among the pool's units
    num_units: int
    expected_units: float  # public: n, p*n or (1-p)*n
    batch_size: int | None


class _PrivateOracle:
    """DP-SGD answers to one client_update's gradient requests (see the module docstring)."""

    def __init__(
        self,
        *,
        engine: PerExampleGradients,
        data: Batch,
        noise_multiplier: float,
        clip_norm: float,
        batch_size: int | None,
        query_batch_size: int | None,
        source: GaussianNoiseSource,
    ) -> None:
        self.engine = engine
        self.sigma = noise_multiplier
        self.clip = clip_norm
        self.source = source
        self.batch_size = batch_size
        self.query_batch_size = query_batch_size
        self.has_units = data.unit is not None
        if data.unit is not None:
            _, self.codes = torch.unique(data.unit, return_inverse=True)
            self.n_units = int(self.codes.max()) + 1 if len(data) else 0
        else:
            self.codes = torch.arange(len(data))
            self.n_units = len(data)
        self.data = data
        self.pools: dict[int, _Pool] = {}
        self.counts: dict[float, int] = {}
        self.units_seen = 0
        self.units_clipped = 0
        self._register(data, self.codes, float(self.n_units), batch_size)

    def _register(
        self, batch: Batch, site_codes: torch.Tensor, expected: float, b: int | None
    ) -> Batch:
        if self.has_units:
            uniq, inverse = torch.unique(site_codes, return_inverse=True)
            num = len(uniq)
        else:  # one record per unit
            inverse, num = torch.arange(len(batch)), len(batch)
        self.pools[id(batch)] = _Pool(batch, inverse, num, expected, b)
        return batch

    def split(self, data: Batch, support_fraction: float) -> tuple[Batch, Batch]:
        if data is not self.data:
            raise PrivacyError("record-level DP: split of a pool that is not the site's data")
        # One Bernoulli(p) coin per unit: a person's records stay together, and adding
        # or removing one unit never moves another.
        coins = torch.from_numpy(self.source.uniform53(self.n_units) <= support_fraction)
        in_support = coins[self.codes]
        s_idx = torch.nonzero(in_support).flatten()
        q_idx = torch.nonzero(~in_support).flatten()
        support = self._register(
            data.take(s_idx), self.codes[s_idx], support_fraction * self.n_units, self.batch_size
        )
        query = self._register(
            data.take(q_idx),
            self.codes[q_idx],
            (1.0 - support_fraction) * self.n_units,
            self.query_batch_size,
        )
        return support, query

    def grad(self, flat: torch.Tensor, pool: Batch) -> torch.Tensor:
        entry = self.pools.get(id(pool))
        if entry is None or entry.batch is not pool:
            raise PrivacyError(
                "record-level DP: a gradient was requested over data the oracle did not "
                "issue; refusing a non-private step"
            )
        b = entry.batch_size
        q = 1.0 if b is None else min(1.0, b / entry.expected_units)
        if q < 1.0:
            # u <= q has probability floor(q 2^53)/2^53 <= q: never above the accounted rate.
            pick = torch.from_numpy(self.source.uniform53(entry.num_units) <= q)
            idx = torch.nonzero(pick[entry.inverse]).flatten()
            batch, codes = pool.take(idx), entry.inverse[idx]
        else:
            batch, codes = pool, entry.inverse
        res = self.engine.clipped_sum(
            flat, batch, clip_norm=self.clip, unit_codes=codes if self.has_units else None
        )
        self.units_seen += res.units
        self.units_clipped += res.clipped
        noise = torch.from_numpy(
            self.source.normal(res.total.numel(), std=self.sigma * self.clip)
        ).to(res.total.device)
        denominator = q * entry.expected_units
        self.counts[q] = self.counts.get(q, 0) + 1
        # Noise added in float64; only the noisy sum is rounded back.
        return ((res.total.double() + noise) / denominator).to(flat.dtype)


def site_schedule(algorithm: Algorithm, *, num_records: int, num_units: int) -> Schedule:
    """The (rate, steps) schedule one round of ``algorithm`` (unwrapped) takes at a site
    of this size under record-level DP (a function of the configuration and the public
    site size only)."""
    refuse_unsupported(algorithm)
    cfg = algorithm.config
    n = num_records

    def rate(b: int | None, pool: float) -> float:
        return 1.0 if b is None else min(1.0, b / pool)

    if isinstance(algorithm, _LocalTraining):
        if cfg.local_steps is not None:
            k = cfg.local_steps
        else:
            per_epoch = 1 if cfg.batch_size is None else math.ceil(n / cfg.batch_size)
            k = cfg.local_epochs * per_epoch
        return ((rate(cfg.batch_size, num_units), k),)
    if isinstance(algorithm, PerFedAvg):
        k = cfg.local_steps or max(1, math.ceil(n / (cfg.batch_size or n)))
        return ((rate(cfg.batch_size, num_units), 2 * k),)
    if isinstance(algorithm, _MetaGradient):
        return privacy.record_level_schedule(
            site_size=num_units,
            local_steps=1,
            batch_size=cfg.batch_size,
            support_fraction=cfg.support_fraction,
            inner_steps=cfg.inner_steps,
            query_batch_size=cfg.query_batch_size,
        )
    raise ConfigError(f"no record-level schedule for {type(algorithm).__name__}")  # unreachable


class RecordDPAlgorithm(Algorithm):
    """A first-order algorithm whose every local gradient step is DP-SGD at record level.

    ``client_update`` returns the usual :class:`ClientUpdate` (its ``loss`` is NaN:
    the clear training loss is not released) with ``receipt`` set.
    """

    def __init__(
        self,
        inner: Algorithm,
        dp: RecordLevelDP,
        *,
        noise_source: GaussianNoiseSource | None = None,
    ) -> None:
        if not isinstance(dp, RecordLevelDP):
            raise TypeError("dp must be a RecordLevelDP")
        refuse_unsupported(inner)
        super().__init__(inner.config, inner.model)
        self.inner = inner
        self.dp = dp
        self.update_kind = inner.update_kind
        self.learns_alpha = inner.learns_alpha
        self.source = noise_source if noise_source is not None else dp.noise_source()
        if not isinstance(self.source, GaussianNoiseSource):
            raise TypeError("noise_source must be a privacy.GaussianNoiseSource")
        self.engine = PerExampleGradients(inner.model, chunk_size=dp.chunk_size)
        self._sigma: dict[Schedule, float] = {}

    # -- delegated to the wrapped algorithm (no private data involved) -----------------
    def initial_state(self, theta: torch.Tensor) -> torch.Tensor:
        return self.inner.initial_state(theta)

    def theta(self, state: torch.Tensor) -> torch.Tensor:
        return self.inner.theta(state)

    def alpha(self, state: torch.Tensor) -> torch.Tensor | float:
        return self.inner.alpha(state)

    def adapt(
        self, state: torch.Tensor, support: Batch, *, steps: int | None = None
    ) -> torch.Tensor:
        # Personalization at a new site uses its own data and releases nothing.
        return self.inner.adapt(state, support, steps=steps)

    # -- planning ------------------------------------------------------------------------
    def schedule(self, *, num_records: int, num_units: int) -> Schedule:
        """The (rate, steps) schedule one round at a site of this size takes."""
        return site_schedule(self.inner, num_records=num_records, num_units=num_units)

    def noise_multiplier_for(self, schedule: Schedule) -> float:
        """σ for a site with this schedule: the configured one, or calibrated to the target."""
        if self.dp.noise_multiplier is not None:
            return float(self.dp.noise_multiplier)
        target, rounds = self.dp.target_epsilon, self.dp.rounds
        if target is None or rounds is None:  # excluded by RecordLevelDP's validation
            raise ConfigError("record-level DP needs a noise multiplier or a target epsilon")
        if schedule not in self._sigma:
            self._sigma[schedule] = privacy.calibrate_record_level(
                target_epsilon=target,
                delta=self.dp.delta,
                rounds=rounds,
                schedule=schedule,
                accountant=self.dp.accountant,
            )
        return self._sigma[schedule]

    def planned_receipt(self, data: Batch) -> RecordDPReceipt:
        """The receipt ``client_update(data)`` will return (check a budget before computing)."""
        n_units = num_units(data)
        sched = self.schedule(num_records=len(data), num_units=n_units)
        return RecordDPReceipt(
            noise_multiplier=self.noise_multiplier_for(sched),
            clip_norm=float(self.dp.clip_norm),
            unit=self.dp.unit,
            sample_rates=tuple(q for q, _ in sched),
            steps=tuple(k for _, k in sched),
            units=n_units,
            clipped_fraction=math.nan,
        )

    # -- one site's update -------------------------------------------------------------
    def client_update(self, state: torch.Tensor, data: Batch, gen: torch.Generator) -> ClientUpdate:
        planned = self.planned_receipt(data)
        oracle = _PrivateOracle(
            engine=self.engine,
            data=data,
            noise_multiplier=planned.noise_multiplier,
            clip_norm=planned.clip_norm,
            batch_size=self.config.batch_size,
            query_batch_size=self.config.query_batch_size,
            source=self.source,
        )
        # A shallow copy carries the oracle, so the wrapped algorithm itself is never
        # left holding one (and concurrent sites never share one).
        alg = copy.copy(self.inner)
        alg.oracle = oracle
        upd = alg.client_update(state, data, gen)
        taken = dict(oracle.counts)
        if taken != dict(planned.schedule):
            raise PrivacyError(
                f"record-level DP: the update took steps {taken} but the plan was "
                f"{dict(planned.schedule)}; refusing to release it"
            )
        receipt = RecordDPReceipt(
            noise_multiplier=planned.noise_multiplier,
            clip_norm=planned.clip_norm,
            unit=planned.unit,
            sample_rates=tuple(taken),
            steps=tuple(taken.values()),
            units=planned.units,
            clipped_fraction=(oracle.units_clipped / oracle.units_seen)
            if oracle.units_seen
            else 0.0,
        )
        return ClientUpdate(upd.vector, math.nan, upd.num_samples, receipt=receipt)


def num_units(data: Batch) -> int:
    """The privacy units in ``data``: its records, or its distinct persons."""
    if data.unit is None:
        return len(data)
    return int(torch.unique(data.unit).numel())


def record_level_rounds(config: Config, *, population: int | None) -> int:
    """The rounds a site's record-level σ is calibrated for.

    A site spends record-level privacy only in the rounds it joins. When every site joins
    every round (cross-silo: ``server.sampling = all``), or the population is unknown,
    that is ``server.rounds``. Under client sampling it is the participation bound the
    client-level calibration uses (:func:`secure_fml.rounds.participation_bound`: every
    site joins at most that many rounds with probability 0.99), so a writer sampled in a
    few of many rounds is not calibrated as if it joined all of them. A site that joins
    more spends more than the target unless its budget, ``privacy.record_max_epsilon``,
    stops it; the ledger always records what was spent.
    """
    rounds = config.server.rounds
    if population is None:
        return rounds
    sampling = config.server.sampling_config().accounting(population)
    return participation_bound(sampling, rounds=rounds)


def record_level_from_config(
    config: Config, *, population: int | None = None
) -> RecordLevelDP | None:
    """The :class:`RecordLevelDP` a run config asks for (None: no record-level DP).

    ``population``: the number of training sites, for the participation bound of
    :func:`record_level_rounds` (None: calibrate for every round).
    """
    pc = config.privacy
    if not pc.record_level:
        return None
    return RecordLevelDP(
        clip_norm=pc.record_clip_norm,
        noise_multiplier=pc.record_noise_multiplier,
        target_epsilon=pc.record_target_epsilon,
        rounds=(
            record_level_rounds(config, population=population)
            if pc.record_target_epsilon is not None
            else None
        ),
        delta=pc.delta,
        accountant=pc.accountant,
        unit=pc.unit_column or "record",
        insecure_seed=config.run.insecure_seed,
    )


def wrap_for_config(
    config: Config,
    algorithm: Algorithm,
    dataset: FederatedDataset,
    *,
    population: int | None = None,
) -> Algorithm:
    """``algorithm`` wrapped for record-level DP when the config asks for it.

    The dataset's person grouping must match ``privacy.unit_column``: records grouped
    by a person column are never silently treated as independent units. ``population``
    (training sites) sizes the calibration (:func:`record_level_rounds`).
    """
    dp = record_level_from_config(config, population=population)
    column = config.privacy.unit_column
    grouped = dataset.metadata.get("unit_column")
    has_units = any(c.units is not None for c in dataset.clients)
    if dp is None:
        return algorithm
    if config.algorithm.split is SplitMode.FIXED:
        raise ConfigError(
            "algorithm.split = fixed is not available under record-level DP: the "
            "support/query split is part of the private sampling; use algorithm.split = "
            "per-round"
        )
    if column is not None and (grouped != column or not has_units):
        raise ConfigError(
            f"privacy.unit_column={column!r} but the dataset's records are "
            + (f"grouped by {grouped!r}" if grouped else "not grouped by person")
            + " (load it with load_csv(..., unit_column=...))"
        )
    if column is None and has_units:
        raise ConfigError(
            f"the dataset groups records by {grouped!r}: set privacy.unit_column = {grouped!r}"
        )
    return RecordDPAlgorithm(algorithm, dp)


class RecordLevelLedger:
    """Charges sites' record-level receipts to a ledger and enforces the per-site budget.

    The coordinator's (or a site's own) bookkeeping: :meth:`admit` before a site
    computes (False once the site is at its budget: it stops contributing),
    :meth:`charge` after it computed and **before** its update is used.
    """

    def __init__(
        self,
        ledger: privacy.PrivacyLedger,
        *,
        delta: float,
        accountant: str = "rdp",
        max_epsilon: float | None = None,
        population: int | None = None,
    ) -> None:
        self.ledger = ledger
        self.delta = delta
        self.accountant = accountant
        self.budget = (
            None
            if max_epsilon is None
            else privacy.PrivacyBudget(max_epsilon=max_epsilon, delta=delta, accountant=accountant)
        )
        self.population = population
        self.exhausted: set[str] = set()

    def _check(self, event: privacy.RecordLevelRelease) -> None:
        if self.budget is not None:
            privacy.check_record_level_budget(
                self.ledger.record_accountant(event.site_id, self.accountant), event, self.budget
            )

    def admit(self, algorithm: Algorithm, *, round: int, site_id: str, data: Batch) -> bool:
        """Whether ``site_id`` may take part in ``round`` (its planned cost fits its budget)."""
        if not isinstance(algorithm, RecordDPAlgorithm):
            raise TypeError("record-level bookkeeping needs a RecordDPAlgorithm")
        if site_id in self.exhausted:
            return False
        try:
            self._check(algorithm.planned_receipt(data).event(round=round, site_id=site_id))
        except privacy.PrivacyBudgetExhausted as exc:
            log.warning("%s", exc)
            self.exhausted.add(site_id)
            if self.population is not None and len(self.exhausted) >= self.population:
                raise privacy.PrivacyBudgetExhausted(
                    f"every site has reached its record-level budget (last: {exc})"
                ) from exc
            return False
        return True

    def charge(self, receipt: RecordDPReceipt, *, round: int, site_id: str) -> None:
        """Durably record the site's release (raises when over budget: nothing recorded)."""
        event = receipt.event(round=round, site_id=site_id)
        self._check(event)
        self.ledger.record(event)

    def epsilons(self) -> dict[str, float]:
        return self.ledger.record_epsilons(delta=self.delta, accountant=self.accountant)

    def summary(self) -> dict[str, object]:
        eps = self.epsilons()
        return {
            "unit": "record",
            "delta": self.delta,
            "accountant": self.accountant,
            "epsilon_per_site": eps,
            "epsilon_worst_site": max(eps.values()) if eps else 0.0,
            "sites_at_budget": sorted(self.exhausted),
        }
