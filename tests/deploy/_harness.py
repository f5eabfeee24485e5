"""Shared pieces of the deployment tests: PKI, small configs, sites, transports."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from privacy import Csprng
from secure_fml._functional import FunctionalModel
from secure_fml.algorithms import make_algorithm
from secure_fml.config import Config, config_from_dict
from secure_fml.data import FederatedDataset, load_preset
from secure_fml.deploy import (
    Coordinator,
    CoordinatorService,
    Deadlines,
    GrpcTransport,
    InProcessTransport,
    Site,
    SitePolicy,
    Transport,
    init_ca,
    issue_server,
    issue_site,
    run_site,
    serve,
)
from secure_fml.deploy._pki import load_identity_key, site_paths
from secure_fml.evaluation import to_batch
from secure_fml.simulation import build_model, model_spec_for

#: Five sites: with delta = 0.2 a round of five tolerates one silent site (the SecAgg
#: threshold must exceed half the roster and stay below the holders that survive).
SITES = ("alpha", "beta", "gamma", "delta", "epsilon")


#: The test CA's key passphrase (the CA key is encrypted at rest, as in production).
CA_PASSPHRASE = b"test-ca-passphrase"


def make_pki(root: Path, names: Sequence[str]) -> Path:
    init_ca(root, passphrase=CA_PASSPHRASE)
    issue_server(root, passphrase=CA_PASSPHRASE)
    for n in names:
        issue_site(root, n, passphrase=CA_PASSPHRASE)
    return root


def small_config(*, dp: bool = True, rounds: int = 2, **server: Any) -> Config:
    raw: dict[str, Any] = {
        "data": {"preset": "synthetic"},
        "model": {"kind": "mlp", "hidden": [8]},
        "algorithm": {"name": "metasgd", "inner_lr": 0.05},
        "server": {"rounds": rounds, "sampling": "all", "optimizer": "sgd", "lr": 0.5, **server},
        # delta = 0.2: one silent site in a round of five is tolerated.
        "secure_aggregation": {"protocol": "secagg", "max_dropout_fraction": 0.2},
        "privacy": {"enabled": dp, "noise_multiplier": 1.0, "clip_norm": 1.0},
    }
    if not dp:
        del raw["privacy"]["noise_multiplier"]
    return config_from_dict(raw)


def dataset() -> FederatedDataset:
    return load_preset("synthetic")


def ca_of(pki: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())


def cert_der(pki: Path, name: str) -> bytes:
    cert_path = site_paths(pki, name)[0]
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(Encoding.DER)


def make_coordinator(
    config: Config,
    pki: Path,
    run_dir: Path,
    names: Sequence[str] = SITES,
    *,
    min_sites: int | None = None,
    **dl: float,
) -> Coordinator:
    ds = dataset()
    c = Coordinator(
        config,
        sites=names,
        ca_certificate=ca_of(pki),
        model_spec=model_spec_for(config, ds),
        run_dir=run_dir,
        deadlines=Deadlines(**{"train_s": 20.0, "stage_s": 10.0, **dl}),
        min_sites=min_sites or len(names),
    )
    c.open()
    return c


def make_site(
    config: Config,
    pki: Path,
    name: str,
    client: str,
    *,
    seed: int | None = None,
    randomness: Callable[[int], Csprng] | None = None,
    policy: SitePolicy | None = None,
    state_dir: Path | None = None,
) -> Site:
    """A site on the synthetic client ``client``; its own state in a fresh temporary
    directory unless ``state_dir``; the default policy (noise required iff the config
    has DP) unless ``policy``."""
    ds = dataset()
    fm = FunctionalModel(build_model(model_spec_for(config, ds)))
    return Site(
        name=name,
        algorithm=make_algorithm(config.algorithm, fm),
        data=to_batch(ds.client(client), ds.input_kind),
        identity_key=load_identity_key(site_paths(pki, name)[2]),
        ca_certificate=ca_of(pki),
        policy=policy or SitePolicy(require_noise=config.privacy.enabled),
        state_dir=state_dir or Path(tempfile.mkdtemp(prefix=f"site-{name}-")),
        seed=seed,
        randomness=randomness,
    )


@dataclass
class Endpoint:
    """How sites reach a running coordinator service."""

    service: CoordinatorService
    connect: Callable[[str], Transport]
    port: int | None = None


@contextmanager
def endpoint(kind: str, coord: Coordinator, pki: Path) -> Iterator[Endpoint]:
    service = CoordinatorService(coord)
    server = None
    try:
        if kind == "inprocess":
            yield Endpoint(service, lambda _name: InProcessTransport(service))
        else:
            creds = grpc.ssl_server_credentials(
                [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
                root_certificates=(pki / "ca.pem").read_bytes(),
                require_client_auth=True,
            )
            server, port = serve(service, address="127.0.0.1:0", server_credentials=creds)

            def connect(name: str) -> Transport:
                cert, key, _ = site_paths(pki, name)
                cc = grpc.ssl_channel_credentials(
                    (pki / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes()
                )
                return GrpcTransport(f"127.0.0.1:{port}", credentials=cc, rpc_timeout_s=20)

            yield Endpoint(service, connect, port)
    finally:
        if server is not None:
            server.stop(grace=0.5)
        service.stop()


def run_sites(
    ep: Endpoint,
    sites: Sequence[Site],
    pki: Path,
    *,
    timeout_s: float = 60.0,
) -> list[Any]:
    """Run each site's loop in a thread until training finishes; returns rounds done."""
    results: list[Any] = [None] * len(sites)
    stop = threading.Event()

    def go(i: int, site: Site) -> None:
        t = ep.connect(site.name)
        try:
            results[i] = run_site(
                site,
                t,
                certificate=cert_der(pki, site.name),
                poll_wait_s=0.5,
                reconnect_timeout_s=10,
                max_backoff_s=0.25,
                stop=stop,
            )
        except Exception as e:  # surfaced to the test below
            results[i] = e
        finally:
            t.close()

    threads = [threading.Thread(target=go, args=(i, s), daemon=True) for i, s in enumerate(sites)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=timeout_s)
    stop.set()
    for th in threads:
        th.join(timeout=5)
    return results
