"""Coordinator + sites over both transports: the same tests in-process and over mTLS gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import privacy
from privacy.errors import ConfigError
from secure_fml.checkpoint import load_checkpoint
from secure_fml.deploy import Site
from tests.deploy import _harness as H

TRANSPORTS = ["inprocess", "grpc"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), (*H.SITES, "mallory"))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_dp_secagg_rounds_complete_and_charge_once(kind: str, pki: Path, tmp_path: Path) -> None:
    cfg = H.small_config(dp=True, rounds=2)
    coord = H.make_coordinator(cfg, pki, tmp_path)
    theta0 = coord.state.clone()
    sites = [H.make_site(cfg, pki, n, f"client_0{i}") for i, n in enumerate(H.SITES)]
    with H.endpoint(kind, coord, pki) as ep:
        done = H.run_sites(ep, sites, pki)
    assert done == [2] * len(H.SITES), done
    assert coord.round == 2 and coord.finished
    assert not np.allclose(coord.state.numpy(), theta0.numpy())
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [ln["round"] for ln in lines] == [1, 2]
    assert all(ln["status"] == "complete" and ln["dropped"] == 0 for ln in lines)
    entries = privacy.read_ledger(tmp_path / privacy.LEDGER_FILENAME)
    assert [e.event.round for e in entries] == [1, 2]
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck.round == 2 and ck.extra["ledger_head"]["entries"] == 2
    coord.close()


class _SilentAfterSharing(Site):
    """A site that dies right after sharing its keys in round 1 (never masks its input)."""

    def handle(self, message):  # type: ignore[no-untyped-def]
        from aggregation import Stage
        from secure_fml.deploy import StageRequest

        if (
            isinstance(message, StageRequest)
            and message.round == 1
            and message.stage is Stage.MASKED_INPUT
        ):
            return None
        return super().handle(message)


@pytest.mark.slow  # about 3 s each: waits out a stage deadline
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_site_silent_mid_round_is_recovered(kind: str, pki: Path, tmp_path: Path) -> None:
    cfg = H.small_config(dp=True, rounds=2)
    coord = H.make_coordinator(cfg, pki, tmp_path, stage_s=1.5)
    sites = [H.make_site(cfg, pki, n, f"client_0{i}") for i, n in enumerate(H.SITES)]
    victim = sites[-1]
    victim.__class__ = _SilentAfterSharing
    with H.endpoint(kind, coord, pki) as ep:
        done = H.run_sites(ep, sites, pki)
    assert done[:4] == [2, 2, 2, 2]
    first, second = coord.history
    assert first["status"] == "complete" and first["dropped"] == 1 and first["contributors"] == 4
    assert second["status"] == "complete" and second["dropped"] == 0
    coord.close()


def test_resume_after_crash_never_double_charges(pki: Path, tmp_path: Path) -> None:
    cfg = H.small_config(dp=True, rounds=3)
    coord = H.make_coordinator(H.small_config(dp=True, rounds=1), pki, tmp_path)
    sites = [H.make_site(cfg, pki, n, f"client_0{i}") for i, n in enumerate(H.SITES)]
    with H.endpoint("inprocess", coord, pki) as ep:
        H.run_sites(ep, sites, pki, timeout_s=60)
    assert coord.round == 1
    state1 = coord.state.clone()
    # Crash after round 2 was charged but before its checkpoint: the ledger is ahead.
    first = privacy.read_ledger(tmp_path / privacy.LEDGER_FILENAME)[0].event
    ledger = coord.engine.ledger
    assert ledger is not None
    import dataclasses

    ledger.record(dataclasses.replace(first, round=2))
    coord.close()

    again = H.make_coordinator(cfg, pki, tmp_path)
    assert again.round == 2  # continues after the last charged round, never re-charges it
    assert np.allclose(again.state.numpy(), state1.numpy())
    assert load_checkpoint(tmp_path / "checkpoint.pt").round == 2
    with H.endpoint("inprocess", again, pki) as ep:
        H.run_sites(ep, sites, pki, timeout_s=60)
    assert again.round == 3
    entries = privacy.read_ledger(tmp_path / privacy.LEDGER_FILENAME)
    rounds = [e.round for e in entries if not isinstance(e.event, privacy.RoundNotApplied)]
    assert rounds == [1, 2, 3]
    # Round 2's charge stands, and the ledger records that it never reached the model.
    assert [e.round for e in entries if isinstance(e.event, privacy.RoundNotApplied)] == [2]
    again.close()


def test_duplicate_connection_and_unknown_site_are_refused(pki: Path, tmp_path: Path) -> None:
    from secure_fml.deploy import RefusalReason, Refused

    coord = H.make_coordinator(H.small_config(dp=True), pki, tmp_path)
    coord.join("alpha", H.cert_der(pki, "alpha"))
    with pytest.raises(Refused) as ei:
        coord.join("alpha", H.cert_der(pki, "alpha"))
    assert ei.value.reason is RefusalReason.DUPLICATE_CONNECTION
    with pytest.raises(Refused) as ei:
        coord.join("mallory", H.cert_der(pki, "mallory"))
    assert ei.value.reason is RefusalReason.UNKNOWN_SITE
    from privacy.errors import InvalidSignature

    with pytest.raises(InvalidSignature):  # a certificate that names another site
        coord.join("beta", H.cert_der(pki, "gamma"))
    coord.close()


def test_spent_budget_stops_training_without_release(pki: Path, tmp_path: Path) -> None:
    from secure_fml.config import config_from_dict, config_to_dict

    raw = config_to_dict(H.small_config(dp=True, rounds=3))
    raw["privacy"]["max_epsilon"] = 0.5  # one round already costs more
    cfg = config_from_dict(raw)
    coord = H.make_coordinator(cfg, pki, tmp_path)
    theta0 = coord.state.clone()
    sites = [H.make_site(cfg, pki, n, f"client_0{i}") for i, n in enumerate(H.SITES)]
    with H.endpoint("inprocess", coord, pki) as ep:
        done = H.run_sites(ep, sites, pki, timeout_s=60)
    assert done == [0] * len(H.SITES)  # no site ever revealed unmasking shares
    assert coord.finished and coord.stopped and coord.round == 0
    assert coord.history[-1]["status"] == "aborted: PrivacyBudgetExhausted"
    assert np.array_equal(coord.state.numpy(), theta0.numpy())
    assert privacy.read_ledger(tmp_path / privacy.LEDGER_FILENAME) == ()
    coord.close()


@pytest.mark.parametrize("unit", ["record", "both"])
def test_deployment_record_level_dp_is_each_sites_own_policy(tmp_path: Path, unit: str) -> None:
    """Record-level DP runs in deployed sites (tests/deploy/test_record_level.py): the
    coordinator only asks, each site runs and budgets it under its own [policy]. What
    a deployment cannot honour is refused before anything starts."""
    from secure_fml.config import Config, config_from_dict
    from secure_fml.deploy import CoordinatorSettings, SiteSettings, build_coordinator, build_site

    def config(**privacy: object) -> Config:
        return config_from_dict(
            {
                "algorithm": {"name": privacy.pop("algorithm", "fomaml")},
                "privacy": {
                    "enabled": True,
                    "unit": unit,
                    "record_noise_multiplier": 1.0,
                    **({"noise_multiplier": 1.0} if unit == "both" else {}),
                    **privacy,
                },
            }
        )

    coord = CoordinatorSettings(
        sites=("a", "b", "c"), sample_shape=(60,), num_classes=10, run_dir=tmp_path / "run"
    )
    with pytest.raises(ConfigError, match="use 'fomaml'"):
        build_coordinator(coord, config(algorithm="maml"))
    with pytest.raises(ConfigError, match="each site enforces its own record-level budget"):
        build_coordinator(coord, config(record_max_epsilon=3.0))
    # A site whose run config asks for record-level DP but whose policy does not run it.
    site = SiteSettings(name="a", client="client_00", pki_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"its own policy; set policy\.record_clip_norm"):
        build_site(site, config())
    assert not (tmp_path / "run").exists()
