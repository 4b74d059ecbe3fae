"""A CA whose key the test keeps, issuing leaves the way the local platform does (platforms/local/tls.py)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from engram.platforms.local.tls import ca_certificate, server_certificate


class TestCA:
    """Signs server certificates for hosts; the local platform drops its CA key, a test keeps it."""

    __test__ = False  # not a test class, despite its name

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = ca_certificate(self.key)

    def write_ca(self, path: Path) -> None:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cert_file: Path, key_file: Path, hosts: list[str], write_key: bool = True) -> int:
        """Write a new leaf and its key, key first; return its serial. ``write_key=False`` leaves the
        key file as it was: a pair that does not match. Each file is replaced in one rename."""
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        cert = server_certificate(leaf_key, self.cert, self.key, hosts)
        if write_key:
            _replace(
                key_file,
                leaf_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        _replace(cert_file, cert.public_bytes(serialization.Encoding.PEM))
        return cert.serial_number


def serial_of(der: bytes) -> int:
    """The serial number of a DER certificate (SSLSocket.getpeercert(binary_form=True))."""
    return x509.load_der_x509_certificate(der).serial_number


def _replace(path: Path, data: bytes) -> None:
    scratch = path.with_name(path.name + ".new")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(scratch, path)
