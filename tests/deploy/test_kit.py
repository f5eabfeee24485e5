"""``secure-fml pki kit SITE``: one directory to hand to a site, with its own policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_fml.cli import main
from secure_fml.deploy import SitePolicy, build_site, load_site_config
from tests.deploy import _harness as H


def test_kit_holds_what_a_site_needs_and_never_the_ca_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = tmp_path / "pki"
    H.make_pki(pki, ())
    monkeypatch.setenv("TEST_CA_PASSPHRASE", H.CA_PASSPHRASE.decode())
    coord = tmp_path / "coordinator.toml"
    coord.write_text('[model]\nkind = "mlp"\nhidden = [8]\n\n[algorithm]\nname = "metasgd"\n')
    kit = tmp_path / "kit-alpha"
    rc = main(
        [
            "pki", "kit", "alpha", "--dir", str(pki), "--out", str(kit),
            "--client", "client_00", "--coordinator-config", str(coord),
            "--passphrase-env", "TEST_CA_PASSPHRASE",
        ]
    )  # fmt: skip
    assert rc == 0
    names = sorted(p.name for p in (kit / "pki").iterdir())
    assert names == ["ca.pem", "site-alpha.key", "site-alpha.pem", "site-alpha.secagg.key"]
    assert oct((kit / "pki" / "site-alpha.key").stat().st_mode & 0o777) == "0o600"
    # The site adds where its own data lives, then runs the kit as it is.
    with open(kit / "site.toml", "a", encoding="utf-8") as f:
        f.write('\n[data]\npreset = "synthetic"\nroot = ""\n')
    settings, config = load_site_config(kit / "site.toml")
    assert settings.policy == SitePolicy()  # the defaults, written out for review
    assert list(config.model.hidden) == [8]
    site, cert = build_site(settings, config)
    assert site.name == "alpha" and cert
    site.close()
