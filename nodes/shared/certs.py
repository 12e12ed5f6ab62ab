"""The federation's certificates for mutual TLS: one CA, a server certificate per department node
and a client certificate per querying bureau.

A node trusts exactly the federation CA and reads who is asking from the client certificate's
common name, so the CA key is the root of every access decision: it is written 0600 and should be
moved offline once the federation is set up. Keys are ECDSA P-256, which every TLS stack speaks.

Layout of a federation directory::

    ca.pem  ca-key.pem  <name>.pem  <name>-key.pem  ...
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from psi.errors import InputError

ORGANIZATION = "kinlink federation"
CA_COMMON_NAME = "kinlink federation CA"
DEFAULT_DAYS = 365
CA_DAYS = 10 * 365
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates start this early, for peers' clock drift
KEY_MODE, CERT_MODE = 0o600, 0o644

# A lowercase DNS name: it becomes a SAN, a common name and a file name.
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_MAX_NAME = 63
CA_NAME = "ca"  # the CA's file stem, so no node or client may take it


class Role(StrEnum):
    NODE = "node"  # a department's server: serverAuth, SAN localhost + its name + loopback IPs
    CLIENT = "client"  # a querying bureau: clientAuth, identified by its common name


@dataclass(frozen=True)
class Issued:
    """A certificate written to disk."""

    name: str
    role: Role | None  # None for the CA
    cert: Path
    key: Path
    fingerprint: str


def cert_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.pem"


def key_path(directory: Path, name: str) -> Path:
    return directory / f"{name}-key.pem"


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex: what operators pin and compare."""
    return _load_cert(cert_pem).fingerprint(hashes.SHA256()).hex()


def subject_cn(cert_pem: bytes) -> str:
    """The subject common name: the identity a node grants access to."""
    names = _load_cert(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise InputError("certificate has no subject common name")
    return str(names[0].value)


def party_problems(
    ca_pem: bytes, cert_pem: bytes, key_pem: bytes, name: str, role: Role
) -> list[str]:
    """What would keep a party's certificate from working in the federation, one line each:
    another name than the party's, not signed by the federation CA, outside its validity, the
    wrong role for its use, or a key that is not its own. Empty when it would work."""
    try:
        ca, cert = _load_cert(ca_pem), _load_cert(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (InputError, ValueError, TypeError) as exc:
        return [f"cannot load: {exc}"]
    problems = []
    common_name = subject_cn(cert_pem)
    if common_name != name:
        problems.append(f"the certificate names {common_name!r}, not {name!r}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        problems.append("the certificate is not signed by the federation CA in tls.ca")
    now = _now()
    if now < cert.not_valid_before_utc:
        problems.append(f"the certificate is valid only from {cert.not_valid_before_utc:%Y-%m-%d}")
    if now > cert.not_valid_after_utc:
        problems.append(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if role is Role.NODE else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = [usage]  # no restriction
    if usage not in usages:
        problems.append(f"the certificate is not for a {role.value} (psi certs issue --role)")
    if key.public_key() != cert.public_key():
        problems.append("tls.key is not the key of tls.cert")
    return problems


def init_federation(
    out: Path,
    nodes: Sequence[str] = (),
    clients: Sequence[str] = (),
    *,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> list[Issued]:
    """Create the federation CA and a certificate for each node and client, all in ``out``.
    Nothing is written if any target file exists (unless ``force``) or a name is invalid."""
    _check_days(days)
    _check_names([*nodes, *clients])
    _refuse_existing(out, [CA_NAME, *nodes, *clients], force)
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(CA_COMMON_NAME)
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), ca_key, now, max(days, CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    issued = [_write(out, CA_NAME, None, ca_cert, ca_key)]
    ca = _Ca(ca_cert, ca_key)
    issued += [_issue(ca, out, name, Role.NODE, days, now) for name in nodes]
    issued += [_issue(ca, out, name, Role.CLIENT, days, now) for name in clients]
    return issued


def issue(
    ca_dir: Path, name: str, role: Role, *, days: int = DEFAULT_DAYS, force: bool = False
) -> Issued:
    """Add one node or client certificate to an existing federation directory."""
    _check_days(days)
    _check_names([name])
    ca = _Ca.load(ca_dir)
    now = _now()
    if now + dt.timedelta(days=days) > ca.cert.not_valid_after_utc:
        raise InputError(
            f"the federation CA expires on {ca.cert.not_valid_after_utc:%Y-%m-%d}: issue for "
            f"fewer days or create a new federation"
        )
    _refuse_existing(ca_dir, [name], force)
    return _issue(ca, ca_dir, name, role, days, now)


# -- internals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, directory: Path) -> _Ca:
        cert_file, key_file = cert_path(directory, CA_NAME), key_path(directory, CA_NAME)
        try:
            cert = _load_cert(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except FileNotFoundError:
            raise InputError(
                f"no federation CA in {directory} (needs ca.pem and ca-key.pem): "
                "run 'psi certs init' first"
            ) from None
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"cannot load the federation CA from {directory}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise InputError(f"{key_file} is not the key of {cert_file}")
        return cls(cert, key)


def _issue(ca: _Ca, out: Path, name: str, role: Role, days: int, now: dt.datetime) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if role is Role.NODE else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        _builder(_name(name), ca.cert.subject, key.public_key(), ca.key, now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if role is Role.NODE:
        san = [
            x509.DNSName("localhost"),
            x509.DNSName(name),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return _write(out, name, role, builder.sign(ca.key, hashes.SHA256()), key)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates only; a TLS endpoint signs handshakes only (ECDHE does the rest)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )


def _write(
    out: Path,
    name: str,
    role: Role | None,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
) -> Issued:
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_file, key_file = cert_path(out, name), key_path(out, name)
    _write_file(key_file, key_pem, KEY_MODE)
    _write_file(cert_file, cert_pem, CERT_MODE)
    return Issued(name, role, cert_file, key_file, fingerprint(cert_pem))


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write via a fresh temporary file created with ``mode``, so a key is never readable by
    others, not even for a moment, and a crash leaves the old file whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have narrowed it
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _refuse_existing(out: Path, names: Iterable[str], force: bool) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create directory {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to directory {out}")
    if force:
        return
    existing = [p.name for n in names for p in (cert_path(out, n), key_path(out, n)) if p.exists()]
    if existing:
        raise InputError(f"{out} already has {', '.join(existing)}; pass --force to replace them")


def _check_names(names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if len(name) > _MAX_NAME or not _NAME.fullmatch(name):
            raise InputError(
                f"invalid name {name!r}: use a lowercase DNS name of at most {_MAX_NAME} "
                "characters (letters, digits, '-' and '.')"
            )
        if name == CA_NAME:
            raise InputError(f"the name {name!r} is reserved for the federation CA")
        if name in seen:
            raise InputError(f"the name {name!r} is given twice")
        seen.add(name)


def _check_days(days: int) -> None:
    if days < 1:
        raise InputError(f"days must be at least 1, got {days}")


def _load_cert(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise InputError(f"not a PEM certificate: {exc}") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
