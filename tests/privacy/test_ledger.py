"""Ledger durability, crash between write and apply, tamper detection, budget refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from privacy import (
    Adversary,
    ClipStatistics,
    ConfigError,
    DistributedDiscreteGaussianRelease,
    DropoutThresholdNotMet,
    GaussianRelease,
    LedgerCorrupted,
    LedgerHead,
    NoisePlacement,
    PrivacyBudget,
    PrivacyBudgetExhausted,
    PrivacyError,
    PrivacyLedger,
    Sampling,
    SamplingMode,
    distributed_noise_std,
    read_ledger,
)

SAMPLING = Sampling.poisson(sample_rate=0.1, population=300)
REPO = Path(__file__).resolve().parents[2]


def _central(r: int, sigma: float = 1.0) -> GaussianRelease:
    return GaussianRelease.central(
        round=r,
        noise_multiplier=sigma,
        clip_norm=1.0,
        sampling=SAMPLING,
        clients_sampled=30,
        clients_surviving=28,
    )


def _fill(path: Path, rounds: int) -> None:
    with PrivacyLedger.open(path) as led:
        for r in range(rounds):
            led.record(_central(r), timestamp=f"2026-01-01T00:00:{r:02d}+00:00")


def test_record_and_reopen_rebuilds_accountant(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _fill(path, 5)
    with PrivacyLedger.open(path) as led:
        assert led.last_round == 4 and led.next_round == 5
        eps = led.epsilon(delta=1e-5)
        assert eps > 0
        head = led.head
    with PrivacyLedger.open(path, expected_head=head) as led:
        assert led.epsilon(delta=1e-5) == eps
        assert [e.round for e in led] == list(range(5))
    lines = path.read_bytes().splitlines()
    first = json.loads(lines[0])
    assert first["schema"] == 2 and first["type"] == "GaussianRelease"
    assert first["event"]["noise_multiplier"] == 1.0 and len(first["hash"]) == 64


def test_round_cannot_be_recharged_or_reordered(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with PrivacyLedger.open(path) as led:
        led.record(_central(3))
        with pytest.raises(PrivacyError, match="already charged"):
            led.record(_central(3))
        with pytest.raises(PrivacyError, match="already charged"):
            led.record(_central(1))
        led.record(ClipStatistics(round=3, unclipped_fraction=0.6, next_clip_norm=0.9))
        with pytest.raises(PrivacyError, match="clip statistics"):
            led.record(ClipStatistics(round=3, unclipped_fraction=0.6, next_clip_norm=0.9))


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from privacy import GaussianRelease, PrivacyLedger, Sampling
    ledger_path, applied_path = sys.argv[1], sys.argv[2]
    s = Sampling.poisson(sample_rate=0.1, population=300)
    led = PrivacyLedger.open(ledger_path)
    for r in range(led.next_round, led.next_round + 3):
        ev = GaussianRelease.central(round=r, noise_multiplier=1.0, clip_norm=1.0,
                                     sampling=s, clients_sampled=30, clients_surviving=30)
        led.record(ev)                       # phase 1: durable
        if r == 2:
            os.kill(os.getpid(), signal.SIGKILL)   # crash before applying round 2
        with open(applied_path, "a") as fh:  # phase 2: apply
            fh.write(f"{r}\\n"); fh.flush(); os.fsync(fh.fileno())
    """
)


@pytest.mark.slow  # ~4 s: a real child process killed with SIGKILL
def test_survives_sigkill_between_record_and_apply(tmp_path: Path) -> None:
    ledger_path, applied = tmp_path / "ledger.jsonl", tmp_path / "applied.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT, str(ledger_path), str(applied)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert applied.read_text().split() == ["0", "1"]
    # Restart: round 2 was charged (its record() returned) but never applied.
    with PrivacyLedger.open(ledger_path) as led:
        assert led.last_round == 2
        assert led.next_round == 3
        assert len(led.events) == 3  # charged exactly once, nothing lost
        eps_after_restart = led.epsilon(delta=1e-5)
    ref = tmp_path / "ref.jsonl"
    with PrivacyLedger.open(ref) as led:
        for r in range(3):
            led.record(_central(r))
            led_eps = led.epsilon(delta=1e-5)
    assert eps_after_restart == pytest.approx(led_eps)
    # The restarted server resumes at round 3 without double charging.
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CRASH_SCRIPT.replace("r == 2", "r == -1"),
            str(ledger_path),
            str(applied),
        ],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert [e.round for e in read_ledger(ledger_path)] == [0, 1, 2, 3, 4, 5]


def _rewrite(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(fn(lines)))


def _edit_sigma(lines: list[bytes]) -> list[bytes]:
    obj = json.loads(lines[2])
    obj["event"]["noise_multiplier"] = 5.0
    obj["event"]["value_noise_multiplier"] = 5.0
    obj["event"]["target_noise_multiplier"] = 5.0
    lines[2] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    return lines


