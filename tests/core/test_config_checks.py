"""Config checks that need no training: privacy ranges and conflicts, population-dependent
settings (leave-one-out clamp, delta below 1/N), and the TOML round trip."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fml.config import (
    Config,
    PrivacyConfig,
    config_from_dict,
    config_to_dict,
    dump_toml,
    resolve_for_population,
    with_overrides,
)
from secure_fml.errors import ConfigError


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"noise_multiplier": 1.0, "target_epsilon": 4.0}, "both set"),
        ({"target_epsilon": 8.0, "max_epsilon": 4.0}, "max_epsilon = 4 is below"),
        ({"noise_multiplier": 1.0, "delta": 0.5}, "privacy.delta"),
        ({"noise_multiplier": 1.0, "delta": 0.0}, "privacy.delta"),
        ({"noise_multiplier": 1.0, "delta": 0.01}, "privacy.delta"),
        ({"target_epsilon": 1e6}, "privacy.target_epsilon"),
        ({"target_epsilon": float("inf")}, "privacy.target_epsilon"),
        ({"noise_multiplier": 1.0, "max_epsilon": float("nan")}, "privacy.max_epsilon"),
        ({"target_epsilon": 0.0}, "privacy.target_epsilon"),
        ({"noise_multiplier": float("inf")}, "privacy.noise_multiplier"),
        ({"noise_multiplier": 1.0, "clip_norm": float("nan")}, "privacy.clip_norm"),
        ({"noise_multiplier": 1.0, "target_quantile": 1.0}, "privacy.target_quantile"),
    ],
)
def test_privacy_settings_are_range_checked_and_conflicts_refused(kw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        PrivacyConfig(enabled=True, **kw)


def test_the_insecure_test_seed_is_range_checked() -> None:
    from secure_fml.config import RunConfig

    with pytest.raises(ConfigError, match=r"run\.insecure_seed"):
        RunConfig(insecure_seed=-1)


def test_sane_privacy_settings_pass() -> None:
    PrivacyConfig(enabled=True, target_epsilon=8.0, max_epsilon=8.5, delta=1e-5)
    PrivacyConfig(enabled=True, noise_multiplier=1.0, max_epsilon=100.0)


def test_clients_per_round_is_clamped_to_the_population_with_a_notice() -> None:
    cfg = Config()  # 4 clients per round by default; leave-one-hospital-out trains on 3
    out, notices = resolve_for_population(cfg, 3)
    assert out.server.clients_per_round == 3
    assert len(notices) == 1 and "exceeds the 3 training clients" in notices[0]
    same, none = resolve_for_population(cfg, 10)
    assert same == cfg and none == []
    poisson = with_overrides(cfg, {"server.sampling": "poisson", "server.sampling_rate": 0.5})
    assert resolve_for_population(poisson, 3) == (poisson, [])


def test_delta_must_be_below_one_over_the_population() -> None:
    cfg = config_from_dict({"privacy": {"enabled": True, "noise_multiplier": 1.0, "delta": 5e-3}})
    resolve_for_population(cfg, 100)
    with pytest.raises(ConfigError, match=r"1/N = 1/311"):
        resolve_for_population(cfg, 311)


def test_run_and_eval_fields_are_checked() -> None:
    for raw, field in (
        ({"run": {"threads": 0}}, "run.threads"),
        ({"run": {"seed": -1}}, "run.seed"),
        ({"eval": {"max_val_clients": 0}}, "eval.max_val_clients"),
        ({"eval": {"local_only_lrs": []}}, "eval.local_only_lrs"),
        ({"data": {"client_fractions": [0.0, 0.5, 0.5]}}, "training share"),
        ({"data": {"split_seed": -2}}, "data.split_seed"),
    ):
        with pytest.raises(ConfigError, match=field):
            config_from_dict(raw)


option_values = st.one_of(
    st.integers(-10, 10), st.floats(allow_nan=False), st.text(max_size=8), st.booleans()
)


@settings(max_examples=40, deadline=None)
@given(
    options=st.dictionaries(st.text(min_size=1, max_size=8), option_values, max_size=4),
    name=st.text(min_size=1, max_size=8).filter(lambda n: "/" not in n and n[0] != "."),
)
def test_dump_toml_reads_back_exactly(options: dict, name: str) -> None:
    cfg = with_overrides(Config(), {"data.options": options, "run.name": name})
    back = config_from_dict(tomllib.loads(dump_toml(cfg)))
    assert back == cfg
    assert config_to_dict(back)["data"]["options"] == options
