"""Record-level (patient-level) DP inside deployed sites, on the real Site and engine code.

A site whose ``[policy]`` sets ``record_clip_norm`` runs DP-SGD in every local step with
the noise multiplier its *own* policy decides (given, or calibrated from its own
record-level budget over ``max_rounds``), charges the release to its own ledger before
the update leaves, and sends it with the update; the coordinator's ledger records the
copy. A round start that asks for less noise, another unit, another or a second-order
algorithm, or no record-level DP at all, is refused with a typed error and the site
stays usable. The property test draws arbitrary record-level requests and checks that
whatever the site accepts runs at least its own sigma, computed independently here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import privacy
from privacy import RecordLevelRelease, Sampling
from privacy.errors import (
    ConfigError,
    InvalidMessage,
    PolicyViolation,
    PrivacyBudgetExhausted,
    StaleMessage,
)
from secure_fml.algorithms import AlgorithmName
from secure_fml.config import Config, config_from_dict
from secure_fml.deploy import Coordinator, Peer, RoundStart, Site, SitePolicy, StageReply
from secure_fml.deploy._policy import policy_from_dict
from secure_fml.engine import plan_round, privacy_setup
from secure_fml.messages import RecordLevelRequest
from secure_fml.rounds import SampledRound
from tests.deploy import _harness as H

NAMES = ("alpha", "beta", "gamma")
SIGMA = 1.0
#: What every test site trains with (first order: record-level DP refuses MAML).
ALGORITHM = {
    "name": "fomaml",
    "inner_lr": 0.05,
    "inner_steps": 2,
    "batch_size": 8,
    "query_batch_size": 8,
}


def record_config(
    *, unit: str = "both", rounds: int = 2, protocol: str = "secagg", sigma: float = SIGMA
) -> Config:
    """The coordinator's config: record-level DP (and client-level DP with ``both``)."""
    privacy_raw: dict[str, Any] = {
        "enabled": True,
        "unit": unit,
        "record_clip_norm": 1.0,
        "record_noise_multiplier": sigma,
        "clip_norm": 1.0,
    }
    if unit == "both":
        privacy_raw["noise_multiplier"] = 1.0
    return config_from_dict(
        {
            "data": {"preset": "synthetic"},
            "model": {"kind": "mlp", "hidden": [8]},
            "algorithm": ALGORITHM,
            "server": {"rounds": rounds, "sampling": "all", "optimizer": "sgd", "lr": 0.5},
            "secure_aggregation": {"protocol": protocol, "max_dropout_fraction": 0.2},
            "privacy": privacy_raw,
        }
    )


def record_policy(**kw: Any) -> SitePolicy:
    """A site policy with record-level DP at sigma 1 (client-level noise not required)."""
    fields: dict[str, Any] = {
        "require_noise": False,
        "record_clip_norm": 1.0,
        "record_noise_multiplier": SIGMA,
        "protocols": ("plain", "secagg", "secagg+"),
    }
    fields.update(kw)
    return SitePolicy(**fields)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), NAMES)


def make_record_site(
    pki: Path, tmp: Path, name: str = "alpha", client: str = "client_00", **policy: Any
) -> Site:
    return H.make_site(
        record_config(), pki, name, client, policy=record_policy(**policy), state_dir=tmp / name
    )


def start(pki: Path, site: Site, config: Config, *, round_: int = 1) -> RoundStart:
    """The round start an honest coordinator with ``config`` sends ``site``."""
    n = len(NAMES)
    plan = plan_round(
        config,
        privacy_setup(config, population=n),
        sampled=SampledRound(round_, NAMES, Sampling.full(population=n)),
        participants=NAMES,
        dimension=site.dim,
        clip_norm=config.privacy.clip_norm,
    )
    model = np.zeros(site.dim, np.float32)
    return RoundStart(
        round=round_,
        session_id=hashlib.sha256(b"session%d" % round_).digest()[:16],
        client_index=NAMES.index(site.name),
        peers=tuple(Peer(i, nm, H.cert_der(pki, nm)) for i, nm in enumerate(NAMES)),
        model=model,
        model_hash=hashlib.sha256(model.astype("<f4").tobytes()).digest(),
        settings=plan.settings,
    )


