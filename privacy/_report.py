"""The privacy report a privacy officer signs: a pure function of the ledger and run files.

``build_report(entries, config, summary=..., run=..., site_ledgers=...)``
returns a JSON-ready dict; ``write_report(run_dir, config, out_dir)`` reads the
run directory (``privacy_ledger.jsonl``, ``summary.json``, ``run.json``, the
sites' ledgers under ``sites/<name>/``) and renders ``report.json``,
``report.md``, ``report.html`` (PNG plots embedded as base64, so the HTML is
self-contained) and the PNG files. No wall clock is read: the only times in
the report are the ledger's and ``run.json``'s own, so the same files always
give the same report.

What it states, in order: one headline ε per adversary (the worst client) with
a plain-language reading of (ε, δ); a banner when the noise was seeded; run
identity (config hash, code and library versions, start and end); a one-line
mechanism summary; algorithm and model; which clients are covered; trust
assumptions; the sites' own ledgers; utility of the released model next to the
privacy; then the detail (relations, per-round table, plots, what is not
protected). A run without DP says "no DP guarantee" instead of a number.
"""

from __future__ import annotations

import base64
import hashlib
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

from privacy._accounting import ACCOUNTANTS, create_accountant
from privacy._adversary import (
    Adversary,
    AdversaryEpsilon,
    EpsilonCache,
    adversary_epsilon,
)
from privacy._durable import atomic_write_bytes
from privacy._events import (
    ROUND_ANNOTATIONS,
    ClipStatistics,
    DistributedDiscreteGaussianRelease,
    GaussianRelease,
    RecordLevelRelease,
    RoundNotApplied,
    SkippedRound,
)
from privacy._ledger import LedgerEntry, read_ledger
from privacy._mechanisms import NeighbouringRelation, SamplingMode
from privacy._noise import NoisePlacement
from privacy._validation import require_probability
from privacy.errors import ConfigError, LedgerCorrupted, PrivacyError

__all__ = [
    "LEDGER_FILENAME",
    "REPORT_SCHEMA_VERSION",
    "RUN_METADATA_FILENAME",
    "ReportPaths",
    "build_report",
    "config_hash",
    "plain_reading",
    "run_metadata",
    "write_report",
]

LEDGER_FILENAME = "privacy_ledger.jsonl"
RUN_METADATA_FILENAME = "run.json"
SUMMARY_FILENAME = "summary.json"
REPORT_SCHEMA_VERSION = 2
# At most this many points per ε curve (each point recomputes every client).
_MAX_CURVE_POINTS = 25
# Libraries whose versions identify a run's privacy code path.
_LIBRARIES = ("secure-fml", "torch", "numpy", "scipy", "opacus", "dp-accounting", "cryptography")

SEEDED_BANNER = (
    "INSECURE TEST MODE: the DP noise of this run was generated from a seed. Anyone who "
    "knows or guesses the seed can subtract the noise and recover client updates. The ε "
    "below describes the mechanism, but this run must not be released as private."
)


@dataclass(frozen=True)
class ReportPaths:
    """Files written by :func:`write_report`."""

    json: Path
    markdown: Path
    html: Path
    pngs: tuple[Path, ...]


