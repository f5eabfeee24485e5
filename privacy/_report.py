"""Privacy budget report: a pure function of the ledger plus the run config.

``build_report(entries, config)`` returns a JSON-ready dict; ``write_report``
renders it to ``report.json``, ``report.md``, ``report.html`` (PNG plots
embedded as base64 data URIs, so the HTML is self-contained) and the PNG files.
No wall clock is read: the only times in the report are the ledger's own
timestamps, so the same ledger and config always give the same report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy._accounting import ACCOUNTANTS, Accountant, SamplingMode
from privacy._events import (
    ClipStatistics,
    DistributedDiscreteGaussianRelease,
    GaussianRelease,
    RecordLevelRelease,
)
from privacy._ledger import LedgerEntry, read_ledger
from privacy._noise import NoisePlacement
from privacy._validation import require_probability
from privacy.errors import ConfigError, PrivacyError

__all__ = [
    "LEDGER_FILENAME",
    "REPORT_SCHEMA_VERSION",
    "ReportPaths",
    "build_report",
    "write_report",
]

LEDGER_FILENAME = "privacy_ledger.jsonl"
REPORT_SCHEMA_VERSION = 1
# At most this many points per ε curve; PRV costs up to seconds per
# evaluation when σ varies between rounds, so it gets fewer.
_MAX_CURVE_POINTS = 40
_PRV_CURVE_POINTS = 6


@dataclass(frozen=True)
class ReportPaths:
    """Files written by :func:`write_report`."""

    json: Path
    markdown: Path
    html: Path
    pngs: tuple[Path, ...]


def _cfg(config: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = config.get("privacy")
    return inner if isinstance(inner, Mapping) else config


def _curve_points(n: int, limit: int | None = None) -> list[int]:
    k = _MAX_CURVE_POINTS if limit is None else limit
    if n <= k:
        return list(range(1, n + 1))
    step = n / k
    pts = sorted({max(1, round(step * (i + 1))) for i in range(k)})
    if pts[-1] != n:
        pts.append(n)
    return pts


def _epsilon_curves(
    releases: Sequence[GaussianRelease | DistributedDiscreteGaussianRelease], delta: float
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in ACCOUNTANTS:
        points = _curve_points(len(releases), _PRV_CURVE_POINTS if name == "prv" else None)
        acc = Accountant(name)
        rounds: list[int] = []
        eps: list[float | None] = []
        note = None
        done = 0
        try:
            for p in points:
                while done < p:
                    releases[done].apply_to(acc)
                    done += 1
                e = acc.get_epsilon(delta)
                rounds.append(releases[p - 1].round)
                # An unbounded ε is stored as None (JSON has no infinity).
                eps.append(e if math.isfinite(e) else None)
        except PrivacyError as exc:
            note = f"not applicable: {exc}"
        out[name] = {
            "description": ACCOUNTANTS[name],
            "rounds": rounds,
            "epsilon": eps,
            "final": (eps[-1] if eps and note is None else None),
            "note": note,
        }
    return out


def _describe_sampling(releases: Sequence[Any]) -> str:
    modes = Counter(r.sampling_mode for r in releases)
    parts = []
    for mode, count in sorted(modes.items(), key=lambda kv: kv[0].value):
        rates = sorted({r.sample_rate for r in releases if r.sampling_mode is mode})
        rate_txt = ", ".join(f"{q:.4g}" for q in rates[:5]) + (" ..." if len(rates) > 5 else "")
        if mode is SamplingMode.POISSON:
            parts.append(
                f"{count} round(s) with Poisson sampling (each client joins independently "
                f"with probability q = {rate_txt}); accounted as the Poisson-subsampled "
                "Gaussian mechanism under add/remove-one-client neighbours."
            )
        elif mode is SamplingMode.FIXED_SIZE:
            parts.append(
                f"{count} round(s) with fixed-size sampling without replacement (m/N = "
                f"{rate_txt}); accounted under the replace-one-client relation with the "
                "population size public (Wang, Balle, Kasiviswanathan 2019), sensitivity 2C."
            )
        else:
            parts.append(
                f"{count} round(s) with full participation; no amplification by sampling "
                "is claimed (q = 1)."
            )
    return " ".join(parts) if parts else "No releases recorded."


def _describe_placement(releases: Sequence[Any], colluders_cfg: int | None) -> tuple[str, str]:
    dist = [
        r
        for r in releases
        if isinstance(r, DistributedDiscreteGaussianRelease)
        or r.placement is NoisePlacement.DISTRIBUTED
    ]
    central = [
        r
        for r in releases
        if isinstance(r, GaussianRelease) and r.placement is NoisePlacement.CENTRAL
    ]
    k_values = sorted({r.assumed_colluding_clients for r in dist})
    k_txt = ", ".join(str(k) for k in k_values) if k_values else "0"
    placement = []
    trust = [
        "The server is assumed honest-but-curious: it follows the protocol (sends every "
        "client the same model, aggregates as specified) but may try to learn from "
        "everything it sees."
    ]
    if dist:
        placement.append(
            f"{len(dist)} release(s) used distributed noise: every client added its share "
            "of Gaussian (or discrete Gaussian) noise before secure aggregation, sized so "
            "that the minimum accepted set of survivors carries the target noise; the "
            "accountant was charged with the noise actually present given the survivors."
        )
        trust.append(
            "With distributed noise the guarantee holds against the server and up to "
            f"{k_txt} colluding client(s) per round (the noise of colluders is not counted)"
            + (
                f"; the configured collusion threshold is {colluders_cfg}."
                if colluders_cfg is not None
                else "."
            )
            + " It relies on secure aggregation hiding individual noisy updates."
        )
    if central:
        placement.append(
            f"{len(central)} release(s) used central noise: the server added N(0, σ²C²) "
            "to the sum of clipped updates."
        )
        trust.append(
            "With central noise the server itself is trusted to add the noise and to "
            "discard the un-noised sum; against the server (who may see individual or "
            "summed updates before noising) these releases give no protection."
        )
    return " ".join(placement) or "No releases recorded.", " ".join(trust)


def _not_protected(
    releases: Sequence[Any], delta: float, population: int | None, record_level: bool = False
) -> list[str]:
    items = [
        "Who participates and how many: the number of clients sampled and surviving in "
        "each round, and (to the server) their identities, are not protected.",
        "Timing and traffic metadata (when clients connect, upload sizes, dropouts).",
        "The final and intermediate global models are public outputs; their privacy is "
        "exactly what this report accounts for, nothing more.",
        "Anything not recorded in the ledger: hyper-parameter tuning runs, evaluation "
        "metrics sent in clear, restarts of the whole run with fresh noise.",
        "A malicious (not honest-but-curious) server, e.g. one sending different models "
        "to different clients, is outside this guarantee unless the protocol aborts it.",
        "Floating-point Gaussian noise is hardened (sum of several CSPRNG Gaussians, as "
        "Opacus' secure mode) but is not an exact sampler.",
    ]
    if not record_level:
        items.insert(
            3,
            "Record-level privacy is not separately bounded: the guarantee is per client "
            "(all of a client's records together); within-client records get no tighter "
            "or separate ε.",
        )
    if population is not None and delta >= 1.0 / population:
        items.append(
            f"δ = {delta:g} is not small compared with 1/N = {1.0 / population:.3g}: a "
            "mechanism that leaks one client's data entirely could satisfy it."
        )
    if any(r.sampling_mode is SamplingMode.FIXED_SIZE for r in releases):
        items.append(
            "Fixed-size rounds are accounted under replace-one neighbours with N public; "
            "adding or removing a client from the population is not the unit there."
        )
    return items


def _record_level(entries: Sequence[LedgerEntry], delta: float) -> dict[str, Any] | None:
    """Per-site record-level ε (each site's own DP-SGD steps; no amplification across sites)."""
    events = [e.event for e in entries if isinstance(e.event, RecordLevelRelease)]
    if not events:
        return None
    sites: dict[str, list[RecordLevelRelease]] = {}
    for ev in events:
        sites.setdefault(ev.site_id, []).append(ev)
    rows: list[dict[str, Any]] = []
    for site, evs in sites.items():
        eps: dict[str, float | None] = {}
        for name in ("rdp", "prv"):
            acc = Accountant(name)
            for ev in evs:
                ev.apply_to(acc)
            e = acc.get_epsilon(delta)
            eps[name] = e if math.isfinite(e) else None
        rows.append(
            {
                "site": site,
                "unit": sorted({ev.unit for ev in evs}),
                "releases": len(evs),
                "steps": sum(ev.total_steps for ev in evs),
                "noise_multipliers": sorted({ev.noise_multiplier for ev in evs}),
                "clip_norms": sorted({ev.clip_norm for ev in evs}),
                "sample_rates": sorted({q for ev in evs for q in ev.sample_rates}),
                "epsilon": eps,
            }
        )
    worst = {
        name: max((r["epsilon"][name] for r in rows), key=lambda v: math.inf if v is None else v)
        for name in ("rdp", "prv")
    }
    return {
        "delta": delta,
        "sites": rows,
        "worst_site_epsilon": worst,
        "statement": (
            "Record-level (person-level) DP inside each site: every local gradient step "
            "Poisson-samples the site's units, clips each unit's gradient to C_r and adds "
            "N(0, σ²C_r²) before the step is used, so each step is a Poisson-subsampled "
            "Gaussian under add/remove-one-unit neighbours. A site's ε composes all its "
            "steps in every round it joined; sites are accounted separately and no "
            "amplification across sites or by client sampling is claimed, so the guarantee "
            "holds against the coordinator and every other site (they see at most the "
            "site's noised update). The headline is the worst site."
        ),
    }


def build_report(entries: Sequence[LedgerEntry], config: Mapping[str, Any]) -> dict[str, Any]:
    """The report as a JSON-ready dict (deterministic in ``entries`` and ``config``)."""
    cfg = _cfg(config)
    if "delta" not in cfg:
        raise ConfigError("run config must give privacy.delta for the report")
    delta = require_probability("delta", cfg["delta"])
    population = cfg.get("population")
    colluders = cfg.get("collusion_threshold", cfg.get("assumed_colluding_clients"))
    unit = str(cfg.get("privacy_unit", "client"))
    releases = [
        e.event for e in entries if not isinstance(e.event, ClipStatistics | RecordLevelRelease)
    ]
    if population is None:
        pops = {r.population for r in releases if r.population is not None}
        population = max(pops) if pops else None
    stats = {e.event.round: e.event for e in entries if isinstance(e.event, ClipStatistics)}
    rounds_table = []
    participation: Counter[str] = Counter()
    ids_recorded = False
    for r in releases:
        row: dict[str, Any] = {
            "round": r.round,
            "type": r.kind,
            "noise_multiplier": r.noise_multiplier,
            "clip_norm": r.clip_norm,
            "placement": (
                NoisePlacement.DISTRIBUTED.value
                if isinstance(r, DistributedDiscreteGaussianRelease)
                else r.placement.value
            ),
            "sampling_mode": r.sampling_mode.value,
            "sample_rate": r.sample_rate,
            "clients_sampled": r.clients_sampled,
            "clients_surviving": r.clients_surviving,
        }
        if r.round in stats:
            row["clipped_fraction"] = 1.0 - stats[r.round].unclipped_fraction
        rounds_table.append(row)
        if r.client_ids is not None:
            ids_recorded = True
            participation.update(r.client_ids)
    curves = _epsilon_curves(releases, delta)
    record_level = _record_level(entries, delta)
    placement_txt, trust_txt = _describe_placement(releases, colluders)
    timestamps = [e.timestamp for e in entries]
    budget = cfg.get("max_epsilon")
    return {
        "schema": REPORT_SCHEMA_VERSION,
        "ledger": {
            "entries": len(entries),
            "releases": len(releases),
            "head_hash": entries[-1].hash if entries else None,
            "first_timestamp": timestamps[0] if timestamps else None,
            "last_timestamp": timestamps[-1] if timestamps else None,
        },
        "delta": delta,
        "max_epsilon": budget,
        "epsilon": {name: c["final"] for name, c in curves.items()},
        "epsilon_curves": curves,
        "rounds": rounds_table,
        "participation": dict(sorted(participation.items())) if ids_recorded else None,
        "record_level": record_level,
        "statements": {
            "privacy_unit": (
                f"The privacy unit is the {unit}: the guarantee bounds how much everything "
                f"released can change when one {unit}'s entire contribution (all its "
                "records, its whole update including the Meta-SGD step sizes) is added or "
                "removed. Each update was clipped to L2 norm C before noise."
            ),
            "delta": (
                f"δ = {delta:g}"
                + (
                    f" for a population of N = {population} clients (1/N = {1 / population:.3g})."
                    if population
                    else "."
                )
            ),
            "sampling": _describe_sampling(releases),
            "noise_placement": placement_txt,
            "trust_assumptions": trust_txt,
        },
        "not_protected": _not_protected(releases, delta, population, record_level is not None),
    }


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _plots(report: Mapping[str, Any]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    out: dict[str, bytes] = {}

    def save(fig: Figure, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        out[name] = buf.getvalue()

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for name, c in report["epsilon_curves"].items():
        if c["note"] is None and c["rounds"]:
            ys = [math.nan if e is None else e for e in c["epsilon"]]
            ax.plot(c["rounds"], ys, marker=".", label=name)
    if report["max_epsilon"] is not None:
        ax.axhline(float(report["max_epsilon"]), color="red", linestyle="--", label="max ε")
    ax.set_xlabel("round")
    ax.set_ylabel(f"ε at δ={report['delta']:g}")
    ax.set_title("Privacy spent vs rounds")
    ax.legend()
    save(fig, "epsilon_vs_rounds.png")

    rows = report["rounds"]
    fig = Figure(figsize=(6.4, 5.0))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot([r["round"] for r in rows], [r["noise_multiplier"] for r in rows], marker=".")
    ax1.set_ylabel("noise multiplier σ")
    ax2.plot([r["round"] for r in rows], [r["clip_norm"] for r in rows], marker=".", color="C1")
    ax2.set_ylabel("clip norm C")
    ax2.set_xlabel("round")
    ax1.set_title("Noise and clipping per round")
    save(fig, "noise_and_clip.png")

    clipped = [(r["round"], r["clipped_fraction"]) for r in rows if "clipped_fraction" in r]
    if clipped:
        fig = Figure(figsize=(6.4, 3.5))
        ax = fig.subplots()
        ax.plot([c[0] for c in clipped], [c[1] for c in clipped], marker=".")
        ax.set_xlabel("round")
        ax.set_ylabel("fraction clipped (noisy)")
        ax.set_title("Fraction of clients clipped (DP estimate)")
        save(fig, "clipped_fraction.png")

    part = report["participation"]
    if part:
        counts = sorted(part.values(), reverse=True)
        fig = Figure(figsize=(6.4, 3.5))
        ax = fig.subplots()
        ax.bar(range(len(counts)), counts, width=1.0)
        ax.set_xlabel("client (sorted by participation)")
        ax.set_ylabel("rounds participated")
        ax.set_title(f"Participation per client ({len(counts)} clients)")
        save(fig, "participation.png")
    return out


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _markdown(report: Mapping[str, Any], pngs: Sequence[str]) -> str:
    s = report["statements"]
    lines = [
        "# Privacy budget report",
        "",
        f"Ledger: {report['ledger']['releases']} release(s), "
        f"{report['ledger']['entries']} entries, head `{report['ledger']['head_hash']}`, "
        f"{report['ledger']['first_timestamp']} → {report['ledger']['last_timestamp']}.",
        "",
        "## Privacy spent",
        "",
        "| accountant | ε | note |",
        "|---|---|---|",
    ]
    for name, c in report["epsilon_curves"].items():
        lines.append(f"| {name} | {_fmt(c['final'])} | {c['note'] or c['description']} |")
    lines += [
        "",
        f"δ = {report['delta']:g}; max ε = {_fmt(report['max_epsilon'])}.",
        "",
    ]
    rl = report.get("record_level")
    if rl:
        lines += [
            "## Record-level privacy per site",
            "",
            rl["statement"],
            "",
            "| site | unit | releases | steps | σ | C_r | q | ε (rdp) | ε (prv) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rl["sites"]:
            lines.append(
                f"| {r['site']} | {', '.join(r['unit'])} | {r['releases']} | {r['steps']} | "
                f"{', '.join(_fmt(x) for x in r['noise_multipliers'])} | "
                f"{', '.join(_fmt(x) for x in r['clip_norms'])} | "
                f"{', '.join(_fmt(x) for x in r['sample_rates'])} | "
                f"{_fmt(r['epsilon']['rdp'])} | {_fmt(r['epsilon']['prv'])} |"
            )
        w = rl["worst_site_epsilon"]
        lines += [
            "",
            f"Headline (worst site), δ = {rl['delta']:g}: ε = {_fmt(w['rdp'])} (rdp), "
            f"{_fmt(w['prv'])} (prv).",
            "",
        ]
    lines += [
        "## What is protected",
        "",
        f"- **Privacy unit.** {s['privacy_unit']}",
        f"- **δ.** {s['delta']}",
        f"- **Sampling.** {s['sampling']}",
        f"- **Noise placement.** {s['noise_placement']}",
        f"- **Trust assumptions.** {s['trust_assumptions']}",
        "",
        "## What is NOT protected",
        "",
    ]
    lines += [f"- {item}" for item in report["not_protected"]]
    lines += ["", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in pngs]
    lines += [
        "",
        "## Rounds",
        "",
        "| round | σ | C | placement | sampling | q | sampled | surviving |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rounds"]:
        lines.append(
            f"| {r['round']} | {_fmt(r['noise_multiplier'])} | {_fmt(r['clip_norm'])} | "
            f"{r['placement']} | {r['sampling_mode']} | {_fmt(r['sample_rate'])} | "
            f"{r['clients_sampled']} | {r['clients_surviving']} |"
        )
    return "\n".join(lines) + "\n"


def _html(markdown_report: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    r = markdown_report
    s = r["statements"]
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Privacy budget report</title>',
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}</style>",
        "</head><body><h1>Privacy budget report</h1>",
        f"<p>Ledger: {r['ledger']['releases']} release(s), head "
        f"<code>{esc(str(r['ledger']['head_hash']))}</code>, "
        f"{esc(str(r['ledger']['first_timestamp']))} → "
        f"{esc(str(r['ledger']['last_timestamp']))}.</p>",
        "<h2>Privacy spent</h2><table><tr><th>accountant</th><th>ε</th><th>note</th></tr>",
    ]
    for name, c in r["epsilon_curves"].items():
        parts.append(
            f"<tr><td>{esc(name)}</td><td>{esc(_fmt(c['final']))}</td>"
            f"<td>{esc(c['note'] or c['description'])}</td></tr>"
        )
    parts.append(f"</table><p>δ = {r['delta']:g}; max ε = {esc(_fmt(r['max_epsilon']))}.</p>")
    parts.append("<h2>What is protected</h2><ul>")
    for label, key in [
        ("Privacy unit", "privacy_unit"),
        ("δ", "delta"),
        ("Sampling", "sampling"),
        ("Noise placement", "noise_placement"),
        ("Trust assumptions", "trust_assumptions"),
    ]:
        parts.append(f"<li><b>{esc(label)}.</b> {esc(s[key])}</li>")
    parts.append("</ul><h2>What is NOT protected</h2><ul>")
    parts += [f"<li>{esc(item)}</li>" for item in r["not_protected"]]
    parts.append("</ul><h2>Plots</h2>")
    for name, data in images.items():
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{esc(name)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_report(
    run_dir_or_ledger_path: str | os.PathLike[str],
    config: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
) -> ReportPaths:
    """Verify the ledger, build the report and write JSON, Markdown, HTML and PNGs.

    ``run_dir_or_ledger_path`` is a run directory holding ``privacy_ledger.jsonl``
    or the ledger file itself. A corrupted ledger raises
    :class:`~privacy.LedgerCorrupted`; nothing is written then.
    """
    src = Path(run_dir_or_ledger_path)
    ledger_path = src / LEDGER_FILENAME if src.is_dir() else src
    entries = read_ledger(ledger_path)
    report = build_report(entries, config)
    images = _plots(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = sorted(images)
    pngs = []
    for name, data in images.items():
        _atomic_write(out / name, data)
        pngs.append(out / name)
    json_path, md_path, html_path = out / "report.json", out / "report.md", out / "report.html"
    _atomic_write(
        json_path,
        (json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8"),
    )
    _atomic_write(md_path, _markdown(report, sorted(images)).encode("utf-8"))
    _atomic_write(html_path, _html(report, images).encode("utf-8"))
    return ReportPaths(json=json_path, markdown=md_path, html=html_path, pngs=tuple(pngs))