def plain_start(pki: Path, site: Site, *, round_: int = 1, **request: Any) -> RoundStart:
    """A one-message (plain protocol, record-level only) round: the reply is the update."""
    msg = start(pki, site, record_config(unit="record", protocol="none"), round_=round_)
    if request:
        rl = msg.settings.record_level
        assert rl is not None
        new = dataclasses.replace(rl, **request) if request.get("drop") is None else None
        msg = dataclasses.replace(msg, settings=dataclasses.replace(msg.settings, record_level=new))
    return msg


def record_events(ledger_entries: Any) -> list[RecordLevelRelease]:
    return [e.event for e in ledger_entries if isinstance(e.event, RecordLevelRelease)]


def dp_accounting_epsilon(events: list[RecordLevelRelease], delta: float) -> float:
    """Per-site epsilon from the logged (sigma, q, steps), with Google's dp_accounting."""
    acc = dp_accounting.rdp.RdpAccountant()
    for ev in events:
        for q, k in zip(ev.sample_rates, ev.steps, strict=True):
            g = dp_accounting.GaussianDpEvent(ev.noise_multiplier)
            step = g if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, g)
            acc.compose(dp_accounting.SelfComposedDpEvent(step, k))
    return float(acc.get_epsilon(delta))


def expected_schedule(n: int) -> tuple[tuple[float, int], ...]:
    """FOMAML's private steps at a site of n records, from the config alone: inner_steps
    at q = B/(p n) on the support set, one at q = B_q/((1-p) n) on the query set."""
    p = 0.2  # algorithm.support_fraction (default)
    return ((8 / (p * n), 2), (8 / ((1 - p) * n), 1))


# ------------------------------------------------------------------ the policy itself


def test_record_policy_fields_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"needs policy\.record_clip_norm"):
        SitePolicy(record_noise_multiplier=1.0)
    with pytest.raises(ConfigError, match=r"record_max_epsilon and policy\.max_rounds"):
        SitePolicy(record_clip_norm=1.0)
    with pytest.raises(ConfigError, match=r"record_max_epsilon and policy\.max_rounds"):
        SitePolicy(record_clip_norm=1.0, record_max_epsilon=3.0)
    with pytest.raises(ConfigError, match="record_clip_norm"):
        SitePolicy(record_clip_norm=-1.0, record_noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="record_noise_multiplier"):
        SitePolicy(record_clip_norm=1.0, record_noise_multiplier=1e9)
    with pytest.raises(ConfigError, match=r"not a known field"):
        policy_from_dict({"record_sigma": 1.0})
    pol = policy_from_dict(
        {"record_clip_norm": 1.0, "record_max_epsilon": 3.0, "max_rounds": 10, "unit_column": "pid"}
    )
    assert pol.record_level and pol.record_unit == "pid"
    assert pol.record_budget() is not None and not SitePolicy().record_level


