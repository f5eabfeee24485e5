"""Canary clients: one instrumented training run, two audits.

Each of m canary clients owns a fixed random unit direction c_j (isotropic in
R^d) and returns ``norm_multiplier * C * c_j`` as its update whenever it takes
part. Canaries are extra clients of the run's own round engine
(:class:`CanaryClient` is a client pipeline with its local update replaced), so
they are sampled like real clients (Andrew et al. 2024) and their updates are
clipped, noised, encoded and aggregated by the code that ships. A canary is
*inserted* with probability ½ (Steinke et al. 2023); non-inserted canaries never
join and serve as the empirical null.

Observations (the attacker never uses which rounds a canary joined, which
would void the subsampling amplification the claim relies on):

- all iterates (the server's view under SecAgg): ``max_t cos(c_j, S_t)``
  over the released, noised round sums S_t;
- final model: ``cos(c_j, θ_0 - θ_T)`` (the server applies minus the update).

:class:`CanaryEpsilonAudit` fits Gaussians to the inserted and non-inserted
scores (Andrew et al.'s ε estimate) and gives a Clopper–Pearson lower bound at
a threshold chosen on held-out calibration canaries. :class:`OneRunAudit`
turns top/bottom guesses into Steinke et al.'s ε lower bound, with the number
of guesses chosen on the calibration canaries, never on the reported ones.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from audits._core import (
    Audit,
    AuditResult,
    AuditTarget,
    Control,
    Verdict,
    bound_verdict,
)
from audits._stats import (
    epsilon_two_gaussians,
    one_run_epsilon_lower_bound,
    threshold_epsilon_lower_bound,
)
from audits._training import dataset_for, train
from privacy.errors import ConfigError
from secure_fml.algorithms import ClientUpdate
from secure_fml.pipeline import ClientPipeline
from secure_fml.simulation import Simulation

__all__ = [
    "CanaryClient",
    "CanaryClients",
    "CanaryConfig",
    "CanaryEpsilonAudit",
    "CanaryExperiment",
    "OneRunAudit",
    "run_canary_experiment",
]

OBSERVATIONS = ("all_iterates", "final_model")


@dataclass(frozen=True, kw_only=True)
class CanaryConfig:
    """Canary instrumentation. ``seed`` draws directions and inclusion (test instrumentation)."""

    num_canaries: int = 1000
    inclusion_probability: float = 0.5
    calibration_fraction: float = 0.5
    significance: float = 0.05
    norm_multiplier: float = 1.0
    rounds: int | None = None  # None: the config's rounds
    control: Control = Control.NONE
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.num_canaries, int) or self.num_canaries < 8:
            raise ConfigError(f"num_canaries must be an integer >= 8, got {self.num_canaries!r}")
        for name in ("inclusion_probability", "calibration_fraction", "significance"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {v!r}")
        if not (math.isfinite(self.norm_multiplier) and self.norm_multiplier > 0):
            raise ConfigError(f"norm_multiplier must be > 0, got {self.norm_multiplier!r}")
        if self.rounds is not None and self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds!r}")
        if not isinstance(self.control, Control):
            raise ConfigError("control must be a Control")


class CanaryClient(ClientPipeline):
    """A canary: a client whose update is always ``norm * direction`` (see module doc).

    It is an ordinary client pipeline with its local update replaced, so its update
    is clipped, noised, encoded and aggregated exactly like a real one.
    """

    def __init__(self, base: ClientPipeline, *, direction: npt.NDArray[np.float32], norm: float):
        super().__init__(
            name=base.name,
            algorithm=base.algorithm,
            data=base.data,
            identity_key=base._identity,
            randomness=base._randomness,
        )
        self.direction = torch.from_numpy(np.asarray(direction, dtype=np.float32) * norm)
        self.joined = 0

    def local_update(self, state: torch.Tensor, round_: int) -> ClientUpdate:
        if state.numel() != self.direction.numel():
            raise ConfigError(
                f"canaries have dimension {self.direction.numel()}, the update {state.numel()}"
            )
        self.joined += 1
        return ClientUpdate(self.direction, 0.0, 1)


class CanaryClients:
    """The canaries of one run: inserted ones join the population; scores per round."""

    def __init__(
        self,
        *,
        directions: npt.NDArray[np.float32],
        inserted: npt.NDArray[np.bool_],
        norm: float,
    ) -> None:
        if directions.ndim != 2 or inserted.shape != (directions.shape[0],):
            raise ConfigError("directions must be (m, d) and inserted (m,)")
        self.directions = directions
        self.inserted = inserted
        self.norm = float(norm)
        m = directions.shape[0]
        self.max_cos = np.full(m, -np.inf)
        self.rounds = 0
        self.clients: dict[int, CanaryClient] = {}

    def names(self) -> dict[str, Callable[[Simulation, str], ClientPipeline]]:
        """Factories of the inserted canaries, by client name (non-inserted never join)."""

        def make(j: int) -> Callable[[Simulation, str], ClientPipeline]:
            def build(sim: Simulation, name: str) -> ClientPipeline:
                base = sim.client_pipeline(sim.split.train[0].client_id)
                base.name = name
                base._identity = sim._identity_key(name)
                c = CanaryClient(base, direction=self.directions[j], norm=self.norm)
                self.clients[j] = c
                return c

            return build

        return {f"__canary_{j}": make(int(j)) for j in np.flatnonzero(self.inserted)}

    @property
    def participations(self) -> npt.NDArray[np.int64]:
        out = np.zeros(self.directions.shape[0], dtype=np.int64)
        for j, c in self.clients.items():
            out[j] = c.joined
        return out

    def observe(self, sim: Simulation) -> None:
        """Score every canary against the round's released (noised) sum."""
        line = sim.history[-1] if sim.history else {}
        total = sim.engine.last_aggregate
        if line.get("status") != "complete" or total is None:
            return
        self.rounds += 1
        nrm = float(np.linalg.norm(total))
        if nrm > 0:
            cos = (self.directions @ total.astype(np.float32)) / nrm
            self.max_cos = np.maximum(self.max_cos, cos.astype(np.float64))