# --------------------------------------------------------------------------
# Run metadata (written by the engine; read here)
# --------------------------------------------------------------------------


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a run config (the run's identity)."""
    return hashlib.sha256(_canonical(dict(config))).hexdigest()


def run_metadata(
    config: Mapping[str, Any],
    *,
    started_at: str,
    finished_at: str | None = None,
    kind: str = "simulation",
    code_version: str | None = None,
    noise_seeded: bool | None = None,
    site_ledgers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``run.json`` a run directory should carry (the engine writes it).

    Library versions come from the installed distributions; ``code_version``
    is what the caller knows (e.g. a git commit). Timestamps are ISO-8601 and
    given by the caller, so this function reads no clock.
    """
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for lib in _LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "kind": kind,
        "config_hash": config_hash(config),
        "code_version": code_version,
        "library_versions": versions,
        "started_at": started_at,
        "finished_at": finished_at,
        "noise_seeded": noise_seeded,
        "site_ledgers": dict(site_ledgers or {}),
    }


# --------------------------------------------------------------------------
# Plain language
# --------------------------------------------------------------------------


_CHANGE = {
    NeighbouringRelation.ADD_REMOVE: "adding or removing that client",
    NeighbouringRelation.REPLACE_ONE: "replacing that client's data by anyone else's",
    NeighbouringRelation.ZERO_OUT: "using that client's data or not (its update replaced by zeros)",
}


def plain_reading(
    epsilon: float,
    delta: float,
    adversary: Adversary,
    relation: NeighbouringRelation = NeighbouringRelation.ADD_REMOVE,
) -> str:
    """What (ε, δ) means for one client, against ``adversary``, in words."""
    who = adversary.describe()
    if not math.isfinite(epsilon):
        return f"No differential-privacy guarantee against {who}."
    factor = math.exp(epsilon) if epsilon < 700 else math.inf
    tpr = min(1.0, factor * 0.01 + delta)
    return (
        f"Against {who}: for any one client, {_CHANGE[relation]} changes the probability "
        f"of anything this adversary sees by at most a factor e^ε = {factor:.3g}, except "
        f"with probability δ = {delta:g}. Equivalently, any test of 'was this client's data "
        f"used?' that wrongly accuses 1% of the clients whose data was not used can correctly "
        f"detect at most {100 * tpr:.3g}% of those whose data was."
    )


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return "∞ (no guarantee)" if x == "inf" else x
    if isinstance(x, float):
        if math.isinf(x):
            return "∞ (no guarantee)"
        return f"{x:.4g}"
    return str(x)


def _num(x: float) -> float | None:
    # JSON has no infinity: ∞ is written as None with "guaranteed": false beside it.
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    inner = config.get(name)
    return inner if isinstance(inner, Mapping) else {}


def _model_name(model: Any) -> str | None:
    if isinstance(model, Mapping):
        kind = model.get("kind") or model.get("name")
        return None if kind is None else str(kind)
    return None if model is None else str(model)


def _privacy_cfg(config: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = config.get("privacy")
    return inner if isinstance(inner, Mapping) else config


def _releases(entries: Sequence[LedgerEntry]) -> list[Any]:
    return [
        e.event
        for e in entries
        if isinstance(e.event, GaussianRelease | DistributedDiscreteGaussianRelease)
    ]


def _skips(entries: Sequence[LedgerEntry]) -> list[SkippedRound]:
    return [e.event for e in entries if isinstance(e.event, SkippedRound)]


def _range_txt(values: Sequence[float], fmt: str = ".4g") -> str:
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}–{format(hi, fmt)}"


def _mechanism_line(releases: Sequence[Any], skips: Sequence[SkippedRound], accountant: str) -> str:
    if not releases:
        return "No DP release recorded."
    sigmas = [r.noise_multiplier for r in releases]
    clips = [r.clip_norm for r in releases]
    parts = [f"σ = {_range_txt(sigmas)}", f"C = {_range_txt(clips)}"]
    modes = Counter(r.sampling_mode for r in releases)
    samp = []
    for mode in modes:
        rs = [r for r in releases if r.sampling_mode is mode]
        if mode is SamplingMode.POISSON:
            samp.append(f"Poisson q = {_range_txt([r.sample_rate for r in rs])}")
        elif mode is SamplingMode.FIXED_SIZE:
            m = {round(r.sample_rate * (r.population or 0)) for r in rs}
            n = {r.population for r in rs}
            samp.append(
                f"fixed size m/N = {'/'.join(str(x) for x in sorted(m))}/"
                f"{'/'.join(str(x) for x in sorted(x for x in n if x is not None))}"
            )
        else:
            samp.append(
                "all clients (N = " + _range_txt([r.population or 0 for r in rs], "d") + ")"
            )
    parts.append(", ".join(samp))
    parts.append(
        f"{len(releases)} released round(s)" + (f" + {len(skips)} skipped" if skips else "")
    )
    placements = Counter(
        "distributed (discrete Gaussian)"
        if isinstance(r, DistributedDiscreteGaussianRelease)
        else r.placement.value
        for r in releases
    )
    parts.append("noise " + ", ".join(f"{k} ×{v}" for k, v in placements.items()))
    sa = Counter(
        "on"
        if (
            r.in_secure_aggregation
            if isinstance(r, DistributedDiscreteGaussianRelease)
            else r.secure_aggregation
        )
        else ("off" if r.secure_aggregation is False else "not recorded")
        for r in releases
    )
    parts.append("secure aggregation " + ", ".join(f"{k} ×{v}" for k, v in sa.items()))
    parts.append(f"accountant {accountant}")
    return "; ".join(parts) + "."


def _relations(releases: Sequence[Any]) -> list[str]:
    """Finding 5: the relation written per sampling and noise placement."""
    groups: Counter[tuple[str, str, NeighbouringRelation]] = Counter()
    for r in releases:
        placement = "distributed" if r.placement is NoisePlacement.DISTRIBUTED else "central"
        groups[(r.sampling_mode.value, placement, r.relation)] += 1
    out = []
    for (mode, placement, rel), n in sorted(groups.items(), key=lambda kv: kv[0][:2]):
        out.append(
            f"{n} release(s) with {mode} sampling and {placement} noise: the sampling-"
            f"amplified accounting assumes {rel.value.replace('_', '-')} ({rel.describe()})."
        )
    return out


def _describe_sampling(releases: Sequence[Any], skips: Sequence[SkippedRound]) -> str:
    modes = Counter(r.sampling_mode for r in releases)
    parts = []
    for mode, count in sorted(modes.items(), key=lambda kv: kv[0].value):
        rates = sorted({r.sample_rate for r in releases if r.sampling_mode is mode})
        rate_txt = ", ".join(f"{q:.4g}" for q in rates[:5]) + (" ..." if len(rates) > 5 else "")
        if mode is SamplingMode.POISSON:
            parts.append(
                f"{count} round(s) with Poisson sampling (each client joins independently "
                f"with probability q = {rate_txt})."
            )
        elif mode is SamplingMode.FIXED_SIZE:
            parts.append(
                f"{count} round(s) with fixed-size sampling without replacement (m/N = {rate_txt})."
            )
        else:
            parts.append(f"{count} round(s) with full participation (q = 1).")
    if skips:
        reasons = Counter(s.reason.value.replace("_", " ") for s in skips)
        parts.append(
            f"{len(skips)} round(s) were skipped and released nothing ("
            + ", ".join(f"{k}: {v}" for k, v in reasons.items())
            + "); a round is never redrawn."
        )
    return " ".join(parts) if parts else "No releases recorded."


def _trust(
    releases: Sequence[Any], coordinator: AdversaryEpsilon, cfg: Mapping[str, Any]
) -> list[str]:
    out = [
        "Coordinator: assumed honest-but-curious. It follows the protocol (the same model to "
        "every site, aggregation as specified) but keeps and studies everything it sees, "
        "including which sites took part in each round; that is why no amplification by "
        "sampling is claimed against it."
    ]
    dist = [r for r in releases if r.placement is NoisePlacement.DISTRIBUTED]
    if dist:
        rec = coordinator.colluding_sites_recorded
        c_txt = ", ".join(str(c) for c in rec) if rec else "0"
        out.append(
            f"Colluding sites: the distributed noise was sized so that the honest survivors' "
            f"noise alone carries the target noise when up to c = {c_txt} site(s) per round "
            "collude with the coordinator (their own noise shares are not counted)."
        )
        out.append(
            "Malicious coordinator: a coordinator that deviates (drops, forges, shows "
            "different views) is outside this figure unless every site enforces its own "
            "minimum noise and minimum number of peers and refuses otherwise; the ε then "
            "holds only for sites that did."
        )
    if any(r.placement is NoisePlacement.CENTRAL for r in releases):
        out.append(
            "Central noise: the coordinator adds the noise itself and so sees the exact sum; "
            "it must be trusted, and the guarantee against it is none."
        )
    colluders_cfg = cfg.get("colluding_sites", cfg.get("collusion_threshold"))
    if colluders_cfg is not None:
        out.append(f"The run's configuration names {colluders_cfg} colluding site(s).")
    return out


def _not_protected(
    releases: Sequence[Any], delta: float, population: int | None, record_level: bool = False
) -> list[str]:
    items = [
        "Who participates and how many: to the coordinator always (it draws the sample), "
        "and to outside observers unless the run kept the sample secret.",
        "Timing and traffic metadata (when sites connect, upload sizes, dropouts).",
    ]
    if not record_level:
        items.append(
            "Record-level privacy is not separately bounded: the guarantee is per client (all "
            "of a client's records together)."
        )
    items += [
        "Anything not recorded in the ledger: hyper-parameter tuning runs, evaluation metrics "
        "sent in clear, restarts of the whole run with fresh noise.",
        "Floating-point Gaussian noise is hardened (sum of several CSPRNG Gaussians, as "
        "Opacus' secure mode) but is not an exact sampler; the discrete Gaussian inside "
        "secure aggregation is exact.",
    ]
    if population is not None and delta >= 1.0 / population:
        items.append(
            f"δ = {delta:g} is not small compared with 1/N = {1.0 / population:.3g}: a "
            "mechanism that leaks one client's data entirely could satisfy it."
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
            acc = create_accountant(name)
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


def _curve_points(n: int) -> list[int]:
    if n <= _MAX_CURVE_POINTS:
        return list(range(1, n + 1))
    step = n / _MAX_CURVE_POINTS
    pts = sorted({max(1, round(step * (i + 1))) for i in range(_MAX_CURVE_POINTS)})
    if pts[-1] != n:
        pts.append(n)
    return pts


def _curves(
    round_events: Sequence[Any], delta: float, accountant: str, cache: EpsilonCache
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for adv in Adversary:
        rounds, eps = [], []
        note = None
        try:
            for p in _curve_points(len(round_events)):
                r = adversary_epsilon(
                    round_events[:p], adversary=adv, delta=delta, accountant=accountant, cache=cache
                )
                rounds.append(round_events[p - 1].round)
                eps.append(_num(r.epsilon))
        except PrivacyError as exc:
            note = f"not computable: {exc}"
        out[adv.value] = {"rounds": rounds, "epsilon": eps, "note": note}
    return out


def _accountant_table(
    round_events: Sequence[Any], delta: float, cache: EpsilonCache
) -> dict[str, dict[str, Any]]:
    """Each adversary's headline under every upper-bound accountant, plus GDP labelled."""
    table: dict[str, dict[str, Any]] = {}
    for name in ("rdp", "pld", "gdp"):
        cls = ACCOUNTANTS[name]
        row: dict[str, Any] = {"upper_bound": cls.upper_bound, "description": cls.description}
        for adv in Adversary:
            try:
                r = adversary_epsilon(
                    round_events, adversary=adv, delta=delta, accountant=name, cache=cache
                )
                row[adv.value] = _num(r.epsilon) if math.isfinite(r.epsilon) else "inf"
            except PrivacyError as exc:
                row[adv.value] = None
                row.setdefault("notes", []).append(f"{adv.value}: {exc}")
        table[name] = row
    return table


def _utility(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not summary:
        return None
    test = summary.get("test")
    if not isinstance(test, Mapping):
        return {"note": "summary.json has no test evaluation"}
    keys = (
        "global_accuracy",
        "personalized_accuracy",
        "global_loss",
        "personalized_loss",
        "num_clients",
    )
    out: dict[str, Any] = {k: test[k] for k in keys if k in test}
    for k in ("per_client_global", "per_client_personalized"):
        d = test.get(k)
        if isinstance(d, Mapping):
            out[k] = {kk: d[kk] for kk in ("mean", "std", "p10") if kk in d}
    out["evaluated_on"] = (
        "unseen test clients (never trained on); accuracy of the released model before and "
        "after a site's own adaptation"
    )
    return out


def _kind_without_run_json(config: Mapping[str, Any]) -> str:
    """A site's state directory has no ``run.json``; its ``config.json`` names the site."""
    site = config.get("site")
    if isinstance(site, Mapping) and site.get("name"):
        return f"deployed site {site['name']} (its own ledger of what it released)"
    return "simulation" if config.get("data") else "unknown"


def _clients(
    releases: Sequence[Any],
    summary: Mapping[str, Any] | None,
    config: Mapping[str, Any],
    publish_ids: bool,
) -> dict[str, Any]:
    seen: set[str] = set()
    ids_recorded = any(r.client_ids is not None for r in releases)
    for r in releases:
        seen.update(r.client_ids or ())
    out: dict[str, Any] = {
        "contributed": len(seen) if ids_recorded and publish_ids else None,
        "ids_recorded": ids_recorded,
    }
    counts = summary.get("clients") if isinstance(summary, Mapping) else None
    if isinstance(counts, Mapping):
        out.update({k: counts.get(k) for k in ("train", "val", "test")})
    data = config.get("data") if isinstance(config.get("data"), Mapping) else None
    if data is not None and "client_fractions" in data:
        out["client_fractions"] = list(data["client_fractions"])
    parts = []
    if out.get("train") is not None:
        parts.append(f"{out['train']} training client(s) could be sampled and are covered")
    if out.get("val") is not None or out.get("test") is not None:
        parts.append(
            f"{out.get('val') or 0} validation and {out.get('test') or 0} test client(s) are "
            "never trained on: their data enters no release (they only evaluate the released "
            "model), so the guarantee does not concern them"
        )
    if ids_recorded and publish_ids:
        parts.append(f"{len(seen)} client(s) actually contributed to at least one release")
    elif not ids_recorded:
        parts.append(
            "the ledger recorded no client ids, so every release is charged to every client"
        )
    out["statement"] = "; ".join(parts) + "." if parts else "Client split not recorded."
    return out


def _site_ledgers(
    site_ledgers: Mapping[str, str] | None, base: Path | None
) -> list[dict[str, Any]]:
    out = []
    for name, rel in sorted((site_ledgers or {}).items()):
        item: dict[str, Any] = {"site": name, "ledger": rel}
        path = Path(rel) if base is None or Path(rel).is_absolute() else base / rel
        try:
            entries = read_ledger(path)
        except LedgerCorrupted as exc:
            item["status"] = f"unreadable: {exc}"
        else:
            item["status"] = "verified"
            item["entries"] = len(entries)
            item["head_hash"] = entries[-1].hash if entries else None
        out.append(item)
    return out


def _headline_item(
    r: AdversaryEpsilon | None, delta: float, adv: Adversary, dp: bool
) -> dict[str, Any]:
    if r is None or not dp:
        return {
            "adversary": adv.value,
            "guaranteed": False,
            "epsilon": None,
            "reading": f"No DP guarantee against {adv.describe()}: this run did not use "
            "differential privacy.",
        }
    d = r.as_dict()
    d["epsilon"] = _num(r.epsilon)
    d["guaranteed"] = r.guaranteed
    d["reading"] = plain_reading(r.epsilon, delta, adv, r.relation)
    return d


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


def build_report(
    entries: Sequence[LedgerEntry],
    config: Mapping[str, Any],
    *,
    summary: Mapping[str, Any] | None = None,
    run: Mapping[str, Any] | None = None,
    site_ledgers: Sequence[Mapping[str, Any]] | None = None,
    delta: float | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (deterministic in its inputs).

    ``config`` is the run config (``config.json``); ``delta`` overrides
    ``privacy.delta`` (deployment directories may carry no config).
    """
    cfg = _privacy_cfg(config)
    if delta is None:
        if "delta" not in cfg:
            raise ConfigError("run config must give privacy.delta for the report (or pass delta)")
        delta = cfg["delta"]
    d = require_probability("delta", delta)
    accountant = str(cfg.get("accountant", "rdp"))
    if accountant not in ACCOUNTANTS or not ACCOUNTANTS[accountant].upper_bound:
        # The headline is always an upper bound; an approximation is only shown beside it.
        accountant = "rdp"
    releases = _releases(entries)
    skips = _skips(entries)
    round_events = [
        e.event
        for e in entries
        if not isinstance(e.event, (*ROUND_ANNOTATIONS, RecordLevelRelease))
    ]
    record_level = _record_level(entries, d)
    dp = bool(releases) or record_level is not None
    cache = EpsilonCache()
    results: dict[Adversary, AdversaryEpsilon | None] = {}
    errors: dict[str, str] = {}
    for adv in Adversary:
        try:
            results[adv] = adversary_epsilon(
                entries, adversary=adv, delta=d, accountant=accountant, cache=cache
            )
        except PrivacyError as exc:
            results[adv] = None
            errors[adv.value] = str(exc)
    if dp and any(r is None for r in results.values()) and accountant != "rdp":
        accountant = "rdp"
        for adv in Adversary:
            results[adv] = adversary_epsilon(
                entries, adversary=adv, delta=d, accountant="rdp", cache=cache
            )
    coordinator = results[Adversary.COORDINATOR]
    sample_secret = bool(releases) and all(r.sample_secret for r in releases)
    publish_ids = not sample_secret
    population = cfg.get("population")
    if population is None:
        pops = {r.population for r in releases if r.population is not None}
        population = max(pops) if pops else None
    stats = {e.event.round: e.event for e in entries if isinstance(e.event, ClipStatistics)}
    not_applied = {e.event.round for e in entries if isinstance(e.event, RoundNotApplied)}
    rounds_table: list[dict[str, Any]] = []
    participation: Counter[str] = Counter()
    for ev in round_events:
        if isinstance(ev, SkippedRound):
            rounds_table.append(
                {
                    "round": ev.round,
                    "type": ev.kind,
                    "reason": ev.reason.value,
                    "sampling_mode": ev.sampling_mode.value,
                    "sample_rate": ev.sample_rate,
                    "clients_sampled": ev.clients_sampled if publish_ids else None,
                    "required": ev.required,
                }
            )
            continue
        row: dict[str, Any] = {
            "round": ev.round,
            "type": ev.kind,
            "noise_multiplier": ev.noise_multiplier,
            "clip_norm": ev.clip_norm,
            "placement": ev.placement.value,
            "secure_aggregation": (
                ev.in_secure_aggregation
                if isinstance(ev, DistributedDiscreteGaussianRelease)
                else ev.secure_aggregation
            ),
            "relation": ev.relation.value,
            "sampling_mode": ev.sampling_mode.value,
            "sample_rate": ev.sample_rate,
            "clients_sampled": ev.clients_sampled if publish_ids else None,
            "clients_surviving": ev.clients_surviving if publish_ids else None,
        }
        if ev.round in stats:
            row["clipped_fraction"] = 1.0 - stats[ev.round].unclipped_fraction
        if ev.round in not_applied:
            row["applied"] = False  # charged, but its aggregate never changed the model
        rounds_table.append(row)
        if ev.client_ids is not None and publish_ids:
            participation.update(ev.client_ids)
    timestamps = [e.timestamp for e in entries]
    run = dict(run or {})
    seeded = bool(cfg.get("insecure_seed") is not None or run.get("noise_seeded"))
    budget = cfg.get("max_epsilon")
    budget_adv = str(cfg.get("budget_adversary", Adversary.COORDINATOR.value))
    algo, model, data_cfg = (_section(config, k) for k in ("algorithm", "model", "data"))
    summ: Mapping[str, Any] = summary if summary is not None else {}
    # The per-client plot: against the coordinator, or the observer when the coordinator
    # has no finite figure (central noise).
    per_client, per_client_adv = None, None
    for adv in Adversary:
        r = results[adv]
        if r is not None and r.per_client and publish_ids:
            vals = {k: _num(v) for k, v in r.per_client.items()}
            if any(v is not None for v in vals.values()):
                per_client, per_client_adv = vals, adv.value
                break
    deployed = run.get("kind") == "deployment"
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA_VERSION,
        "dp": dp,
        "delta": d,
        "accountant": accountant,
        "seeded_noise": seeded,
        "banner": SEEDED_BANNER if seeded else None,
        "headline": {adv.value: _headline_item(results[adv], d, adv, dp) for adv in Adversary},
        "headline_errors": errors,
        "run": {
            "kind": run.get("kind", _kind_without_run_json(config)),
            "config_hash": run.get("config_hash") or (config_hash(config) if config else None),
            "code_version": run.get("code_version"),
            "library_versions": run.get("library_versions"),
            "started_at": run.get("started_at") or (timestamps[0] if timestamps else None),
            "finished_at": run.get("finished_at") or (timestamps[-1] if timestamps else None),
            "times_from": "run.json" if run.get("started_at") else "ledger timestamps",
        },
        "ledger": {
            "entries": len(entries),
            "releases": len(releases),
            "skipped_rounds": len(skips),
            "head_hash": entries[-1].hash if entries else None,
            "first_timestamp": timestamps[0] if timestamps else None,
            "last_timestamp": timestamps[-1] if timestamps else None,
        },
        "mechanism": _mechanism_line(releases, skips, accountant),
        "algorithm": {
            "name": summ.get("algorithm") or algo.get("name"),
            "model": _model_name(summ.get("model")) or model.get("kind"),
            "parameters": summ.get("parameters"),
            # A deployment's config.json is the coordinator's: its [data] is a default the
            # coordinator never trains on; each site trains on its own files.
            "dataset": "each site's own data (deployment)"
            if deployed
            else summ.get("dataset") or data_cfg.get("preset"),
        },
        "clients": _clients(releases, summary, {} if deployed else config, publish_ids),
        "trust": _trust(releases, coordinator, cfg) if coordinator is not None and dp else [],
        "site_ledgers": list(site_ledgers or []),
        "utility": _utility(summary),
        "max_epsilon": budget,
        "budget_adversary": budget_adv if budget is not None else None,
        "epsilon_curves": _curves(round_events, d, accountant, cache) if dp else {},
        "accountants": _accountant_table(round_events, d, cache) if dp else {},
        "per_client_epsilon": per_client,
        "per_client_epsilon_adversary": per_client_adv,
        "per_client_distribution": (
            coordinator.as_dict()["distribution"]
            if coordinator is not None and publish_ids
            else None
        ),
        "rounds": rounds_table,
        "participation": dict(sorted(participation.items())) if participation else None,
        "statements": {
            "privacy_unit": (
                "The privacy unit is the client (site): the guarantee bounds how much everything "
                "released can change with one client's entire contribution (all its records, "
                "its whole update including the Meta-SGD step sizes). Each update was clipped "
                "to L2 norm C before noise."
            ),
            "delta": (
                f"δ = {d:g}"
                + (
                    f" for a population of N = {population} clients (1/N = {1 / population:.3g})."
                    if population
                    else "."
                )
            ),
            "sampling": _describe_sampling(releases, skips),
            "relations": _relations(releases),
            "adversary_relations": {
                adv.value: (
                    f"{r.relation.value.replace('_', '-')}: {r.relation.describe()}"
                    + ("; amplified by sampling" if r.amplification else "; no amplification")
                )
                for adv, r in results.items()
                if r is not None
            },
        },
        "not_protected": _not_protected(releases, d, population, record_level is not None)
        if dp
        else [
            "Everything: this run used no differential privacy; released models may reveal "
            "any client's data."
        ],
    }
    report["record_level"] = record_level
    if sample_secret:
        report["statements"]["sample"] = (
            "The sample and its size were kept secret from outside observers, so this report "
            "publishes neither client ids nor per-round counts."
        )
    return report


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

    if not report["dp"]:
        return out
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for adv, c in report["epsilon_curves"].items():
        if c["note"] is None and c["rounds"]:
            ys = [math.nan if e is None else e for e in c["epsilon"]]
            ax.plot(c["rounds"], ys, marker=".", label=f"{adv.replace('_', ' ')} (worst client)")
    if report["max_epsilon"] is not None:
        ax.axhline(float(report["max_epsilon"]), color="red", linestyle="--", label="max ε")
    ax.set_xlabel("round")
    ax.set_ylabel(f"ε at δ={report['delta']:g} ({report['accountant']})")
    ax.set_title("Privacy spent vs rounds, per adversary")
    ax.legend()
    save(fig, "epsilon_vs_rounds.png")

    per = report["per_client_epsilon"]
    if per:
        vals = sorted((v for v in per.values() if v is not None), reverse=True)
        if vals:
            fig = Figure(figsize=(6.4, 3.5))
            ax = fig.subplots()
            ax.bar(range(len(vals)), vals, width=1.0)
            who = str(report["per_client_epsilon_adversary"]).replace("_", " ")
            ax.set_xlabel("client (sorted by ε)")
            ax.set_ylabel(f"ε against the {who}")
            ax.set_title(f"Per-client ε against the {who} ({len(vals)} clients)")
            save(fig, "per_client_epsilon.png")

    rows = [r for r in report["rounds"] if r["type"] != "SkippedRound"]
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


def _headline_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for adv, h in report["headline"].items():
        eps = "no DP guarantee" if not h["guaranteed"] else f"{h['epsilon']:.4g}"
        how = ""
        if h.get("relation"):
            how = f"{h['relation'].replace('_', '-')}, " + (
                "amplified by sampling" if h.get("amplification") else "no amplification"
            )
            if h.get("worst_client") and h["guaranteed"]:
                how += f", worst client {h['worst_client']}"
        rows.append((adv.replace("_", " "), eps, how))
    return rows


def _markdown(report: Mapping[str, Any], pngs: Sequence[str]) -> str:
    s = report["statements"]
    run = report["run"]
    lines = ["# Privacy report", ""]
    if report["banner"]:
        lines += [f"> **⚠ {report['banner']}**", ""]
    lines += [
        f"δ = {report['delta']:g}; accountant {report['accountant']} (an upper bound).",
        "",
        "| against | ε (worst client) | relation |",
        "|---|---|---|",
    ]
    for adv, eps, how in _headline_rows(report):
        lines.append(f"| {adv} | {eps} | {how} |")
    lines.append("")
    for h in report["headline"].values():
        lines.append(f"- {h['reading']}")
        for n in h.get("notes", []):
            lines.append(f"  - {n}")
    lines += [
        "",
        "## Run",
        "",
        f"- Kind: {run['kind']}; config hash `{run['config_hash']}`.",
        f"- Code version: {_fmt(run['code_version'])}; libraries: "
        + (
            ", ".join(f"{k} {v}" for k, v in run["library_versions"].items())
            if run["library_versions"]
            else "not recorded"
        )
        + ".",
        f"- Start → end: {run['started_at']} → {run['finished_at']} (from {run['times_from']}).",
        f"- Ledger: {report['ledger']['entries']} entries, {report['ledger']['releases']} "
        f"release(s), {report['ledger']['skipped_rounds']} skipped round(s), head "
        f"`{report['ledger']['head_hash']}`.",
        "",
        "## Mechanism",
        "",
        report["mechanism"],
        "",
        f"Algorithm {_fmt(report['algorithm']['name'])}, model {_fmt(report['algorithm']['model'])}"
        f" ({_fmt(report['algorithm']['parameters'])} parameters), data "
        f"{_fmt(report['algorithm']['dataset'])}.",
        "",
        "## Clients covered",
        "",
        report["clients"]["statement"],
        "",
        "## Trust assumptions",
        "",
    ]
    lines += [f"- {t}" for t in report["trust"]] or ["- No DP release: nothing to assume."]
    lines += ["", "## Utility of the released model", ""]
    u = report["utility"]
    if u and "global_accuracy" in u:
        lines.append(
            f"Accuracy on {u.get('num_clients', 'the')} unseen test clients: global "
            f"{100 * u['global_accuracy']:.2f}%, after a site's own adaptation "
            f"{100 * u['personalized_accuracy']:.2f}% ({u['evaluated_on']})."
        )
    else:
        lines.append("Not recorded (no summary.json with a test evaluation).")
    if report["site_ledgers"]:
        lines += ["", "## Sites' own ledgers", ""]
        for sl in report["site_ledgers"]:
            lines.append(
                f"- {sl['site']}: [{sl['ledger']}]({sl['ledger']}) — {sl['status']}"
                + (
                    f", {sl['entries']} entries, head `{sl['head_hash']}`"
                    if "entries" in sl
                    else ""
                )
            )
    lines += [
        "",
        "## Accountants",
        "",
        "| accountant | "
        + " | ".join(a.replace("_", " ") for a in report["headline"])
        + " | note |",
        "|---|---|---|---|",
    ]
    for name, row in report["accountants"].items():
        vals = " | ".join(_fmt(row.get(a)) for a in report["headline"])
        label = "" if row["upper_bound"] else "approximation, not a bound"
        lines.append(f"| {name} | {vals} | {label} |")
    lines += [
        "",
        f"max ε = {_fmt(report['max_epsilon'])}"
        + (f" (enforced against the {report['budget_adversary']})" if report["max_epsilon"] else "")
        + ".",
        "",
        "## What is protected",
        "",
        f"- **Privacy unit.** {s['privacy_unit']}",
        f"- **δ.** {s['delta']}",
        f"- **Sampling.** {s['sampling']}",
    ]
    lines += [f"- **Neighbouring relation.** {x}" for x in s["relations"]]
    for adv, txt in s["adversary_relations"].items():
        lines.append(f"- **Relation against the {adv.replace('_', ' ')}.** {txt}")
    if "sample" in s:
        lines.append(f"- **Sample.** {s['sample']}")
    lines.append("")
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
    lines += ["", "## What is NOT protected", ""]
    lines += [f"- {item}" for item in report["not_protected"]]
    if pngs:
        lines += ["", "## Plots", ""]
        lines += [f"![{p}]({p})" for p in pngs]
    lines += [
        "",
        "## Rounds",
        "",
        "| round | σ | C | placement | secure agg. | sampling | q | sampled | surviving |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rounds"]:
        if r["type"] == "SkippedRound":
            lines.append(
                f"| {r['round']} | skipped ({r['reason'].replace('_', ' ')}) | | | | "
                f"{r['sampling_mode']} | {_fmt(r['sample_rate'])} | "
                f"{_fmt(r['clients_sampled'])} | |"
            )
            continue
        lines.append(
            f"| {r['round']} | {_fmt(r['noise_multiplier'])} | {_fmt(r['clip_norm'])} | "
            f"{r['placement']} | {_fmt(r['secure_aggregation'])} | {r['sampling_mode']} | "
            f"{_fmt(r['sample_rate'])} | {_fmt(r['clients_sampled'])} | "
            f"{_fmt(r['clients_surviving'])} |"
        )
    return "\n".join(lines) + "\n"


def _html(report: Mapping[str, Any], images: Mapping[str, bytes], markdown: str) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Privacy report</title>',
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}"
        ".banner{background:#cf222e;color:#fff;padding:1em;font-weight:bold;font-size:1.2em}"
        ".eps{font-size:1.6em;font-weight:bold}</style>",
        "</head><body><h1>Privacy report</h1>",
    ]
    if report["banner"]:
        parts.append(f'<div class="banner">⚠ {esc(report["banner"])}</div>')
    parts.append("<table><tr><th>against</th><th>ε (worst client)</th><th>relation</th></tr>")
    for adv, eps, how in _headline_rows(report):
        parts.append(
            f'<tr><td>{esc(adv)}</td><td class="eps">{esc(eps)}</td><td>{esc(how)}</td></tr>'
        )
    parts.append(
        f"</table><p>δ = {report['delta']:g}; accountant {esc(report['accountant'])}.</p><ul>"
    )
    for h in report["headline"].values():
        parts.append(f"<li>{esc(h['reading'])}")
        if h.get("notes"):
            parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in h["notes"]) + "</ul>")
        parts.append("</li>")
    parts.append("</ul>")
    # The rest mirrors the Markdown text (escaped), after the headline table.
    body = markdown.split("## Run", 1)[1] if "## Run" in markdown else ""
    parts.append(
        "<pre style='white-space:pre-wrap'>## Run" + esc(body.split("## Plots")[0]) + "</pre>"
    )
    parts.append("<h2>Plots</h2>")
    for name, data in images.items():
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{esc(name)}</figcaption></figure>"
        )
    if "## Rounds" in markdown:
        parts.append(
            "<pre style='white-space:pre-wrap'>"
            + esc("## Rounds" + markdown.split("## Rounds", 1)[1])
            + "</pre>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return obj


def _discover_site_ledgers(run_dir: Path, run: Mapping[str, Any] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    if run and isinstance(run.get("site_ledgers"), Mapping):
        found.update({str(k): str(v) for k, v in run["site_ledgers"].items()})
    sites = run_dir / "sites"
    if sites.is_dir():
        for p in sorted(sites.glob(f"*/{LEDGER_FILENAME}")):
            found.setdefault(p.parent.name, str(p.relative_to(run_dir)))
    return found


def write_report(
    run_dir_or_ledger_path: str | os.PathLike[str],
    config: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    delta: float | None = None,
) -> ReportPaths:
    """Verify the ledger, build the report and write JSON, Markdown, HTML and PNGs.

    ``run_dir_or_ledger_path`` is a run directory (simulation or deployment) or
    the ledger file itself. From a run directory the report also reads
    ``summary.json`` (utility), ``run.json`` (identity) and the sites' ledgers.
    A run without a ledger is reported as having no DP guarantee only if its
    config says privacy was off; otherwise a missing or corrupted ledger raises
    :class:`~privacy.LedgerCorrupted` and nothing is written.
    """
    src = Path(run_dir_or_ledger_path)
    run_dir = src if src.is_dir() else src.parent
    ledger_path = src / LEDGER_FILENAME if src.is_dir() else src
    cfg = _privacy_cfg(config)
    if not ledger_path.exists() and cfg.get("enabled") is False:
        entries: tuple[LedgerEntry, ...] = ()
    else:
        entries = read_ledger(ledger_path)
    summary = _read_json(run_dir / SUMMARY_FILENAME) if src.is_dir() else None
    run = _read_json(run_dir / RUN_METADATA_FILENAME) if src.is_dir() else None
    site_ledgers = (
        _site_ledgers(_discover_site_ledgers(run_dir, run), run_dir) if src.is_dir() else []
    )
    report = build_report(
        entries, config, summary=summary, run=run, site_ledgers=site_ledgers, delta=delta
    )
    images = _plots(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = sorted(images)
    pngs = []
    for name, data in images.items():
        atomic_write_bytes(out / name, data)
        pngs.append(out / name)
    json_path, md_path, html_path = out / "report.json", out / "report.md", out / "report.html"
    md = _markdown(report, sorted(images))
    atomic_write_bytes(
        json_path,
        (json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8"),
    )
    atomic_write_bytes(md_path, md.encode("utf-8"))
    atomic_write_bytes(html_path, _html(report, images, md).encode("utf-8"))
    return ReportPaths(json=json_path, markdown=md_path, html=html_path, pngs=tuple(pngs))
