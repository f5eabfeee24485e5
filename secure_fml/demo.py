"""The demo: what federated meta-learning buys a new site, against every baseline.

``secure-fml demo`` (and ``bash scripts/demo.sh``) trains FedAvg, FedMeta(MAML)
and FedMeta(Meta-SGD) on the embedded few-shot task family (see
:mod:`secure_fml.data._fewshot`: sites share one representation but each names
the concepts with its own labels and holds ~10 support examples), then scores
each approach on unseen test sites' query sets, beside chance, the
majority class, the untrained model adapted the same way and the site training
alone. Every method that adapts gets the same budget: ``inner_steps`` SGD steps
at ``inner_lr`` on the site's support set (Meta-SGD: its learned per-parameter
rates).

:func:`run_demo` returns a :class:`DemoResult`; :func:`render_table` renders it
as the Markdown table the command prints.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_fml.config import Config, config_from_dict, config_to_dict

__all__ = [
    "DEMO_CONFIG",
    "DemoResult",
    "DemoRow",
    "default_run_config",
    "demo_config",
    "render_table",
    "run_demo",
]

#: The demo's settings (everything else is the default config). FedAvg trains locally
#: for as many steps, at the same rate, as FedMeta adapts, so the comparison is fair.
DEMO_CONFIG: dict[str, dict[str, Any]] = {
    "data": {"preset": "fewshot"},
    "model": {"kind": "mlp", "hidden": [64]},
    "algorithm": {
        "inner_lr": 0.3,
        "inner_steps": 5,
        "local_lr": 0.3,
        "local_epochs": 5,
        "support_fraction": 0.2,
    },
    "server": {"rounds": 300, "clients_per_round": 10},
    "eval": {"every": 50, "local_only_steps": 100, "local_only_lrs": [0.001, 0.01, 0.1]},
    # A 64-unit MLP: one thread is fastest (more only adds contention on shared cores).
    "run": {"name": "demo", "seed": 0, "threads": 1},
}

ALGORITHMS = ("fedavg", "maml", "metasgd")


def demo_config(
    algorithm: str,
    *,
    rounds: int | None = None,
    seed: int = 0,
    data_options: Mapping[str, Any] | None = None,
    out_dir: str | None = None,
) -> Config:
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["algorithm"]["name"] = algorithm
    raw["run"]["seed"] = seed
    raw["run"]["name"] = algorithm
    if out_dir is not None:
        raw["run"]["out_dir"] = out_dir
    if rounds is not None:
        raw["server"]["rounds"] = rounds
    if data_options:
        raw["data"]["options"] = dict(data_options)
    if algorithm != ALGORITHMS[0]:
        # The baselines do not depend on the algorithm (same init, same adaptation
        # rate): the first run computes the costly local-only one, the others skip it.
        raw["eval"]["local_only_steps"] = 0
    return config_from_dict(raw)


def default_run_config() -> Config:
    """What ``secure-fml simulate`` runs without ``--config`` or ``--preset``: FedMeta(MAML)
    on the few-shot default with the demo's settings (run name ``run``)."""
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["algorithm"]["name"] = "maml"
    raw["run"]["name"] = "run"
    return config_from_dict(raw)


@dataclass(frozen=True)
class DemoRow:
    method: str
    what: str
    accuracy: float
    balanced_accuracy: float | None
    per_client_p10: float | None


@dataclass(frozen=True)
class DemoResult:
    rows: tuple[DemoRow, ...]
    test_clients: int
    query_points: int
    support_fraction: float
    adapt_steps: int
    rounds: int
    seconds: float
    config: dict[str, Any]
    summaries: dict[str, dict[str, Any]]

    def row(self, method: str) -> DemoRow:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(method)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": [r.__dict__ for r in self.rows],
            "test_clients": self.test_clients,
            "query_points": self.query_points,
            "support_fraction": self.support_fraction,
            "adapt_steps": self.adapt_steps,
            "rounds": self.rounds,
            "seconds": self.seconds,
            "config": self.config,
            "summaries": self.summaries,
        }


