"""The quick and full audit suites."""

from __future__ import annotations

import enum

from audits._canary import CanaryConfig, CanaryEpsilonAudit, OneRunAudit
from audits._core import Audit, Control
from audits._inversion import GradientInversionAudit, InversionConfig
from audits._malicious import MaliciousServerAudit, MaliciousServerConfig
from audits._membership import MembershipConfig, MembershipInferenceAudit
from privacy import Adversary

__all__ = ["Suite", "build_suite"]


class Suite(enum.Enum):
    QUICK = "quick"
    FULL = "full"


def build_suite(
    suite: Suite,
    *,
    rounds: int | None = None,
    control: Control = Control.NONE,
    seed: int = 0,
    adversary: Adversary = Adversary.COORDINATOR,
) -> list[Audit]:
    """Audits for a suite. ``rounds`` overrides the training rounds of the trained audits;
    ``adversary`` is whose claim the canary audits test."""
    quick = suite is Suite.QUICK
    canary = CanaryConfig(
        num_canaries=500 if quick else 2000,
        rounds=rounds,
        control=control,
        norm_multiplier=30.0 if control is Control.CLIPPING_OFF else 1.0,
        seed=seed,
        adversary=adversary,
    )
    return [
        CanaryEpsilonAudit(config=canary),
        OneRunAudit(config=canary),
        MembershipInferenceAudit(
            config=MembershipConfig(
                num_models=4 if quick else 8,
                max_clients=24 if quick else 60,
                rounds=rounds,
                control=control,
                seed=seed,
            )
        ),
        GradientInversionAudit(
            config=InversionConfig(
                num_targets=1 if quick else 3,
                iterations=600 if quick else 1000,
                control=control,
                seed=seed,
            )
        ),
        MaliciousServerAudit(config=MaliciousServerConfig(control=control)),
    ]
