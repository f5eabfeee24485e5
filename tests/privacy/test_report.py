"""Report generation from a synthetic ledger: files, PNGs, HTML embedding, determinism."""

from __future__ import annotations

import base64
import json
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
    distributed_noise_std,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = {"privacy": {"delta": 1e-5, "max_epsilon": 8.0, "collusion_threshold": 3}}


def _synthetic_run(run_dir: Path, rounds: int = 12) -> None:
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
    ]
    html = paths.html.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == 4
    for png in paths.pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
    for b64 in embedded:
        assert base64.b64decode(b64)[:8] == PNG_MAGIC
    on_disk = {p.read_bytes() for p in paths.pngs}
    assert {base64.b64decode(b) for b in embedded} == on_disk
    assert "http" not in html.replace("https://", "")  # no external resources

    report = json.loads(paths.json.read_text())
    assert report["delta"] == 1e-5
    assert set(report["epsilon"]) == {"rdp", "prv", "gdp"}
    assert report["epsilon"]["rdp"] > 0
    curve = report["epsilon_curves"]["rdp"]
    assert curve["epsilon"] == sorted(curve["epsilon"])  # ε never decreases
    assert report["ledger"]["first_timestamp"] == "2026-03-01T10:00:00+00:00"
    assert len(report["rounds"]) == 12
    assert report["rounds"][3]["clipped_fraction"] == pytest.approx(1 - 0.43)
    st = report["statements"]
    assert "client" in st["privacy_unit"] and "honest-but-curious" in st["trust_assumptions"]
    assert "3 colluding" in st["trust_assumptions"]
    assert "Poisson" in st["sampling"] and "distributed" in st["noise_placement"]
    assert any("number" in x.lower() for x in report["not_protected"])
    md = paths.markdown.read_text()
    assert "What is NOT protected" in md and "![epsilon_vs_rounds.png]" in md


def test_report_is_deterministic(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _synthetic_run(run, rounds=4)
    a = write_report(run / LEDGER_FILENAME, CONFIG, tmp_path / "a")
    b = write_report(run, CONFIG, tmp_path / "b")
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