@dataclass(frozen=True)
class CanaryExperiment:
    """Scores of one canary run, and the calibration/audit split of the canaries."""

    inserted: npt.NDArray[np.bool_]
    calibration: npt.NDArray[np.bool_]
    scores: Mapping[str, npt.NDArray[np.float64]]
    dimension: int
    rounds: int
    claimed_epsilon: float | None
    control: Control
    participations: npt.NDArray[np.int64]
    details: Mapping[str, Any] = field(default_factory=dict)


def run_canary_experiment(target: AuditTarget, cfg: CanaryConfig) -> CanaryExperiment:
    """Train once with canaries; memoized on the target so both canary audits share it."""
    key = ("canary", cfg)
    cache = target.cache
    if key in cache:
        exp: CanaryExperiment = cache[key]
        return exp
    config = target.config
    ds = dataset_for(config, target.dataset)
    rng = np.random.default_rng([cfg.seed, 7])
    # The dimension is the packed state size; build the model once to learn it.
    dim = int(Simulation(config, dataset=ds).state.numel())
    m = cfg.num_canaries
    directions = rng.standard_normal((m, dim), dtype=np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    inserted = rng.random(m) < cfg.inclusion_probability
    calibration = rng.random(m) < cfg.calibration_fraction
    norm = cfg.norm_multiplier * config.privacy.clip_norm

    canaries = CanaryClients(directions=directions, inserted=inserted, norm=norm)
    run = train(
        config,
        ds,
        control=cfg.control,
        rounds=cfg.rounds,
        extra_clients=canaries.names(),
        after_round=canaries.observe,
    )
    delta_model = (run.initial_state - run.final_state).numpy().astype(np.float64)
    nrm = float(np.linalg.norm(delta_model))
    final_cos = (
        (directions @ delta_model.astype(np.float32)).astype(np.float64) / nrm
        if nrm > 0
        else np.zeros(m)
    )
    exp = CanaryExperiment(
        inserted=inserted,
        calibration=calibration,
        scores={"all_iterates": canaries.max_cos.copy(), "final_model": final_cos},
        dimension=dim,
        rounds=canaries.rounds,
        claimed_epsilon=run.claimed_epsilon
        if run.claimed_epsilon is not None
        else target.claimed_epsilon,
        control=cfg.control,
        participations=canaries.participations.copy(),
        details={
            "num_canaries": m,
            "inserted": int(inserted.sum()),
            "calibration": int(calibration.sum()),
            "canary_norm": norm,
            "mean_rounds_joined_by_inserted": float(canaries.participations[inserted].mean())
            if inserted.any()
            else 0.0,
        },
    )
    cache[key] = exp
    return exp


def _fit(x: npt.NDArray[np.float64]) -> tuple[float, float]:
    return float(np.mean(x)), max(float(np.std(x, ddof=1)), 1e-12)


def _hist_png(exp: CanaryExperiment, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, obs in zip(axes, OBSERVATIONS, strict=True):
        s = exp.scores[obs]
        ax.hist(s[~exp.inserted], bins=40, alpha=0.6, label="not inserted (null)", density=True)
        ax.hist(s[exp.inserted], bins=40, alpha=0.6, label="inserted", density=True)
        ax.set_title(f"{obs.replace('_', ' ')}")
        ax.set_xlabel("cosine(canary, observed)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


@dataclass(frozen=True, kw_only=True)
class CanaryEpsilonAudit(Audit):
    """Andrew et al. 2024 one-shot empirical ε, plus a Clopper–Pearson lower bound."""

    config: CanaryConfig = field(default_factory=CanaryConfig)
    name: str = "canary_epsilon"

    def run(self, target: AuditTarget) -> AuditResult:
        cfg = self.config
        exp = run_canary_experiment(target, cfg)
        delta = target.delta
        # Bonferroni over the two observation models.
        sig = cfg.significance / len(OBSERVATIONS)
        metrics: dict[str, Any] = {}
        lbs, ests = [], []
        for obs in OBSERVATIONS:
            s = exp.scores[obs]
            ins, outs = s[exp.inserted], s[~exp.inserted]
            mu1, s1 = _fit(ins)
            mu0, s0 = _fit(outs)
            est = epsilon_two_gaussians(mu0, s0, mu1, s1, delta=delta)
            # Threshold chosen on the calibration canaries only.
            cal, aud = exp.calibration, ~exp.calibration
            thr = _best_threshold(s[cal & exp.inserted], s[cal & ~exp.inserted], delta, sig)
            lb = threshold_epsilon_lower_bound(
                s[aud & exp.inserted],
                s[aud & ~exp.inserted],
                threshold=thr,
                delta=delta,
                significance=sig,
            )
            n_in, n_out = int((aud & exp.inserted).sum()), int((aud & ~exp.inserted).sum())
            ceiling = math.log(
                max(1e-300, 1 - _cp_hi(0, n_in, sig) - delta) / _cp_hi(0, n_out, sig)
            )
            metrics[obs] = {
                "epsilon_estimate": est,
                "epsilon_lower_bound": lb,
                "bound_ceiling": ceiling,
                "threshold": thr,
                "inserted_mean": mu1,
                "inserted_std": s1,
                "null_mean": mu0,
                "null_std": s0,
                "closed_form_null_std": 1 / math.sqrt(exp.dimension),
            }
            lbs.append((lb, ceiling))
            ests.append(est)
        lb = max(x for x, _ in lbs)
        ceiling = max(c for _, c in lbs)
        verdict, why = bound_verdict(lower_bound=lb, ceiling=ceiling, claimed=exp.claimed_epsilon)
        est = max(ests)
        if (
            verdict is not Verdict.LEAK_FOUND
            and exp.claimed_epsilon is not None
            and est > exp.claimed_epsilon
        ):
            why += f"; note: the ε estimate {est:.2f} exceeds the claim (an estimate, not a bound)"
        return AuditResult(
            audit=self.name,
            verdict=verdict,
            summary=why,
            claimed_epsilon=exp.claimed_epsilon,
            empirical_lower_bound=lb,
            empirical_estimate=est,
            confidence=1 - cfg.significance,
            control=cfg.control,
            metrics=metrics,
            details={**exp.details, "rounds": exp.rounds, "dimension": exp.dimension},
            figures={"canary_cosines": _hist_png(exp, "canary cosines")},
        )


def _cp_hi(k: int, n: int, sig: float) -> float:
    from audits._stats import clopper_pearson_interval

    return clopper_pearson_interval(k, max(n, 1), significance=sig / 2)[1]


def _best_threshold(
    ins: npt.NDArray[np.float64], outs: npt.NDArray[np.float64], delta: float, sig: float
) -> float:
    """The threshold maximising the bound on calibration scores (never the audited ones)."""
    cands = np.unique(np.concatenate([ins, outs]))
    if cands.size == 0:
        return math.inf
    best, best_t = -1.0, float(cands[-1])
    for t in cands[:: max(1, cands.size // 400)]:
        b = threshold_epsilon_lower_bound(
            ins, outs, threshold=float(t), delta=delta, significance=sig
        )
        if b > best:
            best, best_t = b, float(t)
    return best_t


@dataclass(frozen=True)
class OneRunGuess:
    num_guesses: int
    num_correct: int
    fraction: float


def one_run_guesses(
    scores: npt.NDArray[np.float64], inserted: npt.NDArray[np.bool_], fraction: float
) -> OneRunGuess:
    """Guess "in" for the top fraction/2 of scores and "out" for the bottom fraction/2."""
    n = scores.size
    k = max(1, min(n // 2, round(fraction * n / 2)))
    order = np.argsort(scores, kind="mergesort")
    top, bottom = order[n - k :], order[:k]
    correct = int(inserted[top].sum() + (~inserted[bottom]).sum())
    return OneRunGuess(num_guesses=2 * k, num_correct=correct, fraction=fraction)


def choose_fraction(
    scores: npt.NDArray[np.float64],
    inserted: npt.NDArray[np.bool_],
    *,
    delta: float,
    significance: float,
) -> float:
    """Guess fraction maximising the bound on *calibration* canaries."""
    best, best_f = -1.0, 1.0
    for f in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0):
        g = one_run_guesses(scores, inserted, f)
        b = one_run_epsilon_lower_bound(
            num_canaries=scores.size,
            num_guesses=g.num_guesses,
            num_correct=g.num_correct,
            delta=delta,
            significance=significance,
        )
        if b > best:
            best, best_f = b, f
    return best_f


@dataclass(frozen=True, kw_only=True)
class OneRunAudit(Audit):
    """Steinke, Nasr, Jagielski 2023: ε lower bound from a single training run."""

    config: CanaryConfig = field(default_factory=CanaryConfig)
    name: str = "one_run"

    def run(self, target: AuditTarget) -> AuditResult:
        cfg = self.config
        exp = run_canary_experiment(target, cfg)
        delta = target.delta
        sig = cfg.significance / len(OBSERVATIONS)
        cal, aud = exp.calibration, ~exp.calibration
        m_aud = int(aud.sum())
        metrics: dict[str, Any] = {}
        best_lb, best_ceiling = 0.0, 0.0
        for obs in OBSERVATIONS:
            s = exp.scores[obs]
            f = choose_fraction(s[cal], exp.inserted[cal], delta=delta, significance=sig)
            g = one_run_guesses(s[aud], exp.inserted[aud], f)
            lb = one_run_epsilon_lower_bound(
                num_canaries=m_aud,
                num_guesses=g.num_guesses,
                num_correct=g.num_correct,
                delta=delta,
                significance=sig,
            )
            ceiling = one_run_epsilon_lower_bound(
                num_canaries=m_aud,
                num_guesses=g.num_guesses,
                num_correct=g.num_guesses,
                delta=delta,
                significance=sig,
            )
            metrics[obs] = {
                "epsilon_lower_bound": lb,
                "bound_ceiling": ceiling,
                "guess_fraction": f,
                "guesses": g.num_guesses,
                "correct": g.num_correct,
                "audited_canaries": m_aud,
            }
            best_lb = max(best_lb, lb)
            best_ceiling = max(best_ceiling, ceiling)
        verdict, why = bound_verdict(
            lower_bound=best_lb, ceiling=best_ceiling, claimed=exp.claimed_epsilon
        )
        return AuditResult(
            audit=self.name,
            verdict=verdict,
            summary=why,
            claimed_epsilon=exp.claimed_epsilon,
            empirical_lower_bound=best_lb,
            confidence=1 - cfg.significance,
            control=cfg.control,
            metrics=metrics,
            details={**exp.details, "rounds": exp.rounds},
        )
