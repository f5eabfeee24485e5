"""Each audit fires on its positive control and stays below the claim on a correctly
noised mechanism (seeded: canaries and, in insecure test mode, the DP noise)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from audits import (
    AuditResult,
    AuditRunner,
    AuditTarget,
    CanaryConfig,
    CanaryEpsilonAudit,
    Control,
    GradientInversionAudit,
    InversionConfig,
    MaliciousServerAudit,
    MembershipConfig,
    MembershipInferenceAudit,
    OneRunAudit,
    Verdict,
    write_report,
)
from privacy.errors import ConfigError
from secure_fml.config import Config, config_from_dict


def canary_config(eps: float = 1.0) -> Config:
    return config_from_dict(
        {
            "data": {"preset": "synthetic"},
            "algorithm": {"name": "fomaml"},
            "server": {
                "rounds": 30,
                "sampling": "poisson",
                "sampling_rate": 0.1,
                "optimizer": "sgd",
                "lr": 1.0,
            },
            "privacy": {
                "enabled": True,
                "target_epsilon": eps,
                "clip_norm": 1.0,
            },
            "eval": {"every": 0},
            "run": {"insecure_seed": 3},
        }
    )


def run_canary(control: Control) -> list[AuditResult]:
    cc = CanaryConfig(
        num_canaries=1000,
        control=control,
        norm_multiplier=30.0 if control is Control.CLIPPING_OFF else 1.0,
        seed=5,
    )
    target = AuditTarget(config=canary_config())
    return AuditRunner([CanaryEpsilonAudit(config=cc), OneRunAudit(config=cc)]).run(target)


def test_canary_audits_stay_below_claim_on_noised_mechanism() -> None:
    for r in run_canary(Control.NONE):
        assert r.claimed_epsilon == pytest.approx(1.0, abs=0.02)
        assert r.empirical_lower_bound is not None
        assert r.empirical_lower_bound <= r.claimed_epsilon
        assert r.verdict is not Verdict.LEAK_FOUND
        assert not r.bound_exceeds_claim


@pytest.mark.parametrize("control", [Control.NOISE_OFF, Control.CLIPPING_OFF])
def test_canary_audits_fire_on_positive_controls(control: Control) -> None:
    for r in run_canary(control):
        assert r.verdict is Verdict.LEAK_FOUND, r.summary
        assert r.bound_exceeds_claim
        assert r.control is control


def test_canary_estimate_is_large_without_noise_and_moderate_with() -> None:
    noised = run_canary(Control.NONE)[0]
    broken = run_canary(Control.NOISE_OFF)[0]
    assert broken.empirical_estimate is not None and noised.empirical_estimate is not None
    assert broken.empirical_estimate > 10 * noised.empirical_estimate


def mia_config() -> Config:
    # Local training that memorises (10 epochs) so that the noise is what protects.
    return config_from_dict(
        {
            "data": {"preset": "synthetic"},
            "algorithm": {"name": "fedavg", "local_epochs": 10, "local_lr": 0.2},
            "server": {"rounds": 30, "sampling": "poisson", "sampling_rate": 0.3},
            "privacy": {
                "enabled": True,
                "target_epsilon": 0.5,
                "clip_norm": 1.0,
            },
            "eval": {"every": 0},
            "run": {"insecure_seed": 1},
        }
    )


@pytest.mark.parametrize("control", [Control.NONE, Control.NOISE_OFF])
def test_membership_inference_fires_only_without_noise(control: Control) -> None:
    r = MembershipInferenceAudit(
        config=MembershipConfig(num_models=4, max_clients=24, control=control)
    ).run(AuditTarget(config=mia_config()))
    assert r.claimed_epsilon is not None and r.empirical_lower_bound is not None
    rec = r.metrics["record_meta"]
    if control is Control.NONE:
        assert r.empirical_lower_bound <= r.claimed_epsilon
        assert r.verdict is not Verdict.LEAK_FOUND
    else:
        assert r.verdict is Verdict.LEAK_FOUND, r.summary
        assert rec["lira"]["auc"] > 0.7
    assert set(rec["lira"]) >= {"auc", "tpr_at_0.01_fpr", "tpr_at_0.001_fpr"}
    assert r.figures["mia_roc"].startswith(b"\x89PNG")


def inversion_target(protocol: str) -> AuditTarget:
    return AuditTarget(
        config=config_from_dict(
            {
                "data": {"preset": "synthetic"},
                "privacy": {"enabled": True, "noise_multiplier": 1.0, "clip_norm": 1.0},
                "secure_aggregation": {"protocol": protocol},
                "server": {"sampling": "poisson", "sampling_rate": 0.2},
            }
        )
    )


@pytest.mark.parametrize(
    ("protocol", "control", "expected"),
    [
        ("secagg", Control.NONE, Verdict.PASS),
        ("secagg", Control.SECAGG_OFF, Verdict.LEAK_FOUND),
        ("none", Control.NONE, Verdict.LEAK_FOUND),  # central DP: the server sees updates
    ],
)
def test_gradient_inversion_views(protocol: str, control: Control, expected: Verdict) -> None:
    cfg = InversionConfig(num_targets=1, iterations=200, control=control)
    r = GradientInversionAudit(config=cfg).run(inversion_target(protocol))
    assert r.verdict is expected, r.summary
    m = r.metrics
    gain = {v: m[v]["psnr_mean"] - m["baseline_mean_image_psnr"] for v in ("plain", "dp")}
    assert gain["plain"] > 20  # the plain update of the tabular MLP is inverted
    assert gain["dp"] < 0  # σ = 1 noise on a clipped update leaves nothing


def test_malicious_server_attacks_abort_and_secagg_off_fires() -> None:
    target = AuditTarget(
        config=config_from_dict(
            {"data": {"preset": "synthetic"}, "secure_aggregation": {"protocol": "secagg+"}}
        )
    )
    r = MaliciousServerAudit().run(target)
    assert r.verdict is Verdict.PASS, r.summary
    for name in ("model_inconsistency", "crafted_model", "both_shares", "both_shares_same_request"):
        assert r.metrics[name]["aborted"], name
    assert not r.metrics["honest_round"]["aborted"]
    off = MaliciousServerAudit(
        config=dataclasses.replace(MaliciousServerAudit().config, control=Control.SECAGG_OFF)
    ).run(target)
    assert off.verdict is Verdict.LEAK_FOUND


def test_configs_are_validated() -> None:
    with pytest.raises(ConfigError):
        CanaryConfig(num_canaries=2)
    with pytest.raises(ConfigError):
        MembershipConfig(num_models=1)
    with pytest.raises(ConfigError):
        InversionConfig(cohort=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CanaryConfig().num_canaries = 5  # type: ignore[misc]


def test_crashing_audit_is_inconclusive_and_report_renders(tmp_path: Path) -> None:
    # noise_off needs DP on: the audit raises, and the runner records INCONCLUSIVE.
    bad = OneRunAudit(config=CanaryConfig(num_canaries=16, control=Control.NOISE_OFF))
    [r] = AuditRunner([bad]).run(AuditTarget(config=Config()))
    assert r.verdict is Verdict.INCONCLUSIVE and "ConfigError" in r.summary
    jp, hp = write_report([r], tmp_path, {"suite": "test"})
    data = json.loads(jp.read_text())
    assert data["results"][0]["verdict"] == "inconclusive"
    assert data["bound_exceeds_claim"] is False
    assert "<table>" in hp.read_text()
