"""``RoundNotApplied``: the ledger's record that a charged round never changed the model
(an abort after the charge, or a crash before the checkpoint). It needs a charge of its
round, is recorded once, costs nothing, survives re-opening and shows in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privacy import (
    Adversary,
    GaussianRelease,
    LedgerCorrupted,
    PrivacyError,
    PrivacyLedger,
    RoundNotApplied,
    Sampling,
    SamplingMode,
    SkippedRound,
    SkipReason,
    build_report,
    read_ledger,
    write_report,
)
from privacy.errors import ConfigError

SAMPLING = Sampling.poisson(sample_rate=0.1, population=300)


def _release(r: int) -> GaussianRelease:
    return GaussianRelease.central(
        round=r,
        noise_multiplier=1.0,
        clip_norm=1.0,
        sampling=SAMPLING,
        clients_sampled=30,
        clients_surviving=28,
    )


def _skip(r: int) -> SkippedRound:
    return SkippedRound(
        round=r,
        reason=SkipReason.TOO_FEW_SAMPLED,
        clients_sampled=2,
        required=3,
        sampling_mode=SamplingMode.POISSON,
        sample_rate=0.1,
        population=300,
        noise_multiplier=1.0,
    )


@pytest.mark.slow
def test_a_charged_round_can_be_marked_not_applied_once_for_free(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with PrivacyLedger.open(path) as led:
        led.record(_release(1))
        led.record(_release(2))
        eps = led.adversary_epsilon(adversary=Adversary.COORDINATOR, delta=1e-5).epsilon
        led.record(RoundNotApplied(round=1, cause="crash before the checkpoint"))  # not last
        led.record(_skip(3))
        assert led.last_round == 3 and led.next_round == 4
        after = led.adversary_epsilon(adversary=Adversary.COORDINATOR, delta=1e-5).epsilon
        assert after == pytest.approx(eps)  # the charge stands, nothing is added
        for bad in (
            RoundNotApplied(round=1, cause="again"),  # once
            RoundNotApplied(round=3, cause="a skip was never charged"),
            RoundNotApplied(round=9, cause="no such round"),
        ):
            with pytest.raises(PrivacyError, match="needs a charged round"):
                led.record(bad)
    entries = read_ledger(path)  # re-verified on reading
    assert [type(e.event).__name__ for e in entries] == [
        "GaussianRelease",
        "GaussianRelease",
        "RoundNotApplied",
        "SkippedRound",
    ]
    rows = build_report(entries, {"privacy": {"delta": 1e-5}})["rounds"]
    assert [r.get("applied", True) for r in rows if r["type"] == "GaussianRelease"] == [False, True]
    paths = write_report(path, {"privacy": {"delta": 1e-5}}, tmp_path / "report")
    assert Path(paths.markdown).exists()  # the rendered report reads such a ledger too


def test_a_misplaced_not_applied_line_is_a_corrupted_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with PrivacyLedger.open(path) as led:
        led.record(_release(1))
        led.record(RoundNotApplied(round=1, cause="aborted after the charge"))
    lines = path.read_text().splitlines()
    # Re-chaining a duplicate by hand still fails the placement rule (once per round).
    from privacy._ledger import _canonical, _entry_hash

    obj = json.loads(lines[1])
    obj.update(seq=2, prev_hash=obj["hash"])
    del obj["hash"]
    obj["hash"] = _entry_hash(obj["prev_hash"], obj)
    path.write_text("\n".join([*lines, _canonical(obj).decode()]) + "\n")
    with pytest.raises(LedgerCorrupted, match="not-applied out of place"):
        read_ledger(path)


def test_cause_is_required() -> None:
    with pytest.raises(ConfigError, match="cause"):
        RoundNotApplied(round=1, cause=" ")
