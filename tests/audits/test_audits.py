"""Each audit fires on its positive control and stays below the claim on a correctly
noised mechanism (seeded: canaries and, in insecure test mode, the DP noise)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from audits import (
    Audit,
    AuditExit,
    AuditResult,
    AuditRunner,
    AuditTarget,
    CanaryConfig,
    CanaryEpsilonAudit,
    Control,
    GaussianSumMechanism,
    GradientInversionAudit,
    InversionConfig,
    MaliciousServerAudit,
    MembershipConfig,
    MembershipInferenceAudit,
    OneRunAudit,
    Verdict,
    exit_code,
    write_report,
)
from privacy import Adversary
from privacy.errors import ConfigError
from secure_fml.config import Config, config_from_dict


def canary_config(noise_multiplier: float = 2.0) -> Config:
    return config_from_dict(
        {
            "data": {"preset": "synthetic"},
            "privacy": {"enabled": True, "noise_multiplier": noise_multiplier, "clip_norm": 1.0},
            "server": {"rounds": 4},
        }
    )


def synthetic(control: Control = Control.NONE, **kw: object) -> list[AuditResult]:
    """Canary audits on the closed-form mechanism (distributed noise inside SecAgg)."""
    mech = GaussianSumMechanism(
        dimension=2000, rounds=4, noise_multiplier=kw.pop("z", 2.0), distributed=True, seed=1
    )
    cc = CanaryConfig(num_canaries=1000, participations=1, control=control, seed=3, **kw)  # type: ignore[arg-type]
    target = AuditTarget(config=canary_config(), mechanism=mech)
    return AuditRunner([CanaryEpsilonAudit(config=cc), OneRunAudit(config=cc)]).run(target)


@pytest.mark.slow  # about 6 s: thousands of canary rounds
def test_canary_audits_pass_on_a_correctly_noised_mechanism() -> None:
    results = synthetic()
    for r in results:
        # The claim is the canaries' ε in the run's own ledger: one release at σ = 2
        # against the coordinator (RDP, δ = 1e-5), independently 2.1657.
        assert r.claimed_epsilon == pytest.approx(2.1657, abs=1e-3)
        assert r.details["claim_source"] == "instrumented run's ledger"
        assert r.empirical_lower_bound is not None
        assert r.empirical_lower_bound <= r.claimed_epsilon
        assert r.verdict is Verdict.PASS, r.summary
    assert exit_code(results) == AuditExit.CLEAN == 0


@pytest.mark.parametrize("control", [Control.NOISE_OFF, Control.CLIPPING_OFF])
def test_canary_audits_fire_on_positive_controls(control: Control) -> None:
    results = synthetic(control, norm_multiplier=30.0 if control is Control.CLIPPING_OFF else 1.0)
    for r in results:
        assert r.verdict is Verdict.LEAK_FOUND, r.summary
        assert r.control is control and "positive control" in r.summary
    assert exit_code(results) == AuditExit.VIOLATION == 1
    one_run = results[1].metrics["participation"]["fdp"]
    assert one_run["claimed_curve_rejected"] is True


def test_a_leak_without_a_dp_claim_is_a_leak() -> None:
    mech = GaussianSumMechanism(dimension=2000, rounds=4, noise_multiplier=None, seed=1)
    cfg = config_from_dict({"server": {"rounds": 4}})
    cc = CanaryConfig(num_canaries=400, participations=1, seed=3)
    results = AuditRunner([OneRunAudit(config=cc)]).run(AuditTarget(config=cfg, mechanism=mech))
    assert results[0].claimed_epsilon is None
    assert results[0].verdict is Verdict.LEAK_FOUND and "no DP claim" in results[0].summary
    assert exit_code(results) == 1


def test_claims_come_from_the_audited_runs_ledger() -> None:
    import privacy

    mech = GaussianSumMechanism(
        dimension=1000, rounds=4, noise_multiplier=2.0, distributed=True, seed=1
    )
    cfg = canary_config()
    # An audited run that claims less than one canary release costs: the instrumented
    # run cannot test it, which is an error, never a pass.
    s = privacy.Sampling.full(population=3)
    low = privacy.epsilon_by_adversary(
        [
            privacy.GaussianRelease.central(
                round=0,
                noise_multiplier=50.0,
                clip_norm=1.0,
                sampling=s,
                clients_sampled=3,
                clients_surviving=3,
                client_ids=["a", "b", "c"],
            )
        ],
        delta=1e-5,
    )
    cc = CanaryConfig(
        num_canaries=200, participations=1, seed=3, adversary=privacy.Adversary.OUTSIDE_OBSERVER
    )
    [r] = AuditRunner([OneRunAudit(config=cc)]).run(
        AuditTarget(config=cfg, mechanism=mech, claims=low)
    )
    assert r.verdict is Verdict.ERROR and "cannot test that claim" in r.summary
    # Central noise claims nothing against the coordinator: inconclusive, not a pass.
    central = GaussianSumMechanism(dimension=1000, rounds=4, noise_multiplier=2.0, seed=1)
    [r] = AuditRunner([OneRunAudit(config=CanaryConfig(num_canaries=200, participations=1))]).run(
        AuditTarget(config=cfg, mechanism=central)
    )
    assert r.verdict is Verdict.INCONCLUSIVE and "no finite" in r.summary
    assert exit_code([r]) == AuditExit.INCONCLUSIVE == 3


@pytest.mark.slow
def test_epsilon_8_is_refutable_with_ten_thousand_canaries() -> None:
    """Issue 12: 1,000 canaries cap the Steinke bound near 5.8; 10^4 cheap canary clients and
    the f-DP analysis refute a claim of ε = 8 when the noise is off, and stay below it on."""
    import privacy

    z = privacy.plan(
        target_epsilon=8.0,
        delta=1e-5,
        rounds=20,
        sampling=privacy.Sampling.full(population=10),
        participations=1,
    ).noise_multiplier
    out = {}
    for control in (Control.NONE, Control.NOISE_OFF):
        mech = GaussianSumMechanism(
            dimension=4000, rounds=20, noise_multiplier=z, distributed=True, seed=1
        )
        cc = CanaryConfig(num_canaries=10_000, participations=1, control=control, seed=3)
        [r] = AuditRunner([OneRunAudit(config=cc)]).run(
            AuditTarget(config=canary_config(z), mechanism=mech)
        )
        out[control] = r
    on, off = out[Control.NONE], out[Control.NOISE_OFF]
    assert on.claimed_epsilon == pytest.approx(8.0, abs=0.05)
    assert on.verdict is Verdict.PASS and on.empirical_lower_bound < 8.0
    assert off.verdict is Verdict.LEAK_FOUND and off.empirical_lower_bound > 8.0


@pytest.mark.slow
def test_canary_audits_through_the_simulation_fire_on_noise_off() -> None:
    cfg = config_from_dict(
        {
            "algorithm": {"name": "fomaml"},
            "server": {
                "rounds": 6,
                "sampling": "poisson",
                "sampling_rate": 0.1,
                "optimizer": "sgd",
                "lr": 1.0,
            },
            "privacy": {
                "enabled": True,
                "noise_multiplier": 3.0,
                "clip_norm": 1.0,
            },
            "eval": {"every": 0},
            "run": {"insecure_seed": 3},
        }
    )
    for control, expected in (
        (Control.NONE, {Verdict.PASS, Verdict.INCONCLUSIVE}),
        (Control.NOISE_OFF, {Verdict.LEAK_FOUND}),
    ):
        cc = CanaryConfig(
            num_canaries=400,
            participations=2,
            control=control,
            seed=5,
            adversary=Adversary.OUTSIDE_OBSERVER,
        )
        results = AuditRunner([OneRunAudit(config=cc)]).run(AuditTarget(config=cfg))
        assert results[0].verdict in expected, results[0].summary


@pytest.mark.slow
def test_noise_off_on_the_real_ddgauss_secagg_path_exits_1() -> None:
    """The positive control as an injected fault on the real path: each client's discrete
    Gaussian share dropped inside secure aggregation while the ledger records it."""
    cfg = config_from_dict(
        {
            "algorithm": {"name": "fomaml"},
            "server": {"rounds": 3, "sampling": "all", "optimizer": "sgd", "lr": 1.0},
            "privacy": {"enabled": True, "noise_multiplier": 8.0, "clip_norm": 1.0},
            "secure_aggregation": {"protocol": "secagg", "min_survivor_fraction": 1.0},
            "data": {"preset": "synthetic", "options": {"num_clients": 12}},
            "eval": {"every": 0},
            "run": {"insecure_seed": 3},
        }
    )
    verdicts = {}
    for control in (Control.NONE, Control.NOISE_OFF):
        cc = CanaryConfig(num_canaries=48, participations=1, control=control, seed=5)
        results = AuditRunner([OneRunAudit(config=cc)]).run(AuditTarget(config=cfg))
        verdicts[control] = (results[0], exit_code(results))
    on, off = verdicts[Control.NONE], verdicts[Control.NOISE_OFF]
    assert off[0].verdict is Verdict.LEAK_FOUND, off[0].summary
    assert off[1] == 1
    assert on[0].verdict is not Verdict.LEAK_FOUND, on[0].summary
    assert on[0].details["curve"] == "privacy profile"  # a discrete Gaussian claim


def mia_config() -> Config:
    # Local training that memorises (10 epochs) so that the noise is what protects.
    return config_from_dict(
        {
            "data": {"preset": "synthetic"},
            "algorithm": {"name": "fedavg", "local_epochs": 10, "local_lr": 0.2},
            "server": {"rounds": 30, "sampling": "poisson", "sampling_rate": 0.3},
            # The claim a model-based attack tests is the per-client ε against an outside
            # observer from the ledger (no amplification: the sample is published), so the
            # noise is sized for that claim to be small (≈ 0.3).
            "privacy": {
                "enabled": True,
                "noise_multiplier": 60.0,
                "clip_norm": 1.0,
            },
            "eval": {"every": 0},
            "run": {"insecure_seed": 1},
        }
    )


@pytest.mark.slow  # ~3 s each: shadow models are trained
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


class _Crashes(Audit):
    name = "crashes"

    def run(self, target: AuditTarget) -> AuditResult:
        raise RuntimeError("boom")


def test_a_crashing_audit_is_an_error_exit_2_and_the_report_renders(tmp_path: Path) -> None:
    [r] = AuditRunner([_Crashes()]).run(AuditTarget(config=Config()))
    assert r.verdict is Verdict.ERROR and "RuntimeError: boom" in r.summary
    assert exit_code([r]) == AuditExit.ERROR == 2
    # An error is never hidden by a clean audit beside it; a violation outranks it.
    clean = AuditResult(audit="ok", verdict=Verdict.PASS, summary="", claimed_epsilon=1.0)
    leak = AuditResult(audit="bad", verdict=Verdict.LEAK_FOUND, summary="", claimed_epsilon=1.0)
    assert exit_code([clean, r]) == 2 and exit_code([r, leak]) == 1 and exit_code([]) == 2
    jp, hp = write_report([r], tmp_path, {"suite": "test"})
    data = json.loads(jp.read_text())
    assert data["results"][0]["verdict"] == "error" and data["exit_code"] == 2
    assert "<table>" in hp.read_text()


def test_a_positive_control_that_does_not_fire_is_inconclusive() -> None:
    class _Blind(Audit):
        name = "blind"

        def run(self, target: AuditTarget) -> AuditResult:
            return AuditResult(
                audit=self.name,
                verdict=Verdict.PASS,
                summary="nothing seen",
                claimed_epsilon=1.0,
                control=Control.NOISE_OFF,
            )

    [r] = AuditRunner([_Blind()]).run(AuditTarget(config=Config()))
    assert r.verdict is Verdict.INCONCLUSIVE and "did not fire" in r.summary
    assert exit_code([r]) == 3
