"""A certificate refused in the TLS handshake is "certificate rejected", never "unavailable".

Real mutual-TLS gRPC on loopback, the site's production transport (``site_transport``):
a site holding a well-formed certificate from another CA is told "certificate rejected
by the coordinator" and its loop stops at once (retrying cannot help); a site whose
``ca.pem`` is another CA's rejects the coordinator's certificate and says so; a site
with the consortium's files joins; a coordinator that is down stays "unavailable"
(a plain TransportError the site retries).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from privacy.errors import RefusalReason, Refused, TransportError
from secure_fml.deploy import SiteSettings, run_site
from secure_fml.deploy._process import site_transport
from tests.deploy import _harness as H

NAMES = ("alpha", "beta", "gamma")


def _kit(root: Path, *, ca_from: Path, site_from: Path) -> Path:
    """A site's pki_dir: ``ca.pem`` from one PKI, alpha's certificate and keys from another."""
    root.mkdir()
    shutil.copy(ca_from / "ca.pem", root / "ca.pem")
    for suffix in ("pem", "key", "secagg.key"):
        shutil.copy(site_from / f"site-alpha.{suffix}", root / f"site-alpha.{suffix}")
    return root


@pytest.mark.e2e
def test_rejected_certificate_is_named_and_told_apart_from_a_down_coordinator(
    tmp_path: Path,
) -> None:
    pki = H.make_pki(tmp_path / "pki", NAMES)
    other = H.make_pki(tmp_path / "other", ("alpha",))  # a different CA, same site name
    foreign = _kit(tmp_path / "foreign", ca_from=pki, site_from=other)
    distrust = _kit(tmp_path / "distrust", ca_from=other, site_from=pki)
    cfg = H.small_config(dp=False, rounds=1)
    coord = H.make_coordinator(cfg, pki, tmp_path / "run", names=NAMES)

    def transport(pki_dir: Path, port: int):  # type: ignore[no-untyped-def]
        return site_transport(
            SiteSettings(
                name="alpha", client="client_00", server=f"127.0.0.1:{port}", pki_dir=pki_dir
            )
        )

    with H.endpoint("grpc", coord, pki) as ep:
        assert ep.port is not None
        t = transport(foreign, ep.port)
        with pytest.raises(Refused, match=r"^certificate rejected by the coordinator") as ei:
            t.join("alpha", H.cert_der(foreign, "alpha"))
        assert ei.value.reason is RefusalReason.CERTIFICATE
        # The site's loop stops at the first refusal instead of retrying for two minutes.
        site = H.make_site(cfg, pki, "alpha", "client_00", state_dir=tmp_path / "state")
        t0 = time.monotonic()
        with pytest.raises(Refused, match="certificate rejected by the coordinator"):
            run_site(site, t, certificate=H.cert_der(foreign, "alpha"), reconnect_timeout_s=60)
        assert time.monotonic() - t0 < 10
        site.close()
        t.close()

        t = transport(distrust, ep.port)
        with pytest.raises(Refused, match="rejected the coordinator's certificate") as ei:
            t.join("alpha", H.cert_der(pki, "alpha"))
        assert ei.value.reason is RefusalReason.CERTIFICATE
        t.close()

        t = transport(pki, ep.port)
        assert t.join("alpha", H.cert_der(pki, "alpha"))  # the consortium's files: joined
        t.close()
        port = ep.port
    coord.close()

    # The coordinator is gone: unavailable, which a site retries -- not a refusal.
    t = transport(pki, port)
    with pytest.raises(TransportError, match="UNAVAILABLE") as down:
        t.join("alpha", H.cert_der(pki, "alpha"))
    assert not isinstance(down.value, Refused)
    t.close()
