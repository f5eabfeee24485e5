"""Render audit results: ``audit.json`` and a self-contained HTML report (base64 PNGs)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from audits._core import AuditResult, Verdict

__all__ = ["render_html", "write_report"]

_COLOURS = {
    Verdict.PASS: "#1a7f37",
    Verdict.LEAK_FOUND: "#cf222e",
    Verdict.INCONCLUSIVE: "#9a6700",
    Verdict.ERROR: "#8250df",
}


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    return html.escape(str(x)) if x is not None else "–"


def render_html(results: Sequence[AuditResult], meta: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r.audit)}</td><td>{r.control.value}</td>"
        f"<td style='color:{_COLOURS[r.verdict]};font-weight:bold'>{r.verdict.value}</td>"
        f"<td>{_fmt(r.claimed_epsilon)}</td><td>{_fmt(r.empirical_lower_bound)}</td>"
        f"<td>{_fmt(r.empirical_estimate)}</td><td>{html.escape(r.summary)}</td>"
        f"<td>{r.seconds:.1f}</td></tr>"
        for r in results
    )
    sections = []
    for r in results:
        figs = "".join(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
            f"{base64.b64encode(png).decode()}'/><figcaption>{html.escape(name)}</figcaption>"
            "</figure>"
            for name, png in r.figures.items()
        )
        d = r.as_dict()
        body = html.escape(json.dumps({"metrics": d["metrics"], "details": d["details"]}, indent=1))
        sections.append(
            f"<h2 id='{html.escape(r.audit)}'>{html.escape(r.audit)} — "
            f"<span style='color:{_COLOURS[r.verdict]}'>{r.verdict.value}</span></h2>"
            f"<p>{html.escape(r.summary)}</p>{figs}<details><summary>metrics</summary>"
            f"<pre>{body}</pre></details>"
        )
    meta_html = html.escape(json.dumps(dict(meta), indent=1, default=str))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>secure-fml audit</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "font-size:13px}img{max-width:100%}pre{font-size:11px;background:#f6f8fa}</style>"
        "</head><body><h1>secure-fml attack audit</h1>"
        "<p>Question answered by every audit: does the deployed configuration leak more "
        "than the ε its ledger reports? LEAK_FOUND with a finite claim means an empirical "
        "lower bound (valid at the stated confidence) exceeds the claimed ε, or the claimed "
        "privacy curve is rejected: a bug (or, under a positive control, the control firing). "
        "INCONCLUSIVE means the audit could not have shown a violation; ERROR that it crashed. "
        "Exit status: 0 clean, 1 violation, 2 error, 3 inconclusive.</p>"
        "<table><tr><th>audit</th><th>control</th><th>verdict</th><th>claimed ε</th>"
        "<th>ε lower bound</th><th>ε estimate</th><th>summary</th><th>s</th></tr>"
        f"{rows}</table>{''.join(sections)}<h2>run</h2><pre>{meta_html}</pre></body></html>"
    )


def write_report(
    results: Sequence[AuditResult], out_dir: str | Path, meta: Mapping[str, Any]
) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from audits._core import exit_code

    code = exit_code(results)
    payload = {
        "meta": dict(meta),
        "exit_code": int(code),
        "exit_meaning": code.name.lower(),
        "bound_exceeds_claim": any(r.bound_exceeds_claim for r in results),
        "results": [r.as_dict() for r in results],
    }
    jp = out / "audit.json"
    jp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    hp = out / "audit.html"
    hp.write_text(render_html(results, meta), encoding="utf-8")
    return jp, hp
