"""How the cluster's own processes reach the journal when it is locked: a user and password every
server checks, over TLS verified against the cluster's CA (docs/security.md). Plain otherwise."""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from pathlib import Path


class JournalSecurityError(ValueError):
    """Credentials or a CA that cannot be used; the message names the file."""


@dataclass(frozen=True)
class JournalSecurity:
    """Credentials for the journal and, when ``ca_file`` is set, TLS verified against that CA."""

    user: str = ""
    password: str = ""
    ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.user or self.ca_file)

    @classmethod
    def from_files(cls, user: str = "", password_file: str = "", ca_file: str = "") -> JournalSecurity:
        """Read the password from its file (a Kubernetes Secret's key, or a local 0600 file)."""
        password = ""
        if password_file:
            try:
                password = Path(password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise JournalSecurityError(f"journal password file {password_file}: {exc.strerror}") from exc
            if not password:
                raise JournalSecurityError(f"journal password file {password_file} is empty")
        if password and not user:
            raise JournalSecurityError("a journal password needs a journal user")
        if ca_file and not Path(ca_file).is_file():
            raise JournalSecurityError(f"journal CA file {ca_file}: no such file")
        return cls(user, password, ca_file)

    def tls_context(self) -> ssl.SSLContext | None:
        """A client context trusting only the cluster's CA; None for a plain-text journal."""
        if not self.ca_file:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def connect_options(self) -> dict[str, object]:
        """Keyword arguments for nats.connect."""
        options: dict[str, object] = {}
        if self.user:
            options.update(user=self.user, password=self.password)
        if (context := self.tls_context()) is not None:
            options["tls"] = context
        return options


PLAIN = JournalSecurity()


def add_journal_security_args(parser: argparse.ArgumentParser, prefix: str = "journal",
                              whose: str = "the journal") -> None:
    """--journal-user, --journal-password-file, --journal-ca: a locked journal's credentials."""
    parser.add_argument(f"--{prefix}-user", default="", metavar="USER",
                        help=f"the user of {whose}, when it is locked")
    parser.add_argument(f"--{prefix}-password-file", default="", metavar="FILE",
                        help="a file holding that user's password")
    parser.add_argument(f"--{prefix}-ca", default="", metavar="FILE",
                        help=f"the CA that signed the certificates of {whose} (TLS)")


def journal_security_from_args(args: argparse.Namespace, prefix: str = "journal") -> JournalSecurity:
    key = prefix.replace("-", "_")
    return JournalSecurity.from_files(getattr(args, f"{key}_user"), getattr(args, f"{key}_password_file"),
                                      getattr(args, f"{key}_ca"))


def journal_security_args(user: str, password_file: str, ca_file: str) -> list[str]:
    """The same, as arguments for a child process (the password stays in its file)."""
    out: list[str] = []
    for flag, value in (("--journal-user", user), ("--journal-password-file", password_file),
                        ("--journal-ca", ca_file)):
        if value:
            out += [flag, value]
    return out
