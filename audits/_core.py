"""Audit interface, verdicts, result records and the runner.

Shape after Google's dp_auditorium: each audit is a small object holding a
frozen, validated config; :class:`AuditRunner` runs a list of them against one
:class:`AuditTarget` (the deployed configuration, its data and its claimed ε)
and returns :class:`AuditResult` records that the report renders.

Verdict rules (one place, so every audit answers the same question,
"does the audited run leak more than the ε its ledger reports?"):

- ``LEAK_FOUND``: an empirical lower bound, valid at confidence 1 - β, exceeds
  the claimed ε (or the claimed trade-off curve is rejected); or, where
  nothing is claimed (DP off), a confident leak (a lower bound > 0, a
  recognisable reconstruction, a protocol that did not abort). Under a
  positive control this is the control firing, as it must.
- ``PASS``: the audit could have exceeded the claim (its ceiling is above the
  claim) and did not.
- ``INCONCLUSIVE``: the audit cannot reach the claimed ε with the evidence it
  has (e.g. too few canaries), so "no leak found" would mean nothing; and a
  positive control that did not fire (the audit is blind to that fault).
- ``ERROR``: the audit crashed or could not set up a valid test. Never
  "inconclusive", never "pass".

Exit codes (:func:`exit_code`, the release gate): 1 if any audit found a
violation or a positive control fired, else 2 if any audit errored, else 3 if
any was inconclusive, else 0 (every audit conclusive and clean).
"""

from __future__ import annotations

import enum
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from secure_fml.config import Config
from secure_fml.data import FederatedDataset

__all__ = [
    "Audit",
    "AuditExit",
    "AuditResult",
    "AuditRunner",
    "AuditTarget",
    "Control",
    "Verdict",
    "bound_verdict",
    "exit_code",
]

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    PASS = "pass"
    LEAK_FOUND = "leak_found"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


class AuditExit(enum.IntEnum):
    """Process exit status of an audit run (the release gate)."""

    CLEAN = 0
    VIOLATION = 1
    ERROR = 2
    INCONCLUSIVE = 3


def exit_code(results: Sequence[AuditResult]) -> AuditExit:
    """Violation (or a fired positive control) > error > inconclusive > clean."""
    verdicts = {r.verdict for r in results}
    if Verdict.LEAK_FOUND in verdicts:
        return AuditExit.VIOLATION
    if Verdict.ERROR in verdicts or not results:
        return AuditExit.ERROR
    if Verdict.INCONCLUSIVE in verdicts:
        return AuditExit.INCONCLUSIVE
    return AuditExit.CLEAN


class Control(enum.Enum):
    """Deliberate sabotage of the mechanism for positive controls.

    The claimed ε stays what the deployed configuration reports (the ledger is
    charged as usual); only the mechanism is broken, as a real bug would.
    """

    NONE = "none"
    NOISE_OFF = "noise_off"  # DP noise replaced by zeros
    CLIPPING_OFF = "clipping_off"  # client updates not clipped (canaries oversized)
    SECAGG_OFF = "secagg_off"  # the server sees individual updates


@dataclass(frozen=True, kw_only=True)
class AuditTarget:
    """What is audited: a run configuration, its data and the ε its ledger reports.

    ``claims`` is the audited run's per-adversary ε, read from its ledger
    (:func:`privacy.epsilon_by_adversary`), never recomputed from the config;
    None when auditing a configuration without a run, in which case each audit
    reads the claim from the ledger of the run it instruments. ``mechanism``
    replaces the default (today's simulation) with another mechanism under test
    (:class:`audits._mechanism.MechanismUnderTest`, e.g. the round engine).
    ``claimed_epsilon`` (legacy) fixes one number for every audit.
    """

    config: Config
    dataset: FederatedDataset | None = None
    claimed_epsilon: float | None = None
    claims: Any = None  # privacy.EpsilonByAdversary | None
    events: tuple[Any, ...] | None = None  # the audited run's ledger events
    mechanism: Any = None  # MechanismUnderTest | None
    seed: int = 0
    progress: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    #: Shared, memoized experiments (e.g. one canary run serves two audits).
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def delta(self) -> float:
        return self.config.privacy.delta

    def claim_for(self, adversary: Any) -> float | None:
        """The audited run's ε against ``adversary`` (None: no claim on record)."""
        if self.claims is not None:
            eps = float(self.claims[adversary].epsilon)
            return eps
        return self.claimed_epsilon

    def say(self, message: str) -> None:
        """Progress output on long work (the CLI prints it; tests stay quiet)."""
        log.info(message)
        if self.progress is not None:
            self.progress(message)


