"""Record-level (per-site) releases: event, ledger, per-site accounting, budgets, planning."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import pytest

from privacy import (
    Accountant,
    ConfigError,
    GaussianRelease,
    LedgerCorrupted,
    PrivacyBudget,
    PrivacyBudgetExhausted,
    PrivacyLedger,
    RecordLevelRelease,
    Sampling,
    calibrate_record_level,
    check_record_level_budget,
    plan_record_level,
    read_ledger,
    record_level_epsilon,
    record_level_schedule,
    render_record_level_plan,
)

DELTA = 1e-5


def _rel(site: str, round: int = 1, **kw: object) -> RecordLevelRelease:
    args: dict[str, object] = {
        "round": round,
        "site_id": site,
        "unit": "record",
        "noise_multiplier": 1.1,
        "clip_norm": 1.0,
        "sample_rates": (0.1,),
        "steps": (10,),
    }
    args.update(kw)
    return RecordLevelRelease(**args)  # type: ignore[arg-type]


def _client_release(round: int) -> GaussianRelease:
    return GaussianRelease.central(
        round=round,
        noise_multiplier=1.0,
        clip_norm=1.0,
        sampling=Sampling.full(population=4),
        clients_sampled=4,
        clients_surviving=4,
    )


@pytest.mark.parametrize(
    ("kw", "exc"),
    [
        ({"site_id": ""}, ConfigError),
        ({"unit": ""}, ConfigError),
        ({"noise_multiplier": 0.0}, ConfigError),
        ({"clip_norm": -1.0}, ConfigError),
        ({"sample_rates": (0.1, 0.2), "steps": (3,)}, ConfigError),
        ({"sample_rates": (), "steps": ()}, ConfigError),
        ({"sample_rates": (1.5,)}, ConfigError),
        ({"steps": (0,)}, ConfigError),
        ({"sample_rates": (0.1, 0.1), "steps": (1, 2)}, ConfigError),
        ({"sample_rates": [0.1]}, TypeError),
        ({"steps": (1.5,)}, TypeError),
    ],
)
def test_event_validates_itself(kw: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        _rel("a", **kw)


def test_event_round_trips_through_the_ledger(tmp_path: Path) -> None:
    ev = _rel("hospital-a", sample_rates=(0.25, 0.05), steps=(5, 1), unit="patient_id")
    with PrivacyLedger.open(tmp_path / "l.jsonl") as led:
        led.record(ev)
    (entry,) = read_ledger(tmp_path / "l.jsonl")
    assert entry.event == ev
    line = json.loads((tmp_path / "l.jsonl").read_text())
    assert line["type"] == "RecordLevelRelease"
    assert line["event"]["sample_rates"] == [0.25, 0.05]


def test_record_releases_are_their_own_unit(tmp_path: Path) -> None:
    """Client-level ε ignores record-level releases and vice versa; sites are separate."""
    with PrivacyLedger.open(tmp_path / "l.jsonl") as led:
        led.record(_client_release(1))
        eps_client = led.epsilon(delta=DELTA)
        led.record(_rel("a", 1))
        led.record(_rel("b", 1, noise_multiplier=2.0))
        led.record(_rel("a", 2))
        assert led.epsilon(delta=DELTA) == eps_client
        assert led.last_round == 1 and led.next_round == 2
        eps = led.record_epsilons(delta=DELTA)
        assert set(eps) == {"a", "b"}
        assert led.record_sites == ("a", "b")
    ref_a = record_level_epsilon(noise_multiplier=1.1, schedule=((0.1, 10),), rounds=2, delta=DELTA)
    ref_b = record_level_epsilon(noise_multiplier=2.0, schedule=((0.1, 10),), rounds=1, delta=DELTA)
    assert eps["a"] == pytest.approx(ref_a, rel=1e-12)
    assert eps["b"] == pytest.approx(ref_b, rel=1e-12)
    # Reopening rebuilds the same per-site accountants from the file.
    with PrivacyLedger.open(tmp_path / "l.jsonl") as led:
        assert led.record_epsilons(delta=DELTA) == eps
        assert led.epsilon(delta=DELTA) == eps_client


def test_a_repeated_round_is_charged_again(tmp_path: Path) -> None:
    """A resumed coordinator may ask a site for round r again; the second answer costs."""
    with PrivacyLedger.open(tmp_path / "l.jsonl") as led:
        led.record(_rel("a", 3))
        once = led.record_epsilons(delta=DELTA)["a"]
        led.record(_rel("a", 3))
        twice = led.record_epsilons(delta=DELTA)["a"]
    assert twice > once
    assert len(read_ledger(tmp_path / "l.jsonl")) == 2


def test_edited_record_release_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with PrivacyLedger.open(path) as led:
        led.record(_rel("a", 1))
    path.write_text(path.read_text().replace('"noise_multiplier":1.1', '"noise_multiplier":5.0'))
    with pytest.raises(LedgerCorrupted):
        read_ledger(path)


def _dp_accounting_eps(events: list[RecordLevelRelease], delta: float) -> tuple[float, float]:
    """Independent per-site ε (RDP and PLD) from the logged (σ, q, steps)."""
    rdp = dp_accounting.rdp.RdpAccountant()
    pld = dp_accounting.pld.PLDAccountant()
    for ev in events:
        for q, k in zip(ev.sample_rates, ev.steps, strict=True):
            g = dp_accounting.GaussianDpEvent(ev.noise_multiplier)
            step = g if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, g)
            rdp.compose(dp_accounting.SelfComposedDpEvent(step, k))
            pld.compose(dp_accounting.SelfComposedDpEvent(step, k))
    return float(rdp.get_epsilon(delta)), float(pld.get_epsilon(delta))


@pytest.mark.slow
def test_per_site_epsilon_matches_dp_accounting_within_1_percent(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    sizes = {"cleveland": 303, "hungarian": 294, "switzerland": 123}
    with PrivacyLedger.open(path) as led:
        for r in range(1, 7):
            for site, n in sizes.items():
                sched = record_level_schedule(
                    site_size=n,
                    local_steps=5,
                    batch_size=32,
                    support_fraction=0.2,
                    inner_steps=3,
                    query_batch_size=32,
                )
                led.record(
                    RecordLevelRelease(
                        round=r,
                        site_id=site,
                        unit="record",
                        noise_multiplier=1.3 if site != "switzerland" else 2.2,
                        clip_norm=1.0,
                        sample_rates=tuple(q for q, _ in sched),
                        steps=tuple(k for _, k in sched),
                    )
                )
        ours_rdp = led.record_epsilons(delta=DELTA)
        ours_prv = led.record_epsilons(delta=DELTA, accountant="prv")
    logged = [e.event for e in read_ledger(path)]
    for site in sizes:
        evs = [e for e in logged if isinstance(e, RecordLevelRelease) and e.site_id == site]
        ref_rdp, ref_pld = _dp_accounting_eps(evs, DELTA)
        assert ours_rdp[site] == pytest.approx(ref_rdp, rel=0.01), site
        assert ours_prv[site] == pytest.approx(ref_pld, rel=0.01), site


@pytest.mark.slow
def test_one_step_epsilon_matches_dp_accounting_within_1_percent() -> None:
    ev = _rel("a", sample_rates=(0.3, 0.05), steps=(4, 2), noise_multiplier=0.9)
    acc = Accountant("rdp")
    ev.apply_to(acc)
    ref_rdp, _ = _dp_accounting_eps([ev], DELTA)
    assert acc.get_epsilon(DELTA) == pytest.approx(ref_rdp, rel=0.01)


def test_site_budget_refuses_only_the_exhausted_site(tmp_path: Path) -> None:
    budget = PrivacyBudget(max_epsilon=2.0, delta=DELTA)
    with PrivacyLedger.open(tmp_path / "l.jsonl", record_budget=budget) as led:
        big = {"noise_multiplier": 2.0, "sample_rates": (0.2,), "steps": (8,)}
        led.record(_rel("small", 1, **big))
        before = led.entries
        with pytest.raises(PrivacyBudgetExhausted, match="site 'small'"):
            for r in range(2, 50):
                led.record(_rel("small", r, **big))
        refused_at = len(led.entries)
        assert led.record_epsilons(delta=DELTA)["small"] <= 2.0
        # The other site still contributes.
        led.record(_rel("large", 7, noise_multiplier=5.0))
        assert len(led.entries) == refused_at + 1
        assert len(before) == 1
    # The refused release was never written.
    assert all(e.event.round < 50 for e in read_ledger(tmp_path / "l.jsonl"))


def test_check_record_level_budget_is_a_raising_check() -> None:
    budget = PrivacyBudget(max_epsilon=1.0, delta=DELTA)
    acc = Accountant("rdp")
    check_record_level_budget(acc, _rel("a", noise_multiplier=20.0), budget)  # fine
    with pytest.raises(PrivacyBudgetExhausted):
        check_record_level_budget(acc, _rel("a", noise_multiplier=0.5, steps=(100,)), budget)
    with pytest.raises(ConfigError):
        check_record_level_budget(Accountant("prv"), _rel("a"), budget)


def test_calibration_reaches_the_target_from_below() -> None:
    sched = ((0.26, 10),)
    z = calibrate_record_level(target_epsilon=3.0, delta=DELTA, rounds=30, schedule=sched)
    eps = record_level_epsilon(noise_multiplier=z, schedule=sched, rounds=30, delta=DELTA)
    assert 3.0 - 0.01 <= eps <= 3.0
    slightly_less = record_level_epsilon(
        noise_multiplier=z * 0.97, schedule=sched, rounds=30, delta=DELTA
    )
    assert slightly_less > 3.0


@pytest.mark.slow
def test_plan_per_site_and_common_sigma() -> None:
    p = plan_record_level(
        site_sizes=[303, 294, 123, 200],
        rounds=30,
        delta=DELTA,
        local_steps=10,
        batch_size=32,
        target_epsilon=3.0,
    )
    sig = [s.noise_multiplier_for_target for s in p.sites]
    assert sig[2] == max(sig)  # the smallest hospital needs the most noise
    assert p.common_noise_multiplier == max(sig)
    assert all(s.epsilon_at_common <= 3.0 for s in p.sites)
    assert p.worst_epsilon == pytest.approx(p.sites[2].epsilon_at_common)
    assert p.sites[0].schedule == ((32 / 303, 10),)
    text = render_record_level_plan(p)
    assert "headline (worst site)" in text and "123" in text
    at = plan_record_level(
        site_sizes=[303, 123],
        rounds=30,
        delta=DELTA,
        local_steps=10,
        batch_size=32,
        noise_multiplier=p.common_noise_multiplier,
    )
    assert at.sites[1].epsilon_at_common == pytest.approx(p.sites[2].epsilon_at_common)


def test_meta_schedule_has_support_and_query_rates() -> None:
    s = record_level_schedule(
        site_size=200,
        local_steps=1,
        batch_size=10,
        support_fraction=0.2,
        inner_steps=5,
        query_batch_size=40,
    )
    assert s == ((10 / 40, 5), (40 / 160, 1)) or s == ((0.25, 6),)
    s2 = record_level_schedule(
        site_size=200,
        local_steps=1,
        batch_size=8,
        support_fraction=0.2,
        inner_steps=5,
        query_batch_size=None,
    )
    assert s2 == ((8 / 40, 5), (1.0, 1))


def test_gdp_may_not_calibrate() -> None:
    with pytest.raises(ConfigError, match="gdp"):
        calibrate_record_level(
            target_epsilon=3.0, delta=DELTA, rounds=3, schedule=((0.1, 1),), accountant="gdp"
        )


def test_report_shows_record_level_epsilon_per_site(tmp_path: Path) -> None:
    from privacy import build_report
    from privacy._report import _markdown

    with PrivacyLedger.open(tmp_path / "l.jsonl") as led:
        led.record(_rel("a", 1))
        led.record(_rel("b", 1, noise_multiplier=3.0))
        eps = led.record_epsilons(delta=DELTA)
    rep = build_report(read_ledger(tmp_path / "l.jsonl"), {"privacy": {"delta": DELTA}})
    rl = rep["record_level"]
    assert {r["site"]: r["epsilon"]["rdp"] for r in rl["sites"]} == pytest.approx(eps)
    assert rl["worst_site_epsilon"]["rdp"] == pytest.approx(max(eps.values()))
    assert rep["ledger"]["releases"] == 0  # no client-level release in this ledger
    md = _markdown(rep, [])
    assert "Record-level privacy per site" in md and "| a | record |" in md
    assert not any("not separately bounded" in item for item in rep["not_protected"])
