"""A site's own privacy policy: what it requires of every round, whatever the coordinator says.

THREAT_MODEL.md, adversary 3: a malicious coordinator may lie about every
parameter of a round (noise, clip, scale, modulus, threshold, roster). A site
therefore never takes its privacy parameters on trust. Its :class:`SitePolicy`
(the ``[policy]`` table of its own ``site.toml``) states

- the noise it demands: ``min_noise_multiplier`` (sigma_min), computed by the site
  itself against the coordinator: the noise of the *honest* survivors only, with
  the fewest survivors and the most colluders its own secure-aggregation policy
  allows (``min_survivor_fraction`` / ``min_survivors`` / ``max_corrupt_fraction``),
  relative to the sensitivity it computes itself (clip norm, fixed-point scale,
  rounding);
- its clip-norm, noise, quantization (wrap probability) and model bounds;
- its secure-aggregation policy (:class:`aggregation.ClientPolicy`): the (k, t),
  modulus, survivor and signature counts every session must meet;
- the roster it accepts (at least ``min_peers`` distinct names and keys);
- the protocols it accepts (the plain protocol trusts the coordinator with each
  update and is refused unless listed);
- its own budget: ``max_epsilon`` at ``delta`` against the coordinator (no
  amplification), and ``max_rounds``;
- its record-level (patient-level) DP, run inside its own local training
  (``record_clip_norm``, ``record_noise_multiplier`` or ``record_max_epsilon`` over
  ``max_rounds`` at ``delta``, ``unit_column``): see :meth:`SitePolicy.record_sigma`.

**The property** (tested over arbitrary round starts in
``tests/deploy/test_site_policy.py``): a site releases an update only for a round
whose privacy it computed itself from its own policy -- the noise multiplier of
:meth:`SitePolicy.admit` is at least ``min_noise_multiplier`` for the sum of its
policy's minimum honest survivors, and that figure (not the coordinator's) is what
its own ledger records. Everything else is refused with a typed error
(:class:`~privacy.errors.PolicyViolation`) before anything is computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

import privacy
from aggregation import DISCRETE_GAUSSIAN_MAX_SIGMA, ClientPolicy
from privacy import (
    DistributedDiscreteGaussianRelease,
    GaussianRelease,
    PrivacyBudget,
    Sampling,
    rounded_l2_norm_bound,
)
from privacy.errors import ConfigError, PolicyViolation
from secure_fml.messages import AggregationProtocol, ClientNoise, RecordLevelRequest, RoundStart
from secure_fml.record_dp import unsupported_reason

__all__ = ["AdmittedRound", "SitePolicy", "policy_from_dict"]

_PROTOCOLS = {"plain": AggregationProtocol.PLAIN, "secagg": AggregationProtocol.SECAGG,
              "secagg+": AggregationProtocol.SECAGG_PLUS}  # fmt: skip


def _number(name: str, v: Any, *, low: float, high: float = math.inf, strict: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigError(f"policy.{name} must be a finite number, got {v!r}")
    if (v <= low if strict else v < low) or v > high:
        op = ">" if strict else ">="
        raise ConfigError(f"policy.{name} must be {op} {low:g} and <= {high:g}, got {v!r}")
    return float(v)


def _integer(name: str, v: Any, *, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"policy.{name} must be an integer >= {low}, got {v!r}")
    return v


@dataclass(frozen=True, kw_only=True)
class AdmittedRound:
    """What a site computed itself about a round it accepted (never sent)."""

    round: int
    #: Peers in the roster, and the honest inputs every revealed sum contains (own policy).
    peers: int
    honest_survivors: int
    #: Noise multiplier against the coordinator, from the site's own numbers (None: no noise).
    noise_multiplier: float | None
    #: The privacy event the site records in its own ledger before it releases (None: no DP).
    event: GaussianRelease | DistributedDiscreteGaussianRelease | None


@dataclass(frozen=True, kw_only=True)
class SitePolicy:
    """A site's own requirements of every round (see the module docstring).

    All fields are keyword-only and validated here; the defaults are conservative
    (noise required, SecAgg only, sigma_min 0.5, at most 5% colluders).
    """

    #: Refuse rounds without DP noise added by the site itself.
    require_noise: bool = True
    #: sigma_min: the whole round's noise multiplier against the coordinator.
    min_noise_multiplier: float = 0.5
    #: A larger multiplier is refused too (it only destroys the model; 1e6 is an attack
    #: on the site's sampler, not a privacy gain).
    max_noise_multiplier: float = 1e3
    max_clip_norm: float = 10.0
    #: Largest probability the site accepts that the modular sum wraps around.
    max_wrap_probability: float = 1e-6
    #: Largest |value| of a global-model coordinate the site trains on.
    max_model_abs: float = 1e6
    #: Fewest distinct participants (names and identity keys) in a roster.
    min_peers: int = 3
    protocols: tuple[str, ...] = ("secagg", "secagg+")
    # -- the site's secure-aggregation policy (aggregation.ClientPolicy) --------------
    max_dropout_fraction: float = 0.2
    max_corrupt_fraction: float = 0.05
    min_survivor_fraction: float = 0.66
    min_survivors: int = 2
    security_bits: int = 40
    correctness_bits: int = 20
    max_attempts_log2: int = 20
    # -- the site's own budget --------------------------------------------------------
    #: Stop contributing once the next release would exceed this epsilon against the
    #: coordinator (None: no budget, but the ledger is still kept).
    max_epsilon: float | None = None
    delta: float = 1e-5
    #: Contribute to at most this many rounds (None: no limit).
    max_rounds: int | None = None
    # -- record-level (patient-level) DP inside the site's own training ----------------
    #: Per-unit clip norm C_r of the site's DP-SGD (None: no record-level DP; a round
    #: that asks for it is refused).
    record_clip_norm: float | None = None
    #: The least sigma the site's DP-SGD runs with; unset, calibrated from
    #: ``record_max_epsilon`` over ``max_rounds`` at ``delta`` for the site's own size.
    record_noise_multiplier: float | None = None
    #: The site's own record-level budget: it stops contributing before exceeding it.
    record_max_epsilon: float | None = None
    #: The person column of the site's data (None: every record is a unit).
    unit_column: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.require_noise, bool):
            raise ConfigError("policy.require_noise must be true or false")
        _number("min_noise_multiplier", self.min_noise_multiplier, low=0.0)
        _number("max_noise_multiplier", self.max_noise_multiplier, low=self.min_noise_multiplier)
        _number("max_clip_norm", self.max_clip_norm, low=0.0)
        _number("max_wrap_probability", self.max_wrap_probability, low=0.0, high=0.01)
        _number("max_model_abs", self.max_model_abs, low=0.0)
        _integer("min_peers", self.min_peers, low=3)
        protocols = tuple(self.protocols)
        if not protocols or not all(p in _PROTOCOLS for p in protocols):
            raise ConfigError(
                f"policy.protocols must list some of {', '.join(_PROTOCOLS)}, got {protocols!r}"
            )
        object.__setattr__(self, "protocols", protocols)
        _number("delta", self.delta, low=0.0, high=0.1)
        if self.max_epsilon is not None:
            _number("max_epsilon", self.max_epsilon, low=0.0)
            if not self.require_noise:
                raise ConfigError("policy.max_epsilon needs policy.require_noise = true")
        if self.max_rounds is not None:
            _integer("max_rounds", self.max_rounds, low=1)
        self._check_record_level()
        try:
            self.secagg_policy()
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"policy: {e}") from None

    def _check_record_level(self) -> None:
        on = self.record_clip_norm is not None
        if not on:
            for name in ("record_noise_multiplier", "record_max_epsilon", "unit_column"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"policy.{name} needs policy.record_clip_norm")
            return
        _number("record_clip_norm", self.record_clip_norm, low=0.0)
        if self.record_noise_multiplier is not None:
            _number(
                "record_noise_multiplier",
                self.record_noise_multiplier,
                low=0.0,
                high=self.max_noise_multiplier,
            )
        if self.record_max_epsilon is not None:
            _number("record_max_epsilon", self.record_max_epsilon, low=0.0)
        if self.record_noise_multiplier is None and (
            self.record_max_epsilon is None or self.max_rounds is None
        ):
            raise ConfigError(
                "policy.record_clip_norm: set policy.record_noise_multiplier, or "
                "policy.record_max_epsilon and policy.max_rounds to calibrate it"
            )
        if self.unit_column is not None and (
            not isinstance(self.unit_column, str) or not self.unit_column
        ):
            raise ConfigError("policy.unit_column must be a non-empty string")

    # ------------------------------------------------------------------ derived

    @property
    def record_level(self) -> bool:
        """This site runs record-level DP-SGD in its local training."""
        return self.record_clip_norm is not None

    @property
    def record_unit(self) -> str:
        """The privacy unit of this site's record-level receipts."""
        return self.unit_column or "record"

    def record_budget(self) -> PrivacyBudget | None:
        if self.record_max_epsilon is None:
            return None
        return PrivacyBudget(
            max_epsilon=self.record_max_epsilon, delta=self.delta, accountant="rdp"
        )

    def secagg_policy(self) -> ClientPolicy:
        """The site's secure-aggregation policy: every session is checked against it."""
        return ClientPolicy(
            max_dropout_fraction=self.max_dropout_fraction,
            max_corrupt_fraction=self.max_corrupt_fraction,
            security_bits=self.security_bits,
            correctness_bits=self.correctness_bits,
            min_survivor_fraction=self.min_survivor_fraction,
            min_survivors=self.min_survivors,
            max_attempts_log2=self.max_attempts_log2,
        )

    def budget(self) -> PrivacyBudget | None:
        if self.max_epsilon is None:
            return None
        return PrivacyBudget(max_epsilon=self.max_epsilon, delta=self.delta, accountant="rdp")

    def describe(self) -> str:
        """One line for the site's start-up log."""
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))

    # ------------------------------------------------------------------ the check

    def admit(self, msg: RoundStart, *, update_dimension: int) -> AdmittedRound:
        """Check ``msg`` against this policy; the site's own view of the round, or
        :class:`PolicyViolation` naming the first rule it breaks.

        ``update_dimension``: the length of the vector the site would encode (its
        model's dimension plus the round's extra coordinates).
        """
        s = msg.settings
        n = len(msg.peers)
        allowed = {_PROTOCOLS[p] for p in self.protocols}
        if s.protocol not in allowed:
            raise PolicyViolation(
                f"protocol {s.protocol.value!r} is not in this site's policy "
                f"({', '.join(self.protocols)})"
            )
        if n < self.min_peers:
            raise PolicyViolation(
                f"roster of {n} participants; this site's policy requires >= {self.min_peers}"
            )
        m = msg.model
        if m.size and float(np.max(np.abs(m))) > self.max_model_abs:
            raise PolicyViolation(
                f"global model has a coordinate beyond +-{self.max_model_abs:g} "
                "(policy.max_model_abs)"
            )
        if s.clip_norm is not None and s.clip_norm > self.max_clip_norm:
            raise PolicyViolation(
                f"clip norm {s.clip_norm:g} exceeds this site's maximum {self.max_clip_norm:g}"
            )
        if s.protocol.secure and s.wrap_probability > self.max_wrap_probability:
            raise PolicyViolation(
                f"wrap probability {s.wrap_probability:g} exceeds this site's maximum "
                f"{self.max_wrap_probability:g}"
            )
        pol = self.secagg_policy()
        if s.secagg is not None:
            c = s.secagg
            if c.max_corrupt_fraction < self.max_corrupt_fraction:
                raise PolicyViolation(
                    f"round assumes {c.max_corrupt_fraction:g} of colluders; this site assumes "
                    f"{self.max_corrupt_fraction:g}"
                )
            if c.max_dropout_fraction > self.max_dropout_fraction:
                raise PolicyViolation(
                    f"round tolerates a dropout fraction of {c.max_dropout_fraction:g}; this "
                    f"site tolerates {self.max_dropout_fraction:g}"
                )
            # (k, t) and the modulus against the site's own policy (the session checks
            # the same again, and every survivor and signature count, stage by stage).
            pol.check(n, c.k, c.t, c.modulus_bits)
            honest = pol.honest_in_sum(n)
            colluders = pol.corrupt(n)
            survivors = pol.dp_survivors(n)
        else:
            honest, colluders, survivors = 1, 0, 1  # plain: the coordinator sees each update
        if s.weighted and s.noise is not ClientNoise.NONE:
            raise PolicyViolation(
                "a weighted round multiplies the clipped update by its sample count: the "
                "noise would not cover the sensitivity"
            )
        if s.noise is ClientNoise.NONE:
            if self.require_noise:
                raise PolicyViolation("round without DP noise; this site's policy requires noise")
            return AdmittedRound(
                round=msg.round, peers=n, honest_survivors=honest, noise_multiplier=None, event=None
            )
        if s.clip_norm is None:
            raise PolicyViolation("a noised round without a clip norm bounds nothing")
        if s.noise is ClientNoise.DISCRETE_GAUSSIAN:
            assert s.scale is not None
            if s.noise_std > DISCRETE_GAUSSIAN_MAX_SIGMA:
                raise PolicyViolation(
                    f"integer noise std {s.noise_std:g} is beyond the exact sampler's range"
                )
            # Sensitivity in the integer domain after unconditional stochastic rounding:
            # C * scale + sqrt(d) (the term a tiny scale inflates).
            sens = rounded_l2_norm_bound(
                l2_norm=s.clip_norm * s.scale, beta=0.0, dimension=update_dimension
            )
            z = math.sqrt(honest) * s.noise_std / sens
        else:
            z = math.sqrt(honest) * s.noise_std / s.clip_norm
        if not z >= self.min_noise_multiplier:
            raise PolicyViolation(
                f"round noise gives a noise multiplier of {z:.4g} against the coordinator "
                f"({honest} honest survivor(s) under this site's policy); this site requires "
                f">= {self.min_noise_multiplier:g}"
            )
        if z > self.max_noise_multiplier:
            raise PolicyViolation(
                f"round noise multiplier {z:.4g} exceeds this site's maximum "
                f"{self.max_noise_multiplier:g}"
            )
        event: GaussianRelease | DistributedDiscreteGaussianRelease
        if s.noise is ClientNoise.DISCRETE_GAUSSIAN:
            assert s.scale is not None
            event = DistributedDiscreteGaussianRelease(
                round=msg.round,
                local_stddev=s.noise_std,
                scale=s.scale,
                clip_norm=s.clip_norm,
                beta=0.0,
                dimension=update_dimension,
                sampling_mode=Sampling.full(population=n).mode,
                sample_rate=1.0,
                population=n,
                clients_sampled=n,
                clients_surviving=survivors,
                min_survivors=survivors,
                assumed_colluding_clients=colluders,
                secure_aggregation=True,
            )
        else:
            event = GaussianRelease.distributed(
                round=msg.round,
                per_client_noise_std=s.noise_std,
                clip_norm=s.clip_norm,
                min_survivors=survivors,
                sampling=Sampling.full(population=n),
                clients_sampled=n,
                clients_surviving=survivors,
                target_noise_multiplier=self.min_noise_multiplier,
                assumed_colluding_clients=colluders,
                per_client_count_stddev=s.bit_noise_std,
                secure_aggregation=s.protocol.secure,
            )
        return AdmittedRound(
            round=msg.round, peers=n, honest_survivors=honest, noise_multiplier=z, event=event
        )

    def record_sigma(
        self,
        request: RecordLevelRequest | None,
        *,
        algorithm: str,
        schedule: tuple[tuple[float, int], ...],
    ) -> float | None:
        """The sigma this site's DP-SGD runs with in a round that asks for ``request``
        (None: no record-level DP), or :class:`PolicyViolation`.

        The site's own sigma is ``record_noise_multiplier`` or, unset, calibrated for
        its ``schedule`` (its size, its algorithm) so that ``max_rounds`` rounds cost at
        most ``record_max_epsilon`` at ``delta``. A request for less noise than that, for
        another unit or algorithm, for an algorithm without a per-record sensitivity
        bound, or for no record-level DP at all, is refused; a request for more noise
        (up to ``max_noise_multiplier``) is honoured -- the coordinator never lowers it.
        """
        if not self.record_level:
            if request is not None:
                raise PolicyViolation(
                    "round asks for record-level DP; this site's policy does not run it "
                    "(policy.record_clip_norm)"
                )
            return None
        if request is None:
            raise PolicyViolation(
                "round without record-level DP; this site's policy requires it for its records"
            )
        reason = unsupported_reason(request.algorithm)
        if reason is not None:
            raise PolicyViolation(f"round refused: {reason}")
        if request.algorithm != algorithm:
            raise PolicyViolation(
                f"round runs algorithm {request.algorithm!r}; this site trains with {algorithm!r}"
            )
        if request.unit not in ("record", self.record_unit):
            raise PolicyViolation(
                f"round protects unit {request.unit!r}; this site's unit is {self.record_unit!r}"
            )
        own = self._own_record_sigma(schedule)
        if request.noise_multiplier is not None:
            asked = float(request.noise_multiplier)
        else:
            assert request.target_epsilon is not None and request.rounds is not None
            asked = privacy.calibrate_record_level(
                target_epsilon=request.target_epsilon,
                delta=request.delta,
                rounds=request.rounds,
                schedule=schedule,
            )
        if not asked >= own:
            raise PolicyViolation(
                f"round asks for a record-level noise multiplier of {asked:.4g}; this site's "
                f"policy requires >= {own:.4g}"
            )
        if asked > self.max_noise_multiplier:
            raise PolicyViolation(
                f"record-level noise multiplier {asked:.4g} exceeds this site's maximum "
                f"{self.max_noise_multiplier:g}"
            )
        return asked

    def _own_record_sigma(self, schedule: tuple[tuple[float, int], ...]) -> float:
        if self.record_noise_multiplier is not None:
            return float(self.record_noise_multiplier)
        assert self.record_max_epsilon is not None and self.max_rounds is not None
        return privacy.calibrate_record_level(
            target_epsilon=self.record_max_epsilon,
            delta=self.delta,
            rounds=self.max_rounds,
            schedule=schedule,
        )


def policy_from_dict(raw: Mapping[str, Any] | None) -> SitePolicy:
    """The ``[policy]`` table of a site config (absent: the defaults), validated."""
    if raw is None:
        return SitePolicy()
    known = {f.name for f in fields(SitePolicy)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"policy.{unknown[0]} is not a known field (valid: {', '.join(sorted(known))})"
        )
    values = dict(raw)
    if "protocols" in values:
        if not isinstance(values["protocols"], list | tuple):
            raise ConfigError("policy.protocols must be a list of protocol names")
        values["protocols"] = tuple(values["protocols"])
    try:
        return SitePolicy(**values)
    except TypeError as e:
        raise ConfigError(f"policy: {e}") from None