@dataclass(frozen=True)
class AuditResult:
    """One audit's record. ``metrics`` and ``details`` are JSON-serialisable."""

    audit: str
    verdict: Verdict
    summary: str
    claimed_epsilon: float | None
    empirical_lower_bound: float | None = None
    empirical_estimate: float | None = None
    confidence: float | None = None
    control: Control = Control.NONE
    metrics: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    #: PNG images, name -> bytes (embedded by the HTML report, not in JSON).
    figures: Mapping[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def bound_exceeds_claim(self) -> bool:
        """True when a confident lower bound exceeds a finite claim: a bug."""
        return (
            self.claimed_epsilon is not None
            and self.empirical_lower_bound is not None
            and self.empirical_lower_bound > self.claimed_epsilon
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "audit": self.audit,
            "verdict": self.verdict.value,
            "summary": self.summary,
            "claimed_epsilon": _num(self.claimed_epsilon),
            "empirical_lower_bound": _num(self.empirical_lower_bound),
            "empirical_estimate": _num(self.empirical_estimate),
            "confidence": self.confidence,
            "control": self.control.value,
            "bound_exceeds_claim": self.bound_exceeds_claim,
            "metrics": _jsonable(self.metrics),
            "details": _jsonable(self.details),
            "figures": sorted(self.figures),
            "seconds": round(self.seconds, 3),
        }


def _num(x: float | None) -> float | str | None:
    if x is None:
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if math.isnan(x):
        return "nan"
    return float(x)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, enum.Enum):
        return x.value
    if isinstance(x, bool) or x is None or isinstance(x, str | int):
        return x
    if isinstance(x, float):
        return _num(x)
    try:
        return _num(float(x))
    except (TypeError, ValueError):
        return str(x)


def bound_verdict(
    *,
    lower_bound: float,
    ceiling: float,
    claimed: float | None,
    control: Control = Control.NONE,
    rejected: bool | None = None,
) -> tuple[Verdict, str]:
    """The shared rule for audits that produce an ε lower bound (see module doc).

    ``rejected``: whether a test of the claimed trade-off curve itself rejected
    (f-DP); counts as a violation like a bound above the claim.
    """
    if claimed is None:
        if lower_bound > 0:
            return Verdict.LEAK_FOUND, (f"no DP claim, and the audit proves ε >= {lower_bound:.2f}")
        return Verdict.INCONCLUSIVE, "no DP claim and no provable leakage"
    if not math.isfinite(claimed):
        return Verdict.INCONCLUSIVE, "the run claims no finite ε against this adversary"
    violated = lower_bound > claimed or bool(rejected)
    if violated:
        why = (
            f"empirical lower bound {lower_bound:.2f} exceeds the claimed ε {claimed:.2f}"
            if lower_bound > claimed
            else f"the claimed privacy curve (ε = {claimed:.2f}) is rejected"
        )
        if control is not Control.NONE:
            return Verdict.LEAK_FOUND, f"positive control {control.value} fired: {why}"
        return Verdict.LEAK_FOUND, f"{why} (a bug)"
    if control is not Control.NONE:
        return Verdict.INCONCLUSIVE, (
            f"positive control {control.value} did not fire (bound {lower_bound:.2f} <= "
            f"claim {claimed:.2f}): this audit cannot see that fault"
        )
    if ceiling <= claimed:
        return Verdict.INCONCLUSIVE, (
            f"the bound could reach at most {ceiling:.2f} with this many canaries, "
            f"not the claimed ε {claimed:.2f}"
        )
    return Verdict.PASS, f"lower bound {lower_bound:.2f} <= claimed ε {claimed:.2f}"


class Audit(ABC):
    """One attack audit: a name, a frozen config, and ``run(target) -> AuditResult``.

    ``retrains``: the audit trains the mechanism again on the run's data (canaries,
    membership inference, inversion). A deployment's data stays at its sites, so
    such an audit cannot run on a deployment run directory.
    """

    name: str = "audit"
    retrains: ClassVar[bool] = True

    @abstractmethod
    def run(self, target: AuditTarget) -> AuditResult:
        """Run the attack against ``target`` and judge it."""


class AuditRunner:
    """Runs audits in order; an audit that raises becomes an ERROR record.

    A crashed audit must never read as PASS or INCONCLUSIVE, and must not hide
    the others' results.
    """

    def __init__(self, audits: Sequence[Audit]) -> None:
        self.audits = list(audits)

    def run(self, target: AuditTarget) -> list[AuditResult]:
        results: list[AuditResult] = []
        for i, audit in enumerate(self.audits, 1):
            target.say(f"[{i}/{len(self.audits)}] {audit.name}: started")
            t0 = time.perf_counter()
            try:
                res = audit.run(target)
            except Exception as exc:  # reported as a record, never swallowed silently
                log.exception("audit %s failed", audit.name)
                res = AuditResult(
                    audit=audit.name,
                    verdict=Verdict.ERROR,
                    summary=f"audit raised {type(exc).__name__}: {exc}",
                    claimed_epsilon=target.claimed_epsilon,
                    control=getattr(getattr(audit, "config", None), "control", Control.NONE),
                )
            elapsed = time.perf_counter() - t0
            res = _control_rule(res)
            target.say(
                f"[{i}/{len(self.audits)}] {audit.name}: {res.verdict.value} ({elapsed:.1f} s)"
            )
            results.append(_with_seconds(res, elapsed))
        return results


def _control_rule(res: AuditResult) -> AuditResult:
    """Under a positive control a pass means the audit is blind to the fault."""
    from dataclasses import replace

    if res.control is not Control.NONE and res.verdict is Verdict.PASS:
        return replace(
            res,
            verdict=Verdict.INCONCLUSIVE,
            summary=(
                f"positive control {res.control.value} did not fire: this audit cannot see "
                f"that fault ({res.summary})"
            ),
        )
    return res


def _with_seconds(res: AuditResult, seconds: float) -> AuditResult:
    from dataclasses import replace

    return replace(res, seconds=seconds)