def run_demo(
    *,
    rounds: int | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    data_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> DemoResult:
    """Train the three algorithms and collect the table (see the module doc).

    ``out_dir`` (optional) receives one run directory per algorithm (``fedavg/``,
    ``maml/``, ``metasgd/``: checkpoints a site can ``secure-fml adapt``) plus
    ``demo.json`` and ``demo.md``.
    """
    from secure_fml.simulation import Simulation, load_dataset

    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    summaries: dict[str, dict[str, Any]] = {}
    dataset = None
    for alg in ALGORITHMS:
        cfg = demo_config(alg, rounds=rounds, seed=seed, data_options=data_options)
        if dataset is None:
            dataset = load_dataset(cfg)  # generate once, reuse (same seed, same data)
        sim = Simulation(cfg, dataset=dataset, run_dir=out / alg if out is not None else None)
        res = sim.run(progress=progress)
        summaries[alg] = res.summary
    cfg = demo_config("maml", rounds=rounds, seed=seed, data_options=data_options)
    base = summaries["fedavg"]["baselines"]
    steps = cfg.algorithm.inner_steps

    def row(method: str, what: str, metrics: Mapping[str, Any], p10: float | None) -> DemoRow:
        return DemoRow(
            method, what, float(metrics["accuracy"]), metrics.get("balanced_accuracy"), p10
        )

    def test(alg: str, which: str) -> tuple[dict[str, Any], float]:
        t = summaries[alg]["test"]
        return t[f"{which}_metrics"], t[f"per_client_{which}"]["p10"]

    rows = [
        row("chance", "uniform guess", base["chance"], None),
        row("majority class", "the site's most frequent support label", base["majority"], None),
        row(
            "untrained + adapted",
            f"random init, {steps} steps on the support set",
            base["untrained_adapted"],
            None,
        ),
        row(
            "local only",
            f"trained alone on the support set ({base['local_only']['steps']} Adam steps)",
            base["local_only"],
            None,
        ),
        row("FedAvg", "global model, no adaptation", *test("fedavg", "global")),
        row("FedAvg + fine-tune", f"FedAvg model, {steps} steps", *test("fedavg", "personalized")),
        row("FedMeta (MAML)", f"meta-learned init, {steps} steps", *test("maml", "personalized")),
        row(
            "FedMeta (Meta-SGD)",
            f"meta-learned init and step sizes, {steps} steps",
            *test("metasgd", "personalized"),
        ),
    ]
    result = DemoResult(
        rows=tuple(rows),
        test_clients=int(base["clients"]),
        query_points=int(base["query_points"]),
        support_fraction=cfg.algorithm.support_fraction,
        adapt_steps=steps,
        rounds=cfg.server.rounds,
        seconds=time.perf_counter() - t0,
        config=config_to_dict(cfg),
        summaries=summaries,
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "demo.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        (out / "demo.md").write_text(render_table(result) + "\n")
    return result


def render_table(result: DemoResult) -> str:
    """The Markdown table of :func:`run_demo` (accuracy on unseen sites' query points)."""
    lines = [
        f"Unseen test sites: {result.test_clients} ({result.query_points} query points); "
        f"{result.support_fraction:.0%} of each site's data is its support set; "
        f"{result.rounds} training rounds.",
        "",
        "| method | what the new site does | accuracy | balanced acc. | p10 site |",
        "|---|---|---:|---:|---:|",
    ]
    for r in result.rows:
        bal = f"{r.balanced_accuracy:.3f}" if r.balanced_accuracy is not None else "-"
        p10 = f"{r.per_client_p10:.3f}" if r.per_client_p10 is not None else "-"
        lines.append(f"| {r.method} | {r.what} | {r.accuracy:.3f} | {bal} | {p10} |")
    return "\n".join(lines)
