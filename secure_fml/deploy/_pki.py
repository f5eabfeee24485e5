"""Consortium PKI: one CA, one coordinator certificate, one certificate per site.

TLS keys are ECDSA P-256 (gRPC's BoringSSL does not negotiate Ed25519
certificates). Each site also holds an Ed25519 secure-aggregation identity key
whose public half the CA embeds in the site certificate (a private extension),
so the CA attests both keys at once: the coordinator hands every sampled site
the certificates of its peers, and each site checks them against the
consortium CA before trusting an advertisement. A coordinator therefore cannot
substitute identity keys without the CA's private key. Private keys are written
with mode 0600 and never overwritten silently.

The CA key is encrypted at rest with a passphrase (PKCS#8 with cryptography's
``BestAvailableEncryption``): issuing a certificate needs the passphrase, and a
stolen ``ca.key`` alone mints nothing. An unencrypted CA key is written only on an
explicit insecure request, and loading one warns. The CLI reads the passphrase from
an environment variable or a file it is named by, or prompts for it; never from a
command-line literal (which would sit in shell histories and process listings).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from privacy.errors import ConfigError, InvalidSignature

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "UNENCRYPTED_CA_KEY_WARNING",
    "SiteIdentity",
    "ca_key_encrypted",
    "common_name",
    "identity_public_key",
    "init_ca",
    "issue_server",
    "issue_site",
    "load_identity_key",
    "load_private_key",
    "site_paths",
    "verify_site_certificate",
]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_VALIDITY = _dt.timedelta(days=365)
#: Private-arc OID of the extension carrying the raw 32-byte Ed25519 SecAgg identity key.
SECAGG_IDENTITY_OID = ObjectIdentifier("1.3.6.1.4.1.57264.7301.1")

_PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey
#: Shortest CA passphrase accepted (bytes).
MIN_PASSPHRASE_BYTES = 8

UNENCRYPTED_CA_KEY_WARNING = (
    "the consortium CA key is NOT encrypted at rest: anyone who reads ca.key can issue "
    "certificates that every site and the coordinator trust. Use a passphrase "
    "(secure-fml pki init --passphrase-env NAME or --passphrase-file PATH)."
)

log = logging.getLogger(__name__)


def _check_passphrase(passphrase: object) -> bytes:
    if not isinstance(passphrase, bytes):
        raise TypeError("passphrase must be bytes")
    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise ConfigError(
            f"the CA passphrase must be at least {MIN_PASSPHRASE_BYTES} bytes, "
            f"got {len(passphrase)}"
        )
    return passphrase


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"site name {name!r} must be 1-63 characters of letters, digits, '.', '_' or '-'"
        )
    return name


def _write_private(path: Path, key: _PrivateKey, *, passphrase: bytes | None = None) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase is not None
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    # O_EXCL: refuse to clobber an existing key (re-issuing is an explicit decision).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"private key not found: {path}") from None
    except ValueError as e:
        raise ConfigError(f"{path} is not a PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an ECDSA private key")
    return key


def ca_key_encrypted(directory: Path) -> bool:
    """Whether ``directory``'s CA key is encrypted (False when there is none)."""
    try:
        head = (Path(directory) / CA_KEY).read_bytes()[:64]
    except FileNotFoundError:
        return False
    return b"ENCRYPTED" in head


