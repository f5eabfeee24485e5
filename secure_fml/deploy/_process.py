"""Assemble coordinator and site processes from their settings (used by the CLI and tests)."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from privacy import INSECURE_SEED_WARNING
from privacy.errors import ConfigError, InsecureModeError, NoProgress
from secure_fml.config import Config
from secure_fml.deploy._config import CoordinatorSettings, SiteSettings
from secure_fml.deploy._coordinator import Coordinator, Deadlines
from secure_fml.deploy._pki import (
    CA_CERT,
    SERVER_CERT,
    SERVER_KEY,
    load_identity_key,
    site_paths,
)
from secure_fml.deploy._runner import run_site
from secure_fml.deploy._site import Site
from secure_fml.deploy._tls import HandshakeProbe
from secure_fml.deploy._transport import (
    DEFAULT_MAX_MODEL_BYTES,
    CoordinatorService,
    GrpcTransport,
    serve,
)
from secure_fml.pipeline import seeded_randomness
from secure_fml.record_dp import unsupported_reason

__all__ = [
    "INSECURE_WARNING",
    "build_coordinator",
    "build_site",
    "run_client",
    "run_server",
    "site_transport",
]

if TYPE_CHECKING:
    from secure_fml.data import FederatedDataset

log = logging.getLogger(__name__)

INSECURE_WARNING = (
    "--insecure: TLS is OFF. Site identities are unauthenticated claims, the model and all "
    "secure-aggregation traffic travel in clear text, and anyone on the network can join as "
    "any allowlisted site. Use only for local experiments, never across organisations."
)


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path} not found (run `secure-fml pki ...` first)") from None


def _ca(pki_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(_read(pki_dir / CA_CERT))


def check_record_level(config: Config) -> None:
    """What a coordinator's record-level DP settings may ask of deployed sites.

    Each site runs record-level DP-SGD with its own policy's parameters and enforces its
    own record-level budget (``[policy]`` of its ``site.toml``); the coordinator only asks
    (the round start's record-level request) and keeps a copy of every site's releases.
    """
    pc = config.privacy
    if not pc.record_level:
        return
    reason = unsupported_reason(config.algorithm.name.value)
    if reason is not None:
        raise ConfigError(reason)
    if pc.record_max_epsilon is not None:
        raise ConfigError(
            "privacy.record_max_epsilon: in a deployment each site enforces its own "
            "record-level budget (policy.record_max_epsilon in its site.toml); remove it here"
        )


def check_site_record_level(
    settings: SiteSettings, config: Config, dataset: FederatedDataset
) -> None:
    """A site's record-level DP is its own policy, on data grouped by its own unit column."""
    pol = settings.policy
    if config.privacy.record_level and not pol.record_level:
        raise ConfigError(
            f"privacy.unit = {config.privacy.unit!r}: a site's record-level DP is its own "
            "policy; set policy.record_clip_norm and policy.record_noise_multiplier (or "
            "policy.record_max_epsilon with policy.max_rounds) in [policy]"
        )
    grouped = dataset.metadata.get("unit_column")
    if pol.record_level and pol.unit_column is not None and grouped != pol.unit_column:
        raise ConfigError(
            f"policy.unit_column = {pol.unit_column!r} but the site's records are "
            + (f"grouped by {grouped!r}" if grouped else "not grouped by person")
        )


def build_coordinator(settings: CoordinatorSettings, config: Config) -> Coordinator:
    check_record_level(config)
    return Coordinator(
        config,
        sites=settings.sites,
        ca_certificate=_ca(settings.pki_dir),
        model_spec=settings.model_spec(config),
        run_dir=settings.run_dir,
        deadlines=Deadlines(
            train_s=settings.train_timeout_s,
            stage_s=settings.stage_timeout_s,
            lease_s=settings.lease_s,
            start_grace_s=settings.start_grace_s,
            quorum_timeout_s=settings.quorum_timeout_s,
        ),
        min_sites=settings.min_sites,
    )


def run_server(
    settings: CoordinatorSettings,
    config: Config,
    *,
    stop: threading.Event | None = None,
    linger_s: float = 30.0,
    download_grace_s: float = 2.0,
) -> Coordinator:
    """Serve until training is finished and the sites no longer need this process.

    After the last round the process stays up until every connected site was told that
    training is over and has downloaded the final checkpoint or had ``download_grace_s``
    to start doing so, and ``linger_s`` at most (for a site that stays connected but
    does not poll).
    """
    stop = stop or threading.Event()
    creds = None
    if settings.insecure:
        warnings.warn(INSECURE_WARNING, stacklevel=2)
        log.warning(INSECURE_WARNING)
    else:
        d = settings.pki_dir
        creds = grpc.ssl_server_credentials(
            [(_read(d / SERVER_KEY), _read(d / SERVER_CERT))],
            root_certificates=_read(d / CA_CERT),
            require_client_auth=True,
        )
    coord = build_coordinator(settings, config)
    coord.open()
    service = CoordinatorService(coord)
    server, port = serve(service, address=settings.address, server_credentials=creds)
    log.info("coordinator listening on port %d (run dir %s)", port, settings.run_dir)
    try:
        finished_at: float | None = None
        while not stop.wait(0.2):
            if coord.finished:
                finished_at = finished_at or time.monotonic()
                if service.sites_released(download_grace_s=download_grace_s):
                    log.info("training is over and every connected site was told; exiting")
                    break
                if time.monotonic() - finished_at > linger_s:
                    log.warning(
                        "training is over; exiting after %gs with connected sites not yet "
                        "told (they see the coordinator gone)",
                        linger_s,
                    )
                    break
    finally:
        server.stop(grace=2.0).wait(2.0)
        service.stop()
        coord.close()
    if isinstance(coord.engine.stop_error, NoProgress):
        # The run gave up (rounds kept aborting, or no sites were left): the process
        # says so and exits non-zero, after the sites were told training is over.
        raise coord.engine.stop_error
    return coord


def build_site(settings: SiteSettings, config: Config) -> tuple[Site, bytes]:
    """The site's state machine on its own data, and its certificate (DER)."""
    from secure_fml._functional import FunctionalModel
    from secure_fml.algorithms import make_algorithm
    from secure_fml.data import load_preset
    from secure_fml.evaluation import to_batch
    from secure_fml.simulation import build_model, model_spec_for

    ds = load_preset(config.data.preset, root=config.data.root, **config.data.options)
    check_site_record_level(settings, config, ds)
    client = ds.client(settings.client)
    fm = FunctionalModel(build_model(model_spec_for(config, ds)))
    cert_path, _, identity_path = site_paths(settings.pki_dir, settings.name)
    cert = x509.load_pem_x509_certificate(_read(cert_path))
    insecure = config.run.insecure_seed
    if insecure is not None:
        warnings.warn(INSECURE_SEED_WARNING, RuntimeWarning, stacklevel=2)
        log.warning(INSECURE_SEED_WARNING)
    elif settings.seed is not None:
        raise InsecureModeError(
            "site.seed makes the training randomness reproducible from (seed, round); "
            "it needs the insecure test mode (run.insecure_seed)"
        )
    site = Site(
        name=settings.name,
        algorithm=make_algorithm(config.algorithm, fm),
        data=to_batch(client, ds.input_kind),
        identity_key=load_identity_key(identity_path),
        ca_certificate=_ca(settings.pki_dir),
        policy=settings.policy,
        state_dir=settings.state_dir or Path(f"state-{settings.name}"),
        seed=settings.seed if insecure is not None else None,
        randomness=seeded_randomness(insecure, settings.name) if insecure is not None else None,
    )
    return site, cert.public_bytes(Encoding.DER)


def site_transport(
    settings: SiteSettings, *, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
) -> GrpcTransport:
    if settings.insecure:
        warnings.warn(INSECURE_WARNING, stacklevel=2)
        log.warning(INSECURE_WARNING)
        return GrpcTransport(settings.server, credentials=None, max_model_bytes=max_model_bytes)
    cert_path, key_path, _ = site_paths(settings.pki_dir, settings.name)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(settings.pki_dir / CA_CERT),
        private_key=_read(key_path),
        certificate_chain=_read(cert_path),
    )
    probe = HandshakeProbe(
        address=settings.server, ca=settings.pki_dir / CA_CERT, cert=cert_path, key=key_path
    )
    return GrpcTransport(
        settings.server,
        credentials=creds,
        max_model_bytes=max_model_bytes,
        handshake_probe=probe,
    )


def run_client(
    settings: SiteSettings, config: Config, *, stop: threading.Event | None = None
) -> int:
    site, cert = build_site(settings, config)
    # The largest message this site accepts: its own model (float32) plus headroom for
    # the aggregation messages of a large roster; a longer stream is cut at that frame.
    transport = site_transport(settings, max_model_bytes=4 * site.dim + (16 << 20))
    try:
        return run_site(
            site,
            transport,
            certificate=cert,
            poll_wait_s=settings.poll_wait_s,
            reconnect_timeout_s=settings.reconnect_timeout_s,
            max_backoff_s=settings.reconnect_backoff_max_s,
            download_to=settings.download,
            stop=stop,
        )
    finally:
        transport.close()
        site.close()
