"""A site's own policy against a malicious coordinator, on the real Site code.

Round starts are planned by the real coordinator plan (``secure_fml.engine.plan_round``)
and then altered the way a malicious coordinator would: tiny noise, larger clip or
scale, a wrap probability near 1, threshold 1, weaker fractions, a Sybil or short
roster, the plain protocol, replays. The site refuses each with a typed error and
stays usable; the property test draws arbitrary round-start fields and checks that
whatever the site accepts meets its own policy, computed independently here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aggregation import ClientPolicy, SecAggConfig, SecAggMode
from privacy import Sampling
from privacy.errors import (
    ConfigError,
    InsecureModeError,
    InvalidMessage,
    PolicyViolation,
    PrivacyBudgetExhausted,
    SecureFMLError,
    StaleMessage,
)
from secure_fml.deploy import Finished, Peer, RoundStart, Site, SitePolicy
from secure_fml.deploy._policy import policy_from_dict
from secure_fml.engine import plan_round, privacy_setup
from secure_fml.messages import AggregationProtocol, ClientNoise, RoundSettings
from secure_fml.rounds import SampledRound
from tests.deploy import _harness as H

NAMES = ("alpha", "beta", "gamma", "delta", "epsilon")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), (*NAMES, "mallory"))


def honest_start(pki: Path, site: Site, *, round_: int = 1, n: int = 5) -> RoundStart:
    """The round start an honest coordinator sends ``site`` (the real round plan)."""
    cfg = H.small_config(dp=True)
    names = NAMES[:n]
    dp = privacy_setup(cfg, population=n)
    plan = plan_round(
        cfg,
        dp,
        sampled=SampledRound(round_, names, Sampling.full(population=n)),
        participants=names,
        dimension=site.dim,
        clip_norm=cfg.privacy.clip_norm,
    )
    model = np.zeros(site.dim, np.float32)
    return RoundStart(
        round=round_,
        session_id=hashlib.sha256(b"session%d" % round_).digest()[:16],
        client_index=names.index(site.name),
        peers=tuple(Peer(i, nm, H.cert_der(pki, nm)) for i, nm in enumerate(names)),
        model=model,
        model_hash=hashlib.sha256(model.astype("<f4").tobytes()).digest(),
        settings=plan.settings,
    )


def _site(pki: Path, tmp: Path, name: str = "alpha", **policy: object) -> Site:
    cfg = H.small_config(dp=True)
    return H.make_site(
        cfg,
        pki,
        name,
        "client_00",
        policy=SitePolicy(**policy),
        state_dir=tmp / name,  # type: ignore[arg-type]
    )


def _with(msg: RoundStart, **changes: object) -> RoundStart:
    return dataclasses.replace(msg, settings=dataclasses.replace(msg.settings, **changes))


def _secagg(
    msg: RoundStart, *, settings: dict[str, object] | None = None, **changes: object
) -> RoundStart:
    """``msg`` with its SecAgg parameters changed (and other ``settings`` with them)."""
    c = msg.settings.secagg
    assert c is not None
    fields = {
        f: getattr(c, f)
        for f in (
            "num_clients",
            "mode",
            "modulus_bits",
            "max_dropout_fraction",
            "max_corrupt_fraction",
            "min_survivor_fraction",
            "min_survivors",
            "security_bits",
            "correctness_bits",
            "max_attempts_log2",
        )
    }
    fields.update(threshold=c.t, degree=c.k)
    fields.update(changes)
    return _with(msg, secagg=SecAggConfig(**fields), **(settings or {}))  # type: ignore[arg-type]


def test_the_honest_plan_is_accepted_and_the_ledger_is_written_before_release(
    pki: Path, tmp_path: Path
) -> None:
    site = _site(pki, tmp_path)
    msg = honest_start(pki, site)
    reply = site.handle(msg)
    assert reply is not None  # keys advertised: nothing derived from the data yet
    assert len(site.ledger.entries) == 0
    # The release hook is what the masked-input stage calls: it charges first.
    site.before_release(msg)
    entries = site.ledger.entries
    assert len(entries) == 1 and entries[0].round == 1
    assert 0 < site.epsilon() < math.inf
    with pytest.raises(StaleMessage):
        site.before_release(msg)  # never a second release for one round
    site.close()


@pytest.mark.parametrize(
    ("attack", "error", "match"),
    [
        ("noise_1e-9", PolicyViolation, "noise multiplier"),
        ("noise_x1e6", PolicyViolation, "sampler|exceeds this site's maximum"),
        ("clip_x1e6", PolicyViolation, "clip norm"),
        ("scale_x1e6", PolicyViolation, "noise multiplier"),
        ("wrap_0.99", PolicyViolation, "wrap probability"),
        ("threshold_1", PolicyViolation, "threshold"),
        ("fewer_colluders", PolicyViolation, "colluders"),
        ("more_dropouts", PolicyViolation, "dropout fraction"),
        ("plain", PolicyViolation, "protocol"),
        ("weighted", PolicyViolation, "weighted"),
        ("no_noise", InvalidMessage, "without DP noise"),
        ("sybil_roster", InvalidMessage, "repeats a participant name"),
        ("sybil_key", InvalidMessage, "repeats an identity"),
        ("stranger", InvalidMessage, "certificate"),
        ("short_roster", PolicyViolation, "roster of 3"),
        ("huge_model", PolicyViolation, "max_model_abs"),
    ],
)
def test_site_refuses_what_its_policy_forbids(
    pki: Path, tmp_path: Path, attack: str, error: type[Exception], match: str
) -> None:
    site = _site(pki, tmp_path, min_peers=4)
    good = honest_start(pki, site)
    s = good.settings
    assert s.scale is not None and s.clip_norm is not None
    msg = good
    if attack == "noise_1e-9":
        msg = _with(good, noise_std=1e-9)
    elif attack == "noise_x1e6":
        msg = _with(good, noise_std=s.noise_std * 1e6)
    elif attack == "clip_x1e6":
        msg = _with(good, clip_norm=s.clip_norm * 1e6)
    elif attack == "scale_x1e6":
        msg = _with(good, scale=s.scale * 1e6)
    elif attack == "wrap_0.99":
        msg = _with(good, wrap_probability=0.99)
    elif attack == "threshold_1":
        msg = _secagg(good, threshold=1)
    elif attack == "fewer_colluders":
        msg = _secagg(good, max_corrupt_fraction=0.0)
    elif attack == "more_dropouts":
        msg = _secagg(good, max_dropout_fraction=0.3)
    elif attack == "plain":
        msg = _with(
            good,
            protocol=AggregationProtocol.PLAIN,
            secagg=None,
            scale=None,
            noise=ClientNoise.GAUSSIAN,
            noise_std=1.0,
        )
    elif attack == "weighted":
        msg = _with(good, weighted=True)
    elif attack == "no_noise":
        msg = _with(good, noise=ClientNoise.NONE, noise_std=0.0)
    elif attack == "sybil_roster":
        p = good.peers
        msg = dataclasses.replace(
            good,
            peers=(
                p[0],
                p[1],
                Peer(2, "mallory", p[2].identity),
                Peer(3, "mallory", p[3].identity),
                p[4],
            ),
        )
    elif attack == "sybil_key":
        p = good.peers
        msg = dataclasses.replace(good, peers=(*p[:4], Peer(4, "epsilon", p[3].identity)))
    elif attack == "stranger":
        p = good.peers
        msg = dataclasses.replace(
            good, peers=(*p[:4], Peer(4, "epsilon", H.cert_der(pki, "mallory")))
        )
    elif attack == "short_roster":
        msg = honest_start(pki, site, n=3)
    elif attack == "huge_model":
        model = np.full(site.dim, 1e30, np.float32)
        msg = dataclasses.replace(
            good, model=model, model_hash=hashlib.sha256(model.astype("<f4").tobytes()).digest()
        )
    with pytest.raises(error, match=match):
        site.handle(msg)
    assert len(site.ledger.entries) == 0
    # The site stays usable: the honest start of the next round is accepted.
    assert site.handle(honest_start(pki, site, round_=2)) is not None
    assert site.handle(Finished(2)) is None and site.finished
    site.close()


def test_replays_are_refused_and_survive_a_restart(pki: Path, tmp_path: Path) -> None:
    site = _site(pki, tmp_path)
    r3 = honest_start(pki, site, round_=3)
    assert site.handle(r3) is not None
    with pytest.raises(StaleMessage, match="replayed"):
        site.handle(r3)  # the same round start twice
    with pytest.raises(StaleMessage, match="before round 3"):
        site.handle(honest_start(pki, site, round_=2))  # round number not increasing
    # A restart of round 3 by a coordinator that crashed before this site released
    # anything is a new session of a round it never contributed to: accepted.
    retry = dataclasses.replace(r3, session_id=b"\x07" * 16)
    assert site.handle(retry) is not None
    site.before_release(retry)  # the update leaves (ledger charged first)
    site.close()

    again = _site(pki, tmp_path)  # the site process restarts on its own state
    for msg in (r3, retry, dataclasses.replace(r3, session_id=b"\x09" * 16)):
        with pytest.raises(StaleMessage):
            again.handle(msg)
    assert len(again.ledger.entries) == 1
    assert again.handle(honest_start(pki, again, round_=4)) is not None
    again.close()


def test_training_randomness_is_fresh_outside_the_insecure_test_mode(
    pki: Path, tmp_path: Path
) -> None:
    site = _site(pki, tmp_path)
    state = 0.1 * torch.randn(site.dim, generator=torch.Generator().manual_seed(0))
    a = site.local_update(state, 1).vector
    b = site.local_update(state, 1).vector
    assert not torch.equal(a, b)  # (seed, round) no longer determines the update
    site.close()
    cfg = H.small_config(dp=True)
    with pytest.raises(InsecureModeError):
        H.make_site(cfg, pki, "beta", "client_01", seed=7, state_dir=tmp_path / "beta")


def test_site_budget_and_round_limit(pki: Path, tmp_path: Path) -> None:
    site = _site(pki, tmp_path, max_epsilon=1e-3)
    with pytest.raises(PrivacyBudgetExhausted, match="own budget"):
        site.handle(honest_start(pki, site))
    site.close()
    site = _site(pki, tmp_path, name="beta", max_rounds=1)
    m1 = honest_start(pki, site)
    site.handle(m1)
    site.before_release(m1)
    with pytest.raises(PrivacyBudgetExhausted, match="maximum"):
        site.handle(honest_start(pki, site, round_=2))
    site.close()


def test_policy_is_validated_and_loaded_from_its_table() -> None:
    with pytest.raises(TypeError):
        SitePolicy(0.5)  # type: ignore[misc]  # keyword-only
    for bad in (
        {"min_noise_multiplier": 0.0},
        {"min_noise_multiplier": float("nan")},
        {"max_clip_norm": -1.0},
        {"min_peers": 2},
        {"protocols": ["tls"]},
        {"max_corrupt_fraction": 0.3, "max_dropout_fraction": 0.3},
        {"max_epsilon": 1.0, "require_noise": False},
        {"unknown_key": 1},
        {"min_survivors": 2.5},
    ):
        with pytest.raises(ConfigError):
            policy_from_dict(bad)
    p = policy_from_dict({"min_noise_multiplier": 1.0, "protocols": ["secagg"], "max_epsilon": 8.0})
    assert p.protocols == ("secagg",) and p.budget() is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.min_noise_multiplier = 0.0  # type: ignore[misc]


# ---------------------------------------------------------------------- the property


def _oracle_ok(policy: SitePolicy, msg: RoundStart, dim: int) -> bool:
    """Does ``msg`` meet ``policy``? Recomputed here from the policy's numbers."""
    s = msg.settings
    n = len(msg.peers)
    if n < policy.min_peers or s.protocol.value not in policy.protocols:
        return False
    if s.clip_norm is None or s.clip_norm > policy.max_clip_norm:
        return False
    if s.noise is not ClientNoise.DISCRETE_GAUSSIAN or s.weighted:
        return False
    assert s.secagg is not None and s.scale is not None
    if s.wrap_probability > policy.max_wrap_probability:
        return False
    if s.secagg.max_corrupt_fraction < policy.max_corrupt_fraction:
        return False
    cp = ClientPolicy(
        max_dropout_fraction=policy.max_dropout_fraction,
        max_corrupt_fraction=policy.max_corrupt_fraction,
        min_survivor_fraction=policy.min_survivor_fraction,
        min_survivors=policy.min_survivors,
    )
    honest = max(cp.min_survivors, math.ceil(cp.min_survivor_fraction * n - 1e-9)) - math.floor(
        cp.max_corrupt_fraction * n
    )
    d = dim + s.extra_coordinates()
    z = math.sqrt(honest) * s.noise_std / (s.clip_norm * s.scale + math.sqrt(d))
    return policy.min_noise_multiplier <= z <= policy.max_noise_multiplier


