"""Deployment overhead: round time over gRPC (mTLS, 10 site processes) vs the in-process
simulation for the same config, plus bytes on the wire per site per round.

    python -m benchmarks.deploy_overhead                      # FEMNIST CNN, 10 sites
    python -m benchmarks.deploy_overhead --model mlp --rounds 3 --dp

Both sides run the same round logic (sampler, algorithm, clipping, SecAgg state machines,
DP wrapper); the simulation runs the 10 clients one after another in one thread, the
deployment runs them in 10 processes that share the machine's cores. We therefore report
wall-clock time *and* CPU seconds (coordinator + all sites, excluding process start and
data loading): on a 2-core box the wall-clock ratio mostly measures parallelism, the CPU
ratio measures the transport's cost. Writes ``benchmarks/results/deploy_overhead.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _config(args: argparse.Namespace) -> Any:
    from secure_fml.config import config_from_dict

    raw: dict[str, Any] = {
        "data": {"preset": "femnist", "root": args.data_root, "client_fractions": [1.0, 0.0, 0.0]},
        "model": {"kind": args.model, "hidden": [64]},
        "algorithm": {"name": args.algorithm},
        "server": {"rounds": args.rounds, "sampling": "all"},
        "secure_aggregation": {"protocol": "secagg"},
        "eval": {"every": 0},
        "run": {"threads": 1},
    }
    if args.dp:
        raw["privacy"] = {"enabled": True, "noise_multiplier": 1.0, "clip_norm": 1.0}
    return config_from_dict(raw)


def _dataset(args: argparse.Namespace) -> Any:
    from secure_fml.data import load_preset

    ds = load_preset("femnist", root=args.data_root)
    return ds.with_clients(ds.clients[: args.sites])


def run_simulation(args: argparse.Namespace) -> dict[str, Any]:
    from secure_fml.simulation import Simulation

    cfg = _config(args)
    sim = Simulation(cfg, dataset=_dataset(args))
    rounds = []
    cpu0 = time.process_time()
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        sim.run_round()
        rounds.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    sim.close()
    return {"round_s": rounds, "cpu_s": cpu, "dim": int(sim.state.numel())}


def _site_main(
    args: argparse.Namespace, name: str, client: str, port: int, pki: str, q: Any
) -> None:
    torch.set_num_threads(1)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from secure_fml._functional import FunctionalModel
    from secure_fml.algorithms import make_algorithm
    from secure_fml.deploy import GrpcTransport, Site, SitePolicy, run_site
    from secure_fml.deploy._pki import load_identity_key, site_paths
    from secure_fml.evaluation import to_batch
    from secure_fml.simulation import build_model, model_spec_for

    cfg = _config(args)
    ds = _dataset(args)
    d = Path(pki)
    cert, key, ident = site_paths(d, name)
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    site = Site(
        name=name,
        algorithm=make_algorithm(
            cfg.algorithm, FunctionalModel(build_model(model_spec_for(cfg, ds)))
        ),
        data=to_batch(ds.client(client), ds.input_kind),
        identity_key=load_identity_key(ident),
        ca_certificate=ca,
        policy=SitePolicy(require_noise=args.dp),
        state_dir=Path(tempfile.mkdtemp(prefix=f"site-{name}-")),
    )
    creds = grpc.ssl_channel_credentials(
        (d / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    t = GrpcTransport(f"127.0.0.1:{port}", credentials=creds, rpc_timeout_s=600)
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
    cpu0 = time.process_time()
    rounds = run_site(site, t, certificate=der, poll_wait_s=1.0, reconnect_timeout_s=600)
    q.put(
        {
            "site": name,
            "rounds": rounds,
            "cpu_s": time.process_time() - cpu0,
            "bytes_sent": t.bytes_sent,
            "bytes_received": t.bytes_received,
        }
    )
    t.close()


def run_deployment(args: argparse.Namespace) -> dict[str, Any]:
    from secure_fml.deploy import Coordinator, CoordinatorService, Deadlines, serve
    from secure_fml.deploy._pki import init_ca, issue_server, issue_site
    from secure_fml.simulation import model_spec_for

    cfg = _config(args)
    ds = _dataset(args)
    names = [f"site{i:02d}" for i in range(args.sites)]
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp) / "pki"
        secret = b"benchmark-ca-passphrase"  # a throw-away CA, encrypted as in production
        init_ca(pki, passphrase=secret)
        issue_server(pki, passphrase=secret)
        for n in names:
            issue_site(pki, n, passphrase=secret)
        from cryptography import x509

        coord = Coordinator(
            cfg,
            sites=names,
            ca_certificate=x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes()),
            model_spec=model_spec_for(cfg, ds),
            run_dir=Path(tmp) / "run",
            deadlines=Deadlines(train_s=3600, stage_s=3600, lease_s=3600),
            min_sites=args.sites,
        )
        coord.open()
        service = CoordinatorService(coord)
        creds = grpc.ssl_server_credentials(
            [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
            root_certificates=(pki / "ca.pem").read_bytes(),
            require_client_auth=True,
        )
        server, port = serve(service, address="127.0.0.1:0", server_credentials=creds)
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        procs = [
            ctx.Process(
                target=_site_main, args=(args, n, c.client_id, port, str(pki), q), daemon=True
            )
            for n, c in zip(names, ds.clients, strict=True)
        ]
        for p in procs:
            p.start()
        # Coordinator CPU is counted from the first round start (after the sites loaded data).
        while service.status()["open_round"] is None and not coord.history:
            time.sleep(0.05)
        cpu0 = time.process_time()
        done = threading.Event()
        while not coord.finished:
            done.wait(0.1)
        coord_cpu = time.process_time() - cpu0
        reports = [q.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        server.stop(grace=1)
        service.stop()
        coord.close()
    return {
        "round_s": [h["round_s"] for h in coord.history],
        "coordinator_cpu_s": coord_cpu,
        "sites": reports,
        "dim": int(coord.state.numel()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--algorithm", default="fomaml")
    ap.add_argument("--dp", action="store_true", help="distributed DP inside SecAgg (slow on CNN)")
    ap.add_argument(
        "--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    ap.add_argument("--name", default="deploy_overhead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sim = run_simulation(args)
    dep = run_deployment(args)
    sites = dep["sites"]
    rounds = args.rounds
    sent = statistics.mean(s["bytes_sent"] for s in sites) / rounds
    recv = statistics.mean(s["bytes_received"] for s in sites) / rounds
    dep_cpu = dep["coordinator_cpu_s"] + sum(s["cpu_s"] for s in sites)
    res = {
        "config": {
            "sites": args.sites,
            "rounds": rounds,
            "model": args.model,
            "algorithm": args.algorithm,
            "dp": args.dp,
            "secagg": "secagg",
            "dimension": dep["dim"],
            "transport": "gRPC over loopback, mutual TLS, 1 MiB chunks",
        },
        "machine": {"cpus": os.cpu_count(), "torch_threads_per_process": 1},
        "simulation_round_s": sim["round_s"],
        "deployment_round_s": dep["round_s"],
        "wall_ratio_median": statistics.median(dep["round_s"]) / statistics.median(sim["round_s"]),
        "simulation_cpu_s": sim["cpu_s"],
        "deployment_cpu_s": dep_cpu,
        "cpu_ratio": dep_cpu / sim["cpu_s"],
        "bytes_sent_per_site_per_round": sent,
        "bytes_received_per_site_per_round": recv,
        "model_bytes": dep["dim"] * 4,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = [
        f"# Deployment overhead ({args.sites} sites, FEMNIST {args.model}, {args.algorithm}, "
        f"SecAgg{' + distributed DP' if args.dp else ''}, {rounds} rounds)",
        "",
        "| | in-process simulation | gRPC + mTLS, one process per site | ratio |",
        "|---|---|---|---|",
        f"| round wall time, median (s) | {statistics.median(sim['round_s']):.2f} | "
        f"{statistics.median(dep['round_s']):.2f} | {res['wall_ratio_median']:.2f}x |",
        f"| CPU seconds, all rounds, all processes | {sim['cpu_s']:.1f} | {dep_cpu:.1f} | "
        f"{res['cpu_ratio']:.2f}x |",
        "",
        f"Bytes on the wire per site per round (protobuf frames, without TLS/HTTP2 framing): "
        f"sent {sent / 1e6:.2f} MB, received {recv / 1e6:.2f} MB "
        f"(model: {res['model_bytes'] / 1e6:.2f} MB of float32).",
        "",
        f"Machine: {os.cpu_count()} CPUs shared by the coordinator and {args.sites} site "
        "processes (1 torch thread each); the simulation runs the clients sequentially in "
        "one thread. The wall ratio therefore mixes transport cost with parallelism; the "
        "CPU ratio isolates the transport (serialization, TLS, chunking, polling).",
        "",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