@pytest.mark.parametrize(
    ("name", "fn", "match"),
    [
        ("edited_sigma", _edit_sigma, "hash mismatch"),
        (
            "edited_bytes",
            lambda ls: [ls[0], ls[1].replace(b'"clip_norm":1.0', b'"clip_norm":9.0'), *ls[2:]],
            "hash mismatch",
        ),
        ("deleted_line", lambda ls: ls[:2] + ls[3:], "sequence number|chain"),
        ("deleted_first", lambda ls: ls[1:], "sequence number|chain"),
        ("reordered", lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "sequence number|chain"),
        ("duplicated", lambda ls: [*ls, ls[-1]], "sequence number|chain"),
        ("truncated_last", lambda ls: [*ls[:-1], ls[-1][:40]], "truncated"),
        ("truncated_with_newline", lambda ls: [*ls[:-1], ls[-1][:40] + b"\n"], "not valid JSON"),
        ("non_json", lambda ls: [*ls, b"hello\n"], "not valid JSON"),
        ("blank_line", lambda ls: [*ls, b"\n"], "not valid JSON"),
        ("whitespace", lambda ls: [ls[0].replace(b",", b", ", 1), *ls[1:]], "canonical|hash"),
    ],
)
def test_tampering_is_detected(tmp_path: Path, name: str, fn, match: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.jsonl"
    _fill(path, 5)
    _rewrite(path, fn)
    with pytest.raises(LedgerCorrupted, match=match):
        PrivacyLedger.open(path)
    with pytest.raises(LedgerCorrupted):
        read_ledger(path)


def test_rehashed_duplicate_round_is_still_rejected(tmp_path: Path) -> None:
    """Even a correctly re-chained ledger may not contain a round twice."""
    from privacy._ledger import GENESIS_HASH, _canonical, _entry_hash

    path = tmp_path / "l.jsonl"
    _fill(path, 3)
    objs = [json.loads(x) for x in path.read_bytes().splitlines()]
    objs.append({**objs[-1]})
    prev = GENESIS_HASH
    out = b""
    for i, o in enumerate(objs):
        o["seq"], o["prev_hash"] = i, prev
        body = {k: v for k, v in o.items() if k != "hash"}
        o["hash"] = prev = _entry_hash(prev, body)
        out += _canonical(o) + b"\n"
    path.write_bytes(out)
    with pytest.raises(LedgerCorrupted, match="duplicate or reordered"):
        PrivacyLedger.open(path)


def test_truncation_at_line_boundary_caught_by_expected_head(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path, 4)
    with PrivacyLedger.open(path) as led:
        head = led.head
    _rewrite(path, lambda ls: ls[:-1])
    PrivacyLedger.open(path).close()  # indistinguishable from a shorter ledger...
    with pytest.raises(LedgerCorrupted, match="truncated or rolled back"):
        PrivacyLedger.open(path, expected_head=head)  # ...but not from the checkpoint
    path.unlink()
    with pytest.raises(LedgerCorrupted, match="refusing to start from zero"):
        PrivacyLedger.open(path, expected_head=head)
    with pytest.raises(LedgerCorrupted, match="missing"):
        PrivacyLedger.open(path, create=False)
    assert head == LedgerHead(4, head.hash)


def test_discard_torn_tail_is_explicit(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path, 3)
    _rewrite(path, lambda ls: [*ls[:-1], ls[-1][:30]])
    with pytest.raises(LedgerCorrupted):
        PrivacyLedger.open(path)
    PrivacyLedger.discard_torn_tail(path)
    with PrivacyLedger.open(path) as led:
        assert led.last_round == 1
    assert (tmp_path / "l.jsonl.torn").exists()
    with pytest.raises(PrivacyError, match="no torn tail"):
        PrivacyLedger.discard_torn_tail(path)


def test_second_writer_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with PrivacyLedger.open(path), pytest.raises(PrivacyError, match="another process"):
        PrivacyLedger.open(path)


def test_budget_refusal_has_numbers_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    # Central noise: only an outside observer can be budgeted (see test_adversary).
    budget = PrivacyBudget(max_epsilon=1.0, delta=1e-5, adversary=Adversary.OUTSIDE_OBSERVER)
    with PrivacyLedger.open(path, budget=budget) as led:
        r = 0
        with pytest.raises(PrivacyBudgetExhausted) as info:
            while True:
                led.record(_central(r, sigma=8.0))
                r += 1
        size = path.stat().st_size
        msg = str(info.value)
        spent = led.adversary_epsilon(adversary=Adversary.OUTSIDE_OBSERVER, delta=1e-5).epsilon
        assert r >= 2 and 0 < spent <= 1.0
        assert "against the outside_observer" in msg
        assert f"round {r} refused" in msg
        assert f"spent epsilon={spent:.4f}" in msg
        assert "max_epsilon=1" in msg and "delta=1e-05" in msg
        would = float(msg.split("bring it to epsilon=")[1].split()[0])
        assert would > 1.0
        with pytest.raises(PrivacyBudgetExhausted):
            led.record(_central(r, sigma=8.0))
    assert path.stat().st_size == size
    assert len(read_ledger(path)) == r
    # Reopening keeps the spent budget: never a reset to zero.
    with PrivacyLedger.open(path, budget=budget) as led, pytest.raises(PrivacyBudgetExhausted):
        led.record(_central(r + 5, sigma=8.0))


def test_budget_validation() -> None:
    with pytest.raises(ConfigError, match="accountant"):
        PrivacyBudget(max_epsilon=1.0, delta=1e-5, accountant="nope")
    with pytest.raises(ConfigError, match="delta"):
        PrivacyBudget(max_epsilon=1.0, delta=0.0)
    with pytest.raises(TypeError):
        PrivacyBudget(1.0, 1e-5)  # type: ignore[misc]  # keyword-only


def test_distributed_event_charges_actual_survivors(tmp_path: Path) -> None:
    std = distributed_noise_std(noise_multiplier=1.0, clip_norm=1.0, min_survivors=16)
    ev = GaussianRelease.distributed(
        round=0,
        per_client_noise_std=std,
        clip_norm=1.0,
        min_survivors=16,
        sampling=SAMPLING,
        clients_sampled=30,
        clients_surviving=25,
        target_noise_multiplier=1.0,
        client_ids=tuple(f"c{i}" for i in range(25)),
    )
    assert ev.noise_multiplier == pytest.approx(1.25)
    assert ev.placement is NoisePlacement.DISTRIBUTED
    with pytest.raises(DropoutThresholdNotMet):
        GaussianRelease.distributed(
            round=0,
            per_client_noise_std=std,
            clip_norm=1.0,
            min_survivors=16,
            sampling=SAMPLING,
            clients_sampled=30,
            clients_surviving=15,
            target_noise_multiplier=1.0,
        )
    # A hand-built event claiming more noise than present is rejected.
    with pytest.raises(ConfigError, match="does not match"):
        GaussianRelease(
            round=0,
            noise_multiplier=2.0,
            value_noise_multiplier=2.0,
            clip_norm=1.0,
            placement=NoisePlacement.DISTRIBUTED,
            sampling_mode=SamplingMode.POISSON,
            sample_rate=0.1,
            population=300,
            clients_sampled=30,
            clients_surviving=16,
            target_noise_multiplier=1.0,
            min_survivors=16,
            per_client_noise_std=std,
        )
    path = tmp_path / "l.jsonl"
    with PrivacyLedger.open(path) as led:
        led.record(ev)
    assert read_ledger(path)[0].event == ev


def test_adaptive_and_ddgauss_events_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ev1 = GaussianRelease.central(
        round=0,
        noise_multiplier=1.2,
        clip_norm=1.0,
        sampling=SAMPLING,
        clients_sampled=30,
        clients_surviving=30,
        clipped_count_stddev=1.5,
    )
    assert ev1.noise_multiplier < 1.2  # the bit costs budget
    ev2 = DistributedDiscreteGaussianRelease(
        round=1,
        local_stddev=40.0,
        scale=200.0,
        clip_norm=1.0,
        beta=0.6,
        dimension=1000,
        sampling_mode=SamplingMode.POISSON,
        sample_rate=0.1,
        population=300,
        clients_sampled=30,
        clients_surviving=28,
        min_survivors=20,
    )
    with PrivacyLedger.open(path) as led:
        led.record(ev1)
        led.record(ClipStatistics(round=0, unclipped_fraction=0.4, next_clip_norm=1.1))
        led.record(ev2)
        eps = led.epsilon(delta=1e-5)
        with pytest.raises(PrivacyError, match="cannot compose") as info:
            led.epsilon(delta=1e-5, accountant="prv")
        assert not isinstance(info.value, LedgerCorrupted)
        # Mixing replace-one (fixed-size) with add/remove releases is refused.
        fixed = Sampling.fixed_size(clients_per_round=30, population=300)
        with pytest.raises(PrivacyError, match="cannot compose"):
            led.record(
                GaussianRelease.central(
                    round=5,
                    noise_multiplier=1.0,
                    clip_norm=1.0,
                    sampling=fixed,
                    clients_sampled=30,
                    clients_surviving=30,
                )
            )
    with PrivacyLedger.open(path) as led:
        assert led.events == (
            ev1,
            ClipStatistics(round=0, unclipped_fraction=0.4, next_clip_norm=1.1),
            ev2,
        )
        assert led.epsilon(delta=1e-5) == eps
