"""The consortium CA key is encrypted at rest: ``ca.key`` alone (without its passphrase)
cannot be loaded or sign; issuing needs the passphrase, which the CLI reads from an
environment variable or a file (never a command-line literal) or a prompt; a wrong or
missing passphrase is a one-line typed error; an unencrypted key only on request, loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from secure_fml.cli import main
from secure_fml.deploy import init_ca, issue_site
from secure_fml.deploy._pki import UNENCRYPTED_CA_KEY_WARNING, site_paths
from secure_fml.errors import ConfigError

SECRET = b"correct horse battery"


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], *names: str) -> str:
    rc = main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    for n in names:
        assert n in err[0], (n, err[0])
    return err[0]


def test_the_ca_key_on_disk_is_encrypted(tmp_path: Path) -> None:
    init_ca(tmp_path, passphrase=SECRET)
    pem = (tmp_path / "ca.key").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError, match="encrypted"):
        serialization.load_pem_private_key(pem, password=None)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(pem, password=b"not the passphrase")
    assert serialization.load_pem_private_key(pem, password=SECRET) is not None
    assert oct((tmp_path / "ca.key").stat().st_mode & 0o777) == "0o600"


def test_issuing_needs_the_right_passphrase(tmp_path: Path) -> None:
    init_ca(tmp_path, passphrase=SECRET)
    with pytest.raises(ConfigError, match="is encrypted: give its passphrase"):
        issue_site(tmp_path, "alpha")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        issue_site(tmp_path, "alpha", passphrase=b"wrong passphrase")
    assert not any(p.exists() for p in site_paths(tmp_path, "alpha"))  # nothing issued
    assert issue_site(tmp_path, "alpha", passphrase=SECRET).exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"passphrase": None}, "must be encrypted at rest"),
        ({"passphrase": b"short"}, "at least 8 bytes"),
        ({"passphrase": SECRET, "insecure_unencrypted": True}, "not both"),
    ],
)
def test_init_refuses_a_missing_or_weak_passphrase(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        init_ca(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "ca.key").exists()


def test_an_unencrypted_ca_key_only_on_request_and_it_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="NOT encrypted at rest"):
        init_ca(tmp_path, passphrase=None, insecure_unencrypted=True)
    assert (tmp_path / "ca.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.warns(UserWarning, match="NOT encrypted at rest"):
        issue_site(tmp_path, "alpha")
    with pytest.raises(ConfigError, match="not encrypted, but a passphrase was given"):
        issue_site(tmp_path, "beta", passphrase=SECRET)


def test_cli_reads_the_passphrase_from_env_or_file_and_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = str(tmp_path / "pki")
    # No passphrase source and no terminal to ask on: refused, naming the options.
    _one_line_error(["pki", "init", "--dir", pki], capsys, "--passphrase-env", "--passphrase-file")
    monkeypatch.setenv("CA_PASS", SECRET.decode())
    assert main(["pki", "init", "--dir", pki, "--passphrase-env", "CA_PASS"]) == 0
    capsys.readouterr()
    assert (tmp_path / "pki" / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED")
    _one_line_error(["pki", "issue-site", "alpha", "--dir", pki], capsys, "is encrypted")
    monkeypatch.setenv("WRONG", "wrong passphrase")
    _one_line_error(
        ["pki", "issue-site", "alpha", "--dir", pki, "--passphrase-env", "WRONG"],
        capsys,
        "wrong passphrase",
    )
    _one_line_error(
        ["pki", "issue-site", "alpha", "--dir", pki, "--passphrase-env", "UNSET_VAR_X"],
        capsys,
        "UNSET_VAR_X is not set",
    )
    secret_file = tmp_path / "passphrase"
    secret_file.write_bytes(SECRET + b"\n")  # the trailing newline of an editor is not part
    args = ["--dir", pki, "--passphrase-file", str(secret_file)]
    assert main(["pki", "issue-site", "alpha", *args]) == 0
    assert main(["pki", "issue-server", *args]) == 0
    # A passphrase is never a command-line literal.
    with pytest.raises(SystemExit):
        main(["pki", "issue-site", "beta", "--dir", pki, "--passphrase", "literal"])
    capsys.readouterr()


def test_cli_insecure_flag_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(UserWarning):
        rc = main(["pki", "init", "--dir", str(tmp_path), "--insecure-unencrypted-ca-key"])
    assert rc == 0
    assert UNENCRYPTED_CA_KEY_WARNING in capsys.readouterr().err
