"""Malicious-server audit against the SecAgg state machines (``aggregation.run_protocol``).

Scenarios (each must end in a refused / aborted round; a completed round is a leak):

- ``model_inconsistency``: the target client gets model B, everyone else model A
  (Pasquini et al. CCS'22 gradient suppression needs exactly this);
- ``crafted_model``: every client gets a crafted model (trap weights / imprint
  module) while the server commits to the published model hash;
- ``both_shares``: at unmasking the server declares the live target dropped to
  some clients, to collect its pairwise-key shares next to its self-mask
  shares (which would unmask its individual input);
- ``both_shares_same_request``: one request lists the target alive and dropped.

The honest round must complete (otherwise the audit cannot tell an abort
caused by the attack from a broken protocol and says INCONCLUSIVE).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from aggregation import (
    InMemoryNetwork,
    Message,
    SecAggConfig,
    SecAggMode,
    Stage,
    UnmaskRequest,
    run_protocol,
)
from audits._core import Audit, AuditResult, AuditTarget, Control, Verdict
from privacy.errors import ConfigError, ProtocolError

__all__ = ["MaliciousServerAudit", "MaliciousServerConfig"]


@dataclass(frozen=True, kw_only=True)
class MaliciousServerConfig:
    num_clients: int = 8
    dimension: int = 16
    mode: SecAggMode = SecAggMode.SECAGG
    target: int = 0
    control: Control = Control.NONE

    def __post_init__(self) -> None:
        if self.num_clients < 4:
            raise ConfigError("num_clients must be >= 4")
        if not 0 <= self.target < self.num_clients:
            raise ConfigError("target must be a client index")
        if not isinstance(self.mode, SecAggMode):
            raise ConfigError("mode must be a SecAggMode")


def _outcome(fn: Callable[[], Any], target: int, *, attack: str) -> tuple[bool, bool, str]:
    """(aborted, leaked, reason) of one scripted round against client ``target``.

    A malicious server wins if the target's input ends up revealed on its own: for a
    model attack, the round completes with the target's input in the sum under a
    model the others did not see; for a share attack, the server ends up holding
    both kinds of the target's secrets. Aborting, or completing without the target
    (it was excluded), protects it.
    """
    try:
        _, stats = fn()
    except ProtocolError as exc:
        return True, False, f"{type(exc).__name__}: {exc}"
    server = stats.server
    if attack == "shares":
        both = len(server.kinds_released.get(target, set())) > 1
        return (
            False,
            both,
            "round completed"
            + (": the server holds both share kinds of the target" if both else " safely"),
        )
    inside = target in stats.survivors
    return (
        False,
        inside,
        "round completed"
        + (" with the target's input in the sum" if inside else " without the target (excluded)"),
    )


@dataclass(frozen=True, kw_only=True)
class MaliciousServerAudit(Audit):
    config: MaliciousServerConfig = field(default_factory=MaliciousServerConfig)
    name: str = "malicious_server"
    #: Scripted SecAgg rounds on synthetic inputs under the run's protocol: no data.
    retrains: ClassVar[bool] = False

    def run(self, target: AuditTarget) -> AuditResult:
        cfg = self.config
        n, t = cfg.num_clients, cfg.target
        mode = cfg.mode
        if target.config.secure_aggregation.protocol != "none":
            mode = SecAggMode(target.config.secure_aggregation.protocol)
        secagg_off = (
            cfg.control is Control.SECAGG_OFF or target.config.secure_aggregation.protocol == "none"
        )
        sac = SecAggConfig(num_clients=n, mode=mode)
        rng = np.random.default_rng(target.seed)
        xs = [rng.integers(0, 100, cfg.dimension).astype(np.int64) for _ in range(n)]
        honest = hashlib.sha256(b"published model").digest()
        evil = hashlib.sha256(b"crafted model").digest()

        class BothShares(InMemoryNetwork):
            """A server that tells clients the target dropped, to collect both its secrets."""

            def __init__(self, same_request: bool) -> None:
                super().__init__()
                self.same_request = same_request

            def to_client(self, stage: Stage, recipient: int, msg: Message) -> Message | None:
                delivered = super().to_client(stage, recipient, msg)
                if delivered is None or stage is not Stage.UNMASKING or recipient == t:
                    return delivered
                msg = delivered
                if not isinstance(msg, UnmaskRequest):
                    return msg
                if self.same_request:
                    return dataclasses.replace(msg, dropped=tuple(sorted({*msg.dropped, t})))
                if recipient % 2 == 0:  # half of the clients are told the target dropped
                    return dataclasses.replace(
                        msg,
                        survivors=tuple(s for s in msg.survivors if s != t),
                        dropped=tuple(sorted({*msg.dropped, t})),
                    )
                return msg

        scenarios: dict[str, Callable[[], Any]] = {
            "model_inconsistency": lambda: run_protocol(
                xs, config=sac, server_model_hash=honest, model_hashes={t: evil}
            ),
            "crafted_model": lambda: run_protocol(
                xs, config=sac, server_model_hash=honest, model_hashes=dict.fromkeys(range(n), evil)
            ),
            "both_shares": lambda: run_protocol(
                xs, config=sac, server_model_hash=honest, network=BothShares(False)
            ),
            "both_shares_same_request": lambda: run_protocol(
                xs, config=sac, server_model_hash=honest, network=BothShares(True)
            ),
        }
        honest_aborted, _, honest_why = _outcome(
            lambda: run_protocol(xs, config=sac, server_model_hash=honest), t, attack="model"
        )
        results = {
            name: _outcome(fn, t, attack="shares" if "shares" in name else "model")
            for name, fn in scenarios.items()
        }
        metrics: dict[str, Any] = {
            name: {"aborted": a, "leaked": leaked, "reason": why}
            for name, (a, leaked, why) in results.items()
        }
        metrics["honest_round"] = {"aborted": honest_aborted, "reason": honest_why}
        if secagg_off:
            verdict, summary = (
                Verdict.LEAK_FOUND,
                (
                    "secure aggregation is off: the server receives every client's update in "
                    "the clear, so model-inconsistency and crafted-model attacks need no protocol "
                    "break (the protocol itself, checked below, would have protected the target: "
                    f"{not any(leaked for _, leaked, _ in results.values())})"
                ),
            )
        elif honest_aborted:
            verdict, summary = Verdict.INCONCLUSIVE, f"the honest round aborted: {honest_why}"
        elif not any(leaked for _, leaked, _ in results.values()):
            verdict, summary = (
                Verdict.PASS,
                f"all {len(results)} malicious-server attacks left the target protected "
                "(the round aborted, or completed without exposing it)",
            )
        else:
            bad = [k for k, (_, leaked, _) in results.items() if leaked]
            verdict, summary = Verdict.LEAK_FOUND, f"the target was exposed under: {', '.join(bad)}"
        return AuditResult(
            audit=self.name,
            verdict=verdict,
            summary=summary,
            claimed_epsilon=target.claimed_epsilon,
            control=cfg.control,
            metrics=metrics,
            details={"num_clients": n, "mode": mode.value, "target": t},
        )
