"""The privacy report: per-adversary headlines, identity, coverage, banners, non-DP and
deployment directories, files, PNGs, HTML embedding, determinism."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest

import privacy
from privacy import (
    LEDGER_FILENAME,
    ClipStatistics,
    GaussianRelease,
    LedgerCorrupted,
    PrivacyLedger,
    Sampling,
    SamplingMode,
    SkippedRound,
    SkipReason,
    distributed_noise_std,
    epsilon_by_adversary,
    read_ledger,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = {
    "privacy": {"delta": 1e-5, "max_epsilon": 8.0, "colluding_sites": 3},
    "algorithm": {"name": "metasgd"},
    "model": {"kind": "mlp"},
    "data": {"preset": "synthetic", "client_fractions": [0.8, 0.1, 0.1]},
}


def _synthetic_run(run_dir: Path, rounds: int = 12, *, secure_aggregation: bool = True) -> None:
    s = Sampling.poisson(sample_rate=0.1, population=200)
    std = distributed_noise_std(
        noise_multiplier=1.0, clip_norm=1.0, min_survivors=15, assumed_colluding_clients=3
    )
    clip = 1.0
    with PrivacyLedger.open(run_dir / LEDGER_FILENAME) as led:
        for r in range(rounds):
            survivors = 15 + (r % 5)
            led.record(
                GaussianRelease.distributed(
                    round=r,
                    per_client_noise_std=std * clip,
                    clip_norm=clip,
                    min_survivors=15,
                    assumed_colluding_clients=3,
                    sampling=s,
                    clients_sampled=20,
                    clients_surviving=survivors,
                    target_noise_multiplier=1.0,
                    client_ids=tuple(f"site{(3 * r + i) % 200:03d}" for i in range(survivors)),
                    secure_aggregation=secure_aggregation,
                    min_clients=3,
                ),
                timestamp=f"2026-03-01T10:{r:02d}:00+00:00",
            )
            clip *= 0.97
            led.record(
                ClipStatistics(round=r, unclipped_fraction=0.4 + 0.01 * r, next_clip_norm=clip),
                timestamp=f"2026-03-01T10:{r:02d}:30+00:00",
            )


def test_report_files_and_pngs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _synthetic_run(run)
    paths = write_report(run, CONFIG, tmp_path / "out")
    for p in (paths.json, paths.markdown, paths.html, *paths.pngs):
        assert p.exists() and p.stat().st_size > 0
    names = sorted(p.name for p in paths.pngs)
    assert names == [
        "clipped_fraction.png",
        "epsilon_vs_rounds.png",
        "noise_and_clip.png",
        "participation.png",
        "per_client_epsilon.png",
    ]
    html = paths.html.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == 5
    for b64 in embedded:
        assert base64.b64decode(b64)[:8] == PNG_MAGIC
    assert {base64.b64decode(b) for b in embedded} == {p.read_bytes() for p in paths.pngs}
    assert "http" not in html.replace("https://", "")  # no external resources

    report = json.loads(paths.json.read_text())
    assert report["schema"] == 2 and report["dp"] is True and report["delta"] == 1e-5
    # One headline per adversary, equal to the library's figure for the same ledger.
    expected = epsilon_by_adversary(read_ledger(run / LEDGER_FILENAME), delta=1e-5)
    head = report["headline"]
    assert set(head) == {"coordinator", "outside_observer"}
    assert head["coordinator"]["epsilon"] == pytest.approx(expected.coordinator.epsilon)
    assert head["coordinator"]["worst_client"] == expected.coordinator.worst_client
    assert head["coordinator"]["amplification"] is False
    assert head["coordinator"]["relation"] == "zero_out"
    assert head["outside_observer"]["epsilon"] == pytest.approx(expected.outside_observer.epsilon)
    assert "e^ε" in head["coordinator"]["reading"]
    curve = report["epsilon_curves"]["coordinator"]
    assert curve["epsilon"] == sorted(curve["epsilon"])  # ε never decreases
    assert curve["epsilon"][-1] == pytest.approx(expected.coordinator.epsilon)
    assert report["accountants"]["gdp"]["upper_bound"] is False
    assert (
        report["accountants"]["pld"]["coordinator"] <= report["accountants"]["rdp"]["coordinator"]
    )
    assert len(report["rounds"]) == 12
    assert report["rounds"][3]["clipped_fraction"] == pytest.approx(1 - 0.43)
    assert report["per_client_epsilon"][expected.coordinator.worst_client] == pytest.approx(
        expected.coordinator.epsilon
    )
    trust = " ".join(report["trust"])
    assert "honest-but-curious" in trust and "c = 3" in trust and "Malicious coordinator" in trust
    assert any("zero-out" in r for r in report["statements"]["relations"])
    assert "Poisson" in report["statements"]["sampling"]
    assert "σ = " in report["mechanism"] and "secure aggregation on ×12" in report["mechanism"]
    assert "validation and 0 test" not in report["clients"]["statement"]
    md = paths.markdown.read_text()
    assert "What is NOT protected" in md and "![epsilon_vs_rounds.png]" in md
    assert "| coordinator |" in md and "INSECURE" not in md


def test_report_for_central_noise_says_no_guarantee_against_the_coordinator(
    tmp_path: Path,
) -> None:
    s = Sampling.fixed_size(clients_per_round=10, population=100)
    with PrivacyLedger.open(tmp_path / LEDGER_FILENAME) as led:
        for r in range(3):
            led.record(
                GaussianRelease.central(
                    round=r,
                    noise_multiplier=2.0,
                    clip_norm=1.0,
                    sampling=s,
                    clients_sampled=10,
                    clients_surviving=10,
                    client_ids=[f"c{(r + i) % 100}" for i in range(10)],
                )
            )
    cfg = {"privacy": {"delta": 1e-5, "insecure_seed": 7}}
    report = privacy.build_report(read_ledger(tmp_path / LEDGER_FILENAME), cfg)
    coord = report["headline"]["coordinator"]
    assert coord["guaranteed"] is False and coord["epsilon"] is None
    assert coord["reading"].startswith("No differential-privacy guarantee against the coordinator")
    assert report["headline"]["outside_observer"]["guaranteed"] is True
    # Finding 5: fixed-size rounds state replace-one, not "added or removed".
    rel = " ".join(report["statements"]["relations"])
    assert "replace-one" in rel and "add-remove" not in rel
    # Seeded noise gets a loud banner at the top of every rendering.
    assert report["seeded_noise"] is True and "INSECURE TEST MODE" in report["banner"]
    paths = write_report(tmp_path, cfg, tmp_path / "out")
    assert paths.markdown.read_text().splitlines()[2].startswith("> **⚠ INSECURE TEST MODE")
    assert 'class="banner"' in paths.html.read_text()


def test_report_of_a_non_dp_run_says_no_dp_guarantee(tmp_path: Path) -> None:
    cfg = {"privacy": {"enabled": False, "delta": 1e-5}}
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {
                "algorithm": "fedavg",
                "model": {"kind": "mlp"},
                "clients": {"train": 8, "val": 1, "test": 1},
                "test": {"global_accuracy": 0.7, "personalized_accuracy": 0.8, "num_clients": 1},
            }
        )
    )
    paths = write_report(tmp_path, cfg, tmp_path / "out")
    report = json.loads(paths.json.read_text())
    assert report["dp"] is False
    for h in report["headline"].values():
        assert h["guaranteed"] is False and "did not use differential privacy" in h["reading"]
    assert report["utility"]["global_accuracy"] == 0.7
    assert (
        "1 validation and 1 test client(s) are never trained on" in report["clients"]["statement"]
    )
    assert "no DP guarantee" in paths.markdown.read_text()
    # With privacy on, a missing ledger is an error, never "no DP".
    with pytest.raises(LedgerCorrupted, match="missing"):
        write_report(tmp_path, {"privacy": {"enabled": True, "delta": 1e-5}}, tmp_path / "x")


def test_deployment_directory_with_site_ledgers_run_identity_and_utility(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "deploy"
    run.mkdir()
    _synthetic_run(run, rounds=3)
    (run / "sites" / "alpha").mkdir(parents=True)
    _synthetic_run(run / "sites" / "alpha", rounds=2)
    meta = privacy.run_metadata(
        {"privacy": {"delta": 1e-5}},
        started_at="2026-03-01T09:59:00+00:00",
        finished_at="2026-03-01T10:03:00+00:00",
        kind="deployment",
        code_version="abc123",
    )
    (run / "run.json").write_text(json.dumps(meta))
    (run / "summary.json").write_text(
        json.dumps(
            {
                "clients": {"train": 3, "val": 0, "test": 1},
                "test": {"global_accuracy": 0.5, "personalized_accuracy": 0.6, "num_clients": 1},
            }
        )
    )
    from secure_fml.cli import main

    # No config.json in a deployment directory: the CLI needs δ and says so.
    assert main(["report", str(run)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["report", str(run), "--delta", "1e-5"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["run"]["kind"] == "deployment" and report["run"]["code_version"] == "abc123"
    assert report["run"]["config_hash"] == meta["config_hash"]
    assert report["run"]["library_versions"]["dp-accounting"]
    assert report["run"]["started_at"] == "2026-03-01T09:59:00+00:00"
    [site] = report["site_ledgers"]
    assert site["site"] == "alpha" and site["status"] == "verified" and site["entries"] == 4
    assert site["ledger"] == "sites/alpha/privacy_ledger.jsonl"
    assert report["utility"]["personalized_accuracy"] == 0.6
    md = (run / "report.md").read_text()
    assert "[sites/alpha/privacy_ledger.jsonl](sites/alpha/privacy_ledger.jsonl)" in md
    assert "personalized" not in md or "60.00%" in md


def test_sample_secret_reports_publish_neither_ids_nor_counts(tmp_path: Path) -> None:
    s = Sampling.poisson(sample_rate=0.3, population=50)
    with PrivacyLedger.open(tmp_path / LEDGER_FILENAME) as led:
        led.record(
            SkippedRound(
                round=0,
                reason=SkipReason.TOO_FEW_SAMPLED,
                clients_sampled=1,
                required=2,
                sampling_mode=SamplingMode.POISSON,
                sample_rate=0.3,
                population=50,
                noise_multiplier=2.0,
                sample_secret=True,
            )
        )
        for r in (1, 2):
            led.record(
                GaussianRelease.central(
                    round=r,
                    noise_multiplier=2.0,
                    clip_norm=1.0,
                    sampling=s,
                    clients_sampled=15,
                    clients_surviving=15,
                    client_ids=[f"c{i}" for i in range(15)],
                    sample_secret=True,
                    min_clients=2,
                )
            )
    report = privacy.build_report(read_ledger(tmp_path / LEDGER_FILENAME), {"delta": 1e-5})
    assert report["headline"]["outside_observer"]["amplification"] is True
    assert report["participation"] is None and report["per_client_epsilon"] is None
    assert all(r["clients_sampled"] is None for r in report["rounds"])
    assert report["rounds"][0]["type"] == "SkippedRound"
    assert "neither client ids nor per-round counts" in report["statements"]["sample"]
    text = json.dumps(report)
    assert '"c1"' not in text


def test_plain_reading_numbers() -> None:
    text = privacy.plain_reading(
        math.log(2.0), 1e-5, privacy.Adversary.COORDINATOR, privacy.NeighbouringRelation.ZERO_OUT
    )
    assert "e^ε = 2" in text and "at most 2% of those whose data was" in text
    assert "replaced by zeros" in text
    assert privacy.plain_reading(math.inf, 1e-5, privacy.Adversary.COORDINATOR).startswith(
        "No differential-privacy guarantee"
    )


def test_report_is_deterministic(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _synthetic_run(run, rounds=4)
    a = write_report(run / LEDGER_FILENAME, CONFIG, tmp_path / "a")
    b = write_report(run / LEDGER_FILENAME, CONFIG, tmp_path / "b")
    for x, y in [(a.json, b.json), (a.markdown, b.markdown), (a.html, b.html)]:
        assert x.read_bytes() == y.read_bytes()


def test_report_refuses_corrupted_ledger(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _synthetic_run(run, rounds=3)
    ledger = run / LEDGER_FILENAME
    ledger.write_bytes(ledger.read_bytes()[:-10])
    with pytest.raises(LedgerCorrupted):
        write_report(run, CONFIG, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_requires_delta(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _synthetic_run(run, rounds=2)
    with pytest.raises(privacy.ConfigError, match="delta"):
        write_report(run, {}, tmp_path / "out")
