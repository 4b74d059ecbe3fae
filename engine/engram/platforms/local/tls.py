"""A local cluster's TLS (`engram local up --tls`): its own CA, one certificate for its servers
(journal servers, and nodes serving clients), and the passwords of the cluster's processes and of
the journal servers' routes.

Everything lives in DIR/NAME/tls, readable by the owner only, and is made once: `down --keep-data`
then `up` finds it again. docs/security.md says what it protects.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from engram.journal.security import JournalSecurity
from engram.journal.servers import JournalAuth, ServerTLS
from engram.orchestration.node_config import JOURNAL_USER

ROUTE_USER = "engram-route"
VALID_DAYS = 3650


@dataclass(frozen=True)
class LocalTLS:
    """The files of one cluster's locked journal."""

    directory: Path

    @property
    def ca_file(self) -> str:
        return str(self.directory / "ca.pem")

    @property
    def cert_file(self) -> str:
        return str(self.directory / "server.pem")

    @property
    def key_file(self) -> str:
        return str(self.directory / "server.key")

    @property
    def password_file(self) -> str:
        return str(self.directory / "journal.password")

    @property
    def route_password_file(self) -> str:
        return str(self.directory / "route.password")

    def server_tls(self) -> ServerTLS:
        return ServerTLS(self.cert_file, self.key_file, self.ca_file)

    def auth(self) -> JournalAuth:
        password, route_password = _read(self.password_file), _read(self.route_password_file)
        return JournalAuth(JOURNAL_USER, password, ROUTE_USER, route_password)

    def security(self) -> JournalSecurity:
        """How this cluster's own processes (nodes, supervisor, CLI) reach its journal."""
        return JournalSecurity.from_files(JOURNAL_USER, self.password_file, self.ca_file)

    def ensure(self, hosts: list[str]) -> None:
        """Make the CA, the servers' certificate (valid for hosts) and the passwords, unless made;
        the certificate is made again, with a new CA, when it does not cover every host."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        for path in (self.password_file, self.route_password_file):
            if not Path(path).exists():
                _write_private(Path(path), secrets.token_hex(24).encode())
        if not Path(self.ca_file).exists() or not _covers(Path(self.cert_file), hosts):
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca = ca_certificate(ca_key)
            key = ec.generate_private_key(ec.SECP256R1())
            cert = server_certificate(key, ca, ca_key, hosts)
            _write_private(Path(self.key_file), key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            Path(self.cert_file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            Path(self.ca_file).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
            # The CA's key is not kept: nothing else is ever signed with it.


def _covers(cert_file: Path, hosts: list[str]) -> bool:
    if not cert_file.exists():
        return False
    names = x509.load_pem_x509_certificate(cert_file.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    covered = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    covered |= set(names.get_values_for_type(x509.DNSName))
    return set(hosts) <= covered


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=VALID_DAYS))


def ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "engram local journal CA")])
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    builder = _validity(builder.serial_number(x509.random_serial_number()))
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    ), critical=True)
    return builder.sign(key, hashes.SHA256())


def server_certificate(key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
                        ca_key: ec.EllipticCurvePrivateKey, hosts: list[str]) -> x509.Certificate:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in sorted(set(hosts)):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "engram journal")])
    builder = x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
    builder = _validity(builder.public_key(key.public_key()).serial_number(x509.random_serial_number()))
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    # Servers present it to clients and, on routes, to each other as clients too.
    builder = builder.add_extension(x509.ExtendedKeyUsage(
        [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())