SCHEDULE = expected_schedule(120)


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (None, "round without record-level DP"),
        (RecordLevelRequest(algorithm="fomaml", noise_multiplier=0.5), "requires >= 1"),
        (RecordLevelRequest(algorithm="fomaml", noise_multiplier=1e-9), "requires >= 1"),
        (RecordLevelRequest(algorithm="fomaml", noise_multiplier=5e3), "exceeds this site"),
        (RecordLevelRequest(algorithm="maml", noise_multiplier=1.0), "use 'fomaml'"),
        (RecordLevelRequest(algorithm="metasgd", noise_multiplier=1.0), "use 'metasgd-fo'"),
        (RecordLevelRequest(algorithm="perfedavg-hf", noise_multiplier=1.0), "perfedavg-fo"),
        (RecordLevelRequest(algorithm="reptile", noise_multiplier=1.0), "trains with 'fomaml'"),
        (
            RecordLevelRequest(algorithm="fomaml", unit="patient_id", noise_multiplier=1.0),
            "unit 'patient_id'",
        ),
        # A target epsilon far above what sigma 1 gives calibrates a smaller sigma.
        pytest.param(
            RecordLevelRequest(algorithm="fomaml", target_epsilon=500.0, rounds=1),
            "requires >= 1",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_request_below_the_site_policy_is_refused(
    request_: RecordLevelRequest | None, match: str
) -> None:
    with pytest.raises(PolicyViolation, match=match):
        record_policy().record_sigma(request_, algorithm="fomaml", schedule=SCHEDULE)


def test_the_coordinator_can_raise_the_noise_never_lower_it() -> None:
    pol = record_policy()
    ask = RecordLevelRequest(algorithm="fomaml", noise_multiplier=1.0)
    assert pol.record_sigma(ask, algorithm="fomaml", schedule=SCHEDULE) == 1.0
    more = RecordLevelRequest(algorithm="fomaml", noise_multiplier=2.5)
    assert pol.record_sigma(more, algorithm="fomaml", schedule=SCHEDULE) == 2.5
    # A person-level site serves a record-level request (person-level implies it).
    person = record_policy(unit_column="patient_id")
    assert person.record_sigma(ask, algorithm="fomaml", schedule=SCHEDULE) == 1.0
    # A site without record-level DP refuses a round that asks for it.
    with pytest.raises(PolicyViolation, match="does not run it"):
        SitePolicy().record_sigma(ask, algorithm="fomaml", schedule=SCHEDULE)
    assert SitePolicy().record_sigma(None, algorithm="fomaml", schedule=SCHEDULE) is None


@pytest.mark.slow
def test_a_site_calibrates_its_own_sigma_from_its_own_budget() -> None:
    pol = record_policy(record_noise_multiplier=None, record_max_epsilon=3.0, max_rounds=5)
    ask = RecordLevelRequest(algorithm="fomaml", noise_multiplier=0.3)
    with pytest.raises(PolicyViolation, match="requires >= "):
        pol.record_sigma(ask, algorithm="fomaml", schedule=SCHEDULE)
    sigma = pol.record_sigma(
        RecordLevelRequest(algorithm="fomaml", target_epsilon=3.0, rounds=5, delta=pol.delta),
        algorithm="fomaml",
        schedule=SCHEDULE,
    )
    assert sigma is not None
    # Independently: max_rounds rounds at that sigma stay within the site's budget.
    ev = RecordLevelRelease(
        round=1,
        site_id="alpha",
        unit="record",
        noise_multiplier=sigma,
        clip_norm=1.0,
        sample_rates=tuple(q for q, _ in SCHEDULE),
        steps=tuple(k for _, k in SCHEDULE),
    )
    assert dp_accounting_epsilon([ev] * 5, pol.delta) <= 3.0 * 1.01


ALGOS = [a.value for a in AlgorithmName] + ["bogus"]


@settings(max_examples=200, deadline=None)
@example(algorithm="fomaml", unit="record", sigma=1.0, own=1.0, person=False)
@given(
    algorithm=st.sampled_from(ALGOS + ["fomaml"] * 4),
    unit=st.sampled_from(["record", "record", "patient_id", "other"]),
    sigma=st.sampled_from([1e-9, 0.3, 0.5, 0.999, 1.0, 1.0, 1.7, 2.0, 999.0, 1e3, 1e4]),
    own=st.sampled_from([0.5, 1.0, 2.0]),
    person=st.booleans(),
)
def test_property_whatever_is_accepted_runs_at_least_the_sites_own_sigma(
    algorithm: str, unit: str, sigma: float, own: float, person: bool
) -> None:
    """Arbitrary requests against arbitrary policies: the site accepts exactly the
    requests its documented rules allow, and then runs the requested sigma, never below
    its own. (Requests by target epsilon: the slow calibration tests above.)"""
    pol = record_policy(record_noise_multiplier=own, unit_column="patient_id" if person else None)
    req = RecordLevelRequest(algorithm=algorithm, unit=unit, noise_multiplier=sigma)
    try:
        got = pol.record_sigma(req, algorithm="fomaml", schedule=SCHEDULE)
    except PolicyViolation:
        got = None
    # The oracle, from the policy's documented rules alone.
    unit_ok = unit == "record" or (person and unit == "patient_id")
    allowed = algorithm == "fomaml" and unit_ok and own <= sigma <= pol.max_noise_multiplier
    assert (got is not None) == allowed
    if got is not None:
        assert got == sigma >= own


# ------------------------------------------------------------------ the real site


def test_the_site_trains_with_dp_sgd_and_charges_its_own_ledger_before_release(
    pki: Path, tmp_path: Path
) -> None:
    site = make_record_site(pki, tmp_path)
    reply = site.handle(plain_start(pki, site, round_=1))
    assert isinstance(reply, StageReply)
    ev = reply.record_release  # travels with the update
    assert ev is not None and ev.site_id == "alpha" and ev.round == 1
    assert ev.noise_multiplier == SIGMA and ev.clip_norm == 1.0 and ev.unit == "record"
    (q_s, k_s), (q_q, k_q) = expected_schedule(len(site.data))
    assert ev.steps == (k_s, k_q) and ev.sample_rates == pytest.approx((q_s, q_q))
    # Charged (fsync'ed, hash-chained) before the update left: the ledger holds it.
    assert record_events(site.ledger.entries) == [ev]
    assert site.last_update is not None and math.isnan(site.last_update.loss)
    again = privacy.read_ledger(site.ledger.path)
    assert [e.event for e in again] == [ev]
    site.close()


def test_a_coordinator_asking_for_less_record_noise_is_refused_and_the_site_keeps_serving(
    pki: Path, tmp_path: Path
) -> None:
    site = make_record_site(pki, tmp_path)
    for bad, error, match in [
        ({"noise_multiplier": 0.1}, PolicyViolation, "requires >= 1"),
        ({"algorithm": "maml"}, PolicyViolation, "use 'fomaml'"),
        ({"drop": True}, PolicyViolation, "without record-level DP"),
    ]:
        with pytest.raises(error, match=match):
            site.handle(plain_start(pki, site, round_=1, **bad))
        assert site.ledger.entries == () and site.contributions == 0
    # The honest round start is still accepted, then a request for more noise.
    assert site.handle(plain_start(pki, site, round_=1)) is not None
    reply = site.handle(plain_start(pki, site, round_=2, noise_multiplier=3.0))
    assert reply is not None and reply.record_release is not None
    assert [e.noise_multiplier for e in record_events(site.ledger.entries)] == [1.0, 3.0]
    site.close()


def test_the_site_stops_at_its_own_record_level_budget(pki: Path, tmp_path: Path) -> None:
    probe = make_record_site(pki, tmp_path, name="alpha")
    one = probe.handle(plain_start(pki, probe, round_=1))
    assert one is not None and one.record_release is not None
    acc = probe.ledger.record_accountant("alpha")
    e1 = acc.get_epsilon(probe.policy.delta)
    one.record_release.apply_to(acc)
    e2 = acc.get_epsilon(probe.policy.delta)
    assert 0 < e1 < e2
    probe.close()
    site = make_record_site(
        pki, tmp_path, name="beta", client="client_01", record_max_epsilon=(e1 + e2) / 2
    )
    assert site.handle(plain_start(pki, site, round_=1)) is not None
    with pytest.raises(PrivacyBudgetExhausted, match="own record-level budget"):
        site.handle(plain_start(pki, site, round_=2))
    assert len(record_events(site.ledger.entries)) == 1 and site.contributions == 1
    site.close()


def test_a_site_restarted_after_charging_never_releases_that_round_again(
    pki: Path, tmp_path: Path
) -> None:
    """A crash after the record-level release was charged but before the round record
    said so: the restarted site treats the round as released (record-level releases
    have no round order in the ledger that would refuse a second one)."""
    site = make_record_site(pki, tmp_path)
    rounds_file = site.state_dir / "site_rounds.json"
    assert site.handle(plain_start(pki, site, round_=1)) is not None
    site.close()
    # The round record as it was between the charge and the end of the release.
    raw = json.loads(rounds_file.read_text())
    rounds_file.write_text(json.dumps({**raw, "released": False, "contributions": 0}))
    again = make_record_site(pki, tmp_path)
    retry = dataclasses.replace(plain_start(pki, again, round_=1), session_id=b"\x07" * 16)
    with pytest.raises(StaleMessage, match="already released"):
        again.handle(retry)
    assert len(record_events(again.ledger.entries)) == 1 and again.contributions == 1
    assert again.handle(plain_start(pki, again, round_=2)) is not None
    again.close()


def test_site_setup_refuses_what_record_level_dp_cannot_run(pki: Path, tmp_path: Path) -> None:
    maml = config_from_dict({**_raw(record_config()), "algorithm": {"name": "maml"}})
    with pytest.raises(ConfigError, match="use 'fomaml'"):
        H.make_site(maml, pki, "alpha", "client_00", policy=record_policy(), state_dir=tmp_path)
    with pytest.raises(ConfigError, match="not grouped by person"):
        make_record_site(pki, tmp_path, unit_column="patient_id")


def _raw(config: Config) -> dict[str, Any]:
    from secure_fml.config import config_to_dict

    return config_to_dict(config)


# ------------------------------------------------------------------ the coordinator


def _deploy(
    pki: Path, tmp: Path, config: Config, *, faulty: str | None = None, train_s: float = 20.0
) -> tuple[Coordinator, list[Site]]:
    coord = H.make_coordinator(config, pki, tmp / "run", names=NAMES, train_s=train_s, stage_s=10.0)
    policy = record_policy(require_noise=config.privacy.client_level)
    sites = []
    for i, n in enumerate(NAMES):
        site = H.make_site(config, pki, n, f"client_0{i}", policy=policy, state_dir=tmp / n)
        if n == "gamma" and faulty is not None:
            site = _FaultySite.wrap(site, faulty)
        sites.append(site)
    with H.endpoint("inprocess", coord, pki) as ep:
        H.run_sites(ep, sites, pki, timeout_s=120)
    return coord, sites


@pytest.mark.slow
def test_in_process_deployment_both_units_coordinator_keeps_a_copy(
    pki: Path, tmp_path: Path
) -> None:
    """unit = both over SecAgg with client-level DP: every site's ledger holds its
    record-level releases, the coordinator's ledger the same copies, and the report of
    the coordinator's run directory shows record-level epsilon per site."""
    coord, sites = _deploy(pki, tmp_path, record_config(unit="both", rounds=2))
    assert [ln["status"] for ln in coord.history] == ["complete", "complete"]
    assert coord.engine.ledger is not None
    coord_events = record_events(coord.engine.ledger.entries)
    worst = max(coord.engine.ledger.record_epsilons(delta=1e-5).values())
    assert coord.history[-1]["record_dp_epsilon_worst_site"] == pytest.approx(worst)
    client_level = (privacy.GaussianRelease, privacy.DistributedDiscreteGaussianRelease)
    for site in sites:
        mine = record_events(site.ledger.entries)
        assert [e.round for e in mine] == [1, 2]
        assert [e for e in coord_events if e.site_id == site.name] == mine
        # Both units: the site's client-level releases are in its ledger too.
        assert sum(isinstance(e.event, client_level) for e in site.ledger.entries) == 2
        site.close()
    coord.close()
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    paths = privacy.write_report(run, config, tmp_path / "report")
    md = Path(paths.markdown).read_text()
    assert "Record-level privacy per site" in md
    per_site = md.split("Record-level privacy per site", 1)[1]
    assert all(name in per_site for name in NAMES)
    data = json.loads(Path(paths.json).read_text())
    rows = {r["site"]: r for r in data["record_level"]["sites"]}
    assert sorted(rows) == sorted(NAMES)
    for site in sites:
        mine = [e for e in coord_events if e.site_id == site.name]
        want = dp_accounting_epsilon(mine, 1e-5)
        assert rows[site.name]["epsilon"]["rdp"] == pytest.approx(want, rel=0.01)
    # Beside the client-level epsilon of the same run (unit = both).
    assert data["headline"]["coordinator"]["epsilon"] > 0
    # A site's privacy officer reads the site's own directory alone.
    alpha = tmp_path / "alpha"
    own = privacy.write_report(
        alpha, json.loads((alpha / "config.json").read_text()), tmp_path / "alpha-report"
    )
    own_rows = json.loads(Path(own.json).read_text())["record_level"]["sites"]
    assert [(r["site"], r["epsilon"]["rdp"]) for r in own_rows] == [
        ("alpha", rows["alpha"]["epsilon"]["rdp"])
    ]


class _FaultySite(Site):
    """A site that lies about (or omits) its record-level release (test fault)."""

    fault = ""

    @classmethod
    def wrap(cls, site: Site, fault: str) -> Site:
        site.__class__ = cls
        site.fault = fault  # type: ignore[attr-defined]
        return site

    def handle(self, message: Any) -> StageReply | None:
        reply = super().handle(message)
        ev = reply.record_release if reply is not None else None
        if reply is None or ev is None:
            return reply
        forged = {
            "missing": None,
            "lower": dataclasses.replace(ev, noise_multiplier=0.1),
            "other_site": dataclasses.replace(ev, site_id="alpha"),
        }[self.fault]
        return dataclasses.replace(reply, record_release=forged)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("missing", "carries no release"),
        ("lower", "below the 1 the round asked for"),
        ("other_site", "names 'alpha'"),
    ],
)
def test_the_coordinator_never_uses_an_update_without_a_valid_record_level_release(
    pki: Path, tmp_path: Path, fault: str, reason: str
) -> None:
    # The refused site's reply does not close the stage early: the round closes at its
    # (short) training deadline with the two honest updates.
    coord, sites = _deploy(
        pki,
        tmp_path,
        record_config(unit="record", protocol="none", rounds=1),
        faulty=fault,
        train_s=4.0,
    )
    line = coord.history[-1]
    assert line["status"] == "complete" and line["contributors"] == 2, line
    assert reason in line["refused"]["gamma"], line["refused"]
    assert coord.engine.ledger is not None
    copies = record_events(coord.engine.ledger.entries)
    assert sorted(e.site_id for e in copies) == ["alpha", "beta"]
    for s in sites:
        s.close()
    coord.close()