@pytest.fixture(scope="module")
def prop_site(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Site:
    return _site(pki, tmp_path_factory.mktemp("prop"), min_noise_multiplier=0.8)


_counter = iter(range(1, 10**9))
ACCEPTED: list[int] = []
RAN: list[int] = []


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# The honest round start (n = 5: SecAgg, t = 3, k = 4), so every run exercises acceptance.
@example(
    clip_factor=1.0,
    noise_factor=1.0,
    scale_factor=1.0,
    wrap=1e-9,
    corrupt=0.05,
    dropout=0.2,
    threshold=3,
    n=5,
    mode=SecAggMode.SECAGG,
)
@given(
    # Honest values are drawn often (so acceptance is exercised), attacks around them.
    clip_factor=st.sampled_from([1.0, 1.0, 0.5, 2.0, 1e-3, 11.0, 1e6]),
    noise_factor=st.sampled_from([1.0, 1.5, 0.9, 0.7, 0.1, 1e-9, 1e6]),
    scale_factor=st.sampled_from([1.0, 1.0, 1e-3, 1e-12, 1e6]),
    wrap=st.sampled_from([1e-9, 1e-12, 1e-6, 1e-3, 0.99]),
    corrupt=st.sampled_from([0.05, 0.2, 0.0]),
    dropout=st.sampled_from([0.2, 0.1, 0.0]),
    threshold=st.integers(1, 4),
    n=st.integers(3, 5),
    mode=st.sampled_from([SecAggMode.SECAGG, SecAggMode.SECAGG_PLUS]),
)
def test_property_the_site_only_accepts_rounds_its_own_policy_allows(
    pki: Path,
    prop_site: Site,
    clip_factor: float,
    noise_factor: float,
    scale_factor: float,
    wrap: float,
    corrupt: float,
    dropout: float,
    threshold: int,
    n: int,
    mode: SecAggMode,
) -> None:
    site = prop_site
    r = next(_counter)
    RAN.append(r)
    base = honest_start(pki, site, round_=r, n=n)
    s = base.settings
    assert s.scale is not None and s.clip_norm is not None and s.secagg is not None
    try:
        msg = _secagg(
            base,
            mode=mode,
            threshold=min(threshold, n - 1),
            degree=n - 1,
            max_corrupt_fraction=corrupt,
            max_dropout_fraction=dropout,
            settings={
                "protocol": AggregationProtocol(mode.value),
                "clip_norm": s.clip_norm * clip_factor,
                "noise_std": s.noise_std * noise_factor,
                "scale": s.scale * scale_factor,
                "wrap_probability": wrap,
            },
        )
    except (ConfigError, InvalidMessage):
        return  # not even a well-formed round start (the transport refuses it)
    ok = _oracle_ok(site.policy, msg, site.dim)
    before = site.contributions
    try:
        reply = site.handle(msg)
    except SecureFMLError as e:
        # Refused with a typed error; never a crash, never a charge.
        assert isinstance(e, PolicyViolation | InvalidMessage), repr(e)
        assert site.contributions == before
        return
    assert reply is not None
    ACCEPTED.append(r)
    assert ok, f"accepted a round its policy forbids: {msg.settings}"
    admitted = site._admitted  # the site's own view of the round
    assert admitted is not None and admitted.noise_multiplier is not None
    assert admitted.noise_multiplier >= site.policy.min_noise_multiplier
    assert admitted.event is not None and admitted.event.round == r


def test_property_covers_acceptance_too(pki: Path, tmp_path: Path) -> None:
    """The honest plan meets a policy of sigma_min 0.8, so the property above is not
    vacuous (and, when it ran first in this module, it accepted some rounds)."""
    site = _site(pki, tmp_path, min_noise_multiplier=0.8)
    msg = honest_start(pki, site)
    assert _oracle_ok(site.policy, msg, site.dim)
    assert site.handle(msg) is not None
    site.close()


def test_roundsettings_fields_are_all_considered() -> None:
    """A new RoundSettings field must be judged by the site's policy: update
    SitePolicy.admit and this list together."""
    judged = {
        "protocol",
        "clip_norm",
        "noise",
        "noise_std",
        "bit_noise_std",
        "adaptive_clip_bit",
        "weighted",
        "min_survivors",
        "assumed_colluding",
        "secagg",
        "scale",
        "wrap_probability",
        "record_level",  # SitePolicy.record_sigma (tests/deploy/test_record_level.py)
    }
    assert {f.name for f in dataclasses.fields(RoundSettings)} == judged


def test_zz_property_examples_included_accepted_rounds() -> None:
    """Runs after the property test (file order): some drawn round starts were accepted,
    so the property's acceptance branch ran (its explicit honest example guarantees one)."""
    if not RAN:
        pytest.skip("the property test was not selected in this session")
    assert len(ACCEPTED) >= 1, (len(RAN), ACCEPTED)


def test_readme_policy_block_is_a_valid_policy() -> None:
    import re
    import tomllib

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text.split("### A site's own policy", 1)[1]
    m = re.search(r"```toml\n(.*?)```", section, re.S)
    assert m
    policy = policy_from_dict(tomllib.loads(m.group(1))["policy"])
    assert policy.max_epsilon == 8.0 and policy.protocols == ("secagg", "secagg+")