def load_ca_key(path: Path, *, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    """The CA's signing key, decrypted with ``passphrase``; a missing or wrong
    passphrase is a one-line :class:`ConfigError`. An unencrypted key loads with a
    warning (and is refused if a passphrase was given: the two must agree)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"private key not found: {path}") from None
    encrypted = b"ENCRYPTED" in data[:64]
    if encrypted and passphrase is None:
        raise ConfigError(
            f"{path} is encrypted: give its passphrase (--passphrase-env NAME or "
            "--passphrase-file PATH, or run on a terminal to be asked)"
        )
    if not encrypted and passphrase is not None:
        raise ConfigError(f"{path} is not encrypted, but a passphrase was given")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except ValueError:
        if encrypted:
            raise ConfigError(f"wrong passphrase for the CA key {path}") from None
        raise ConfigError(f"{path} is not a PEM private key") from None
    if not encrypted:
        warnings.warn(UNENCRYPTED_CA_KEY_WARNING, stacklevel=3)
        log.warning(UNENCRYPTED_CA_KEY_WARNING)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an ECDSA private key")
    return key


def load_identity_key(path: Path) -> Ed25519PrivateKey:
    """A site's Ed25519 secure-aggregation identity key (``site-NAME.secagg.key``)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"identity key not found: {path}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"certificate not found: {path}") from None


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise InvalidSignature("certificate must carry exactly one common name")
    return str(attrs[0].value)


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = _dt.datetime.now(_dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def init_ca(
    directory: Path,
    *,
    passphrase: bytes | None,
    insecure_unencrypted: bool = False,
    name: str = "secure-fml consortium CA",
) -> Path:
    """Create ``ca.pem`` / ``ca.key`` in ``directory`` (refuses to overwrite a CA).

    ``ca.key`` is encrypted with ``passphrase`` (at least 8 bytes). ``passphrase=None``
    is refused unless ``insecure_unencrypted`` (tests, throw-away CAs), which warns.
    """
    if passphrase is not None:
        if insecure_unencrypted:
            raise ConfigError("give a passphrase or insecure_unencrypted, not both")
        _check_passphrase(passphrase)
    elif not insecure_unencrypted:
        raise ConfigError(
            "the CA key must be encrypted at rest: give a passphrase (--passphrase-env "
            "NAME or --passphrase-file PATH), or --insecure-unencrypted-ca-key for a "
            "throw-away CA"
        )
    else:
        warnings.warn(UNENCRYPTED_CA_KEY_WARNING, stacklevel=2)
        log.warning(UNENCRYPTED_CA_KEY_WARNING)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if (d / CA_KEY).exists():
        raise ConfigError(f"a CA already exists in {d}; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(name, subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(d / CA_KEY, key, passphrase=passphrase)
    _write_cert(d / CA_CERT, cert)
    return d / CA_CERT


def _issue(
    directory: Path,
    *,
    cn: str,
    cert_name: str,
    key_name: str,
    server: bool,
    hosts: tuple[str, ...],
    passphrase: bytes | None,
) -> Path:
    d = Path(directory)
    missing = [n for n in (CA_KEY, CA_CERT) if not (d / n).is_file()]
    if missing:
        raise ConfigError(
            f"{d} holds no consortium CA (missing {', '.join(missing)}): run "
            f"`secure-fml pki init --dir {d}` first, or pass the right --dir"
        )
    ca_key = load_ca_key(d / CA_KEY, passphrase=passphrase)
    ca_cert = _load_cert(d / CA_CERT)
    if (d / key_name).exists():
        raise ConfigError(f"{d / key_name} already exists; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    b = (
        _builder(cn, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    identity: Ed25519PrivateKey | None = None
    if not server:
        identity = Ed25519PrivateKey.generate()
        raw = identity.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        b = b.add_extension(x509.UnrecognizedExtension(SECAGG_IDENTITY_OID, raw), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    _write_private(d / key_name, key)
    if identity is not None:
        _write_private(d / key_name.replace(".key", ".secagg.key"), identity)
    _write_cert(d / cert_name, cert)
    return d / cert_name


def issue_server(
    directory: Path,
    *,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    passphrase: bytes | None = None,
) -> Path:
    """``server.pem`` / ``server.key`` for the coordinator, valid for ``hosts``
    (``passphrase``: the CA key's)."""
    return _issue(
        directory,
        cn="secure-fml-coordinator",
        cert_name=SERVER_CERT,
        key_name=SERVER_KEY,
        server=True,
        hosts=hosts,
        passphrase=passphrase,
    )


def site_paths(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """(certificate, TLS key, SecAgg identity key) of site ``name``."""
    d = Path(directory)
    _check_name(name)
    return d / f"site-{name}.pem", d / f"site-{name}.key", d / f"site-{name}.secagg.key"


def issue_site(directory: Path, name: str, *, passphrase: bytes | None = None) -> Path:
    """``site-NAME.pem`` / ``site-NAME.key``; the certificate's CN is the site's identity
    (``passphrase``: the CA key's)."""
    cert_path, key_path, _ = site_paths(directory, name)
    return _issue(
        directory,
        cn=name,
        cert_name=cert_path.name,
        key_name=key_path.name,
        server=False,
        hosts=(),
        passphrase=passphrase,
    )


@dataclass(frozen=True)
class SiteIdentity:
    name: str
    public_key: Ed25519PublicKey


def verify_site_certificate(
    cert_der: bytes, *, ca_cert: x509.Certificate, expected_name: str
) -> SiteIdentity:
    """Check a peer site's certificate against the consortium CA; raise on any mismatch."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as e:
        raise InvalidSignature(f"peer certificate of {expected_name!r} is malformed: {e}") from None
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, _CryptoInvalidSignature):
        raise InvalidSignature(
            f"certificate of {expected_name!r} was not issued by the consortium CA"
        ) from None
    now = _dt.datetime.now(_dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise InvalidSignature(f"certificate of {expected_name!r} is not valid now")
    if common_name(cert) != expected_name:
        raise InvalidSignature(
            f"certificate names {common_name(cert)!r}, expected {expected_name!r}"
        )
    return SiteIdentity(expected_name, identity_public_key(cert))


def identity_public_key(cert: x509.Certificate) -> Ed25519PublicKey:
    """The Ed25519 SecAgg identity key the CA embedded in a site certificate."""
    try:
        ext = cert.extensions.get_extension_for_oid(SECAGG_IDENTITY_OID).value
    except x509.ExtensionNotFound:
        raise InvalidSignature(
            f"certificate of {common_name(cert)!r} carries no SecAgg identity key"
        ) from None
    raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    if len(raw) != 32:
        raise InvalidSignature("SecAgg identity key extension must hold 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def make_kit(
    directory: Path,
    name: str,
    out: Path,
    *,
    server: str,
    client: str,
    shared_config: str = "",
    passphrase: bytes | None = None,
) -> Path:
    """One directory to hand to site ``name`` (as NVIDIA FLARE's startup kits):
    ``pki/`` with the CA certificate and the site's certificate, TLS key and SecAgg
    identity key (issued now if missing; never the CA key), and ``site.toml`` with
    its ``[site]`` table, its own ``[policy]`` (the defaults, to be reviewed by the
    site) and ``shared_config`` (the consortium's ``[model]`` / ``[algorithm]`` ...)."""
    import dataclasses as _dc
    import json as _json
    import shutil

    from secure_fml.deploy._policy import SitePolicy

    d = Path(directory)
    cert_path, key_path, identity_path = site_paths(d, name)
    if not cert_path.exists():
        issue_site(d, name, passphrase=passphrase)
    target = Path(out)
    (target / "pki").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(d / CA_CERT, target / "pki" / CA_CERT)
    for p in (cert_path, key_path, identity_path):
        shutil.copyfile(p, target / "pki" / p.name)
        if p.suffix == ".key":
            os.chmod(target / "pki" / p.name, 0o600)
    lines = [
        "[site]",
        f"name = {_json.dumps(name)}",
        f"client = {_json.dumps(client)}",
        f"server = {_json.dumps(server)}",
        'pki_dir = "pki"',
        "",
        "[policy]  # this site's own requirements of every round: review before joining",
    ]
    for f in _dc.fields(SitePolicy):
        v = getattr(SitePolicy(), f.name)
        if v is None:
            lines.append(f"# {f.name} = ...")
        elif isinstance(v, bool):
            lines.append(f"{f.name} = {'true' if v else 'false'}")
        elif isinstance(v, tuple):
            lines.append(f"{f.name} = {_json.dumps(list(v))}")
        else:
            lines.append(f"{f.name} = {v!r}")
    text = "\n".join(lines) + "\n"
    if shared_config:
        text += "\n" + shared_config.strip() + "\n"
    (target / "site.toml").write_text(text, encoding="utf-8")
    return target