def test_a_record_level_request_is_validated_on_arrival() -> None:
    for bad in (
        {},
        {"noise_multiplier": -1.0},
        {"noise_multiplier": math.nan},
        {"target_epsilon": 1.0},
        {"noise_multiplier": 1.0, "target_epsilon": 1.0},
        {"noise_multiplier": 1.0, "delta": 0.0},
    ):
        with pytest.raises(InvalidMessage):
            RecordLevelRequest(algorithm="fomaml", **bad)
    with pytest.raises(InvalidMessage):
        RecordLevelRequest(algorithm="", noise_multiplier=1.0)


# ------------------------------------------------------------------ the wire


def test_the_request_and_the_release_survive_the_wire_and_malformed_ones_are_refused(
    pki: Path, tmp_path: Path
) -> None:
    from secure_fml.deploy._convert import (
        server_message_from_proto,
        server_message_to_proto,
        site_message_from_proto,
        stage_reply_to_proto,
    )

    site = make_record_site(pki, tmp_path)
    msg = plain_start(pki, site, round_=3)
    got = server_message_from_proto(list(server_message_to_proto(msg)), max_model_bytes=1 << 20)
    assert isinstance(got, RoundStart) and got.settings == msg.settings
    target = dataclasses.replace(
        msg.settings,
        record_level=RecordLevelRequest(
            algorithm="fomaml", unit="pid", target_epsilon=3.0, rounds=7, delta=1e-6
        ),
    )
    msg_t = dataclasses.replace(msg, settings=target)
    got = server_message_from_proto(list(server_message_to_proto(msg_t)), max_model_bytes=1 << 20)
    assert isinstance(got, RoundStart) and got.settings == target
    reply = site.handle(msg)
    assert reply is not None and reply.record_release is not None

    def roundtrip(r: StageReply) -> StageReply:
        frames = list(stage_reply_to_proto(r, connection_id=b"c" * 16))
        got = site_message_from_proto(
            frames, max_payload=lambda _s: 1 << 20, expected_tensor=lambda _s: None
        )[1]
        assert isinstance(got, StageReply)
        return got

    assert roundtrip(reply).record_release == reply.record_release
    bad = object.__new__(RecordLevelRelease)  # bypasses validation, as a hostile site would
    for k, v in {**dataclasses.asdict(reply.record_release), "noise_multiplier": -1.0}.items():
        object.__setattr__(bad, k, v)
    with pytest.raises(InvalidMessage, match="malformed record-level release"):
        roundtrip(dataclasses.replace(reply, record_release=bad))
    site.close()
