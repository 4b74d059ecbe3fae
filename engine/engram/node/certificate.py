"""The cluster's certificate as a node serves it, and a renewed one loaded without a restart.

The node's own TLS ports (the client front, the control port, the metrics port) present whatever
certificate is current at each handshake; where Valkey serves TLS itself, the node asks it to read
its files again. docs/security.md says when and how.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engram import metrics
from engram.valkey.connection import ValkeyError

log = logging.getLogger(__name__)

# cert-manager renews weeks before expiry and the kubelet takes a minute to refresh a Secret's files:
# a second is prompt enough, and reading two small files a second costs nothing.
POLL_EVERY = 1.0

# Asks Valkey to run one command (the node's DataPath.execute).
ValkeyCommand = Callable[..., Awaitable[object]]


@dataclass(frozen=True)
class TlsFiles:
    """The certificate chain and private key a node serves, and the CA its clients trust."""

    cert_file: str
    key_file: str
    ca_file: str = ""

    def fingerprint(self) -> str:
        """A digest of both files' content; OSError when one cannot be read.

        Content, not mtime: a Kubernetes Secret volume changes by swapping its ..data symlink, which
        leaves the names' own links untouched; reading through them follows the swap.
        """
        digest = hashlib.sha256()
        for path in (self.cert_file, self.key_file):
            with open(path, "rb") as f:
                digest.update(f.read())
            digest.update(b"\0")
        return digest.hexdigest()


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the files' certificate; ssl.SSLError or OSError when the
    certificate and key do not load as a pair."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert_file, files.key_file)
    return context


class ServerCertificate:
    """The certificate this node's own TLS ports present; each new handshake takes the current one.

    A renewal builds a new context and swaps it in from the server name callback, which OpenSSL
    runs on every ClientHello (with or without SNI). Nothing is loaded into a context that is in
    use: a half-loaded one would present a certificate without its key, and the metrics port
    shakes hands on its own thread.
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.current = server_context(files)

    def serving_context(self) -> ssl.SSLContext:
        """A context for one listening port that follows reloads."""
        context = server_context(self.files)
        self.follow(context)
        return context

    def follow(self, context: ssl.SSLContext) -> None:
        """Make a context some library built (prometheus-client's) present the current certificate."""
        context.sni_callback = self._select

    def _select(self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None,
                _context: ssl.SSLContext) -> None:
        if connection.context is not self.current:
            connection.context = self.current


class CertificateWatch:
    """Notices changed certificate files and loads them where this node serves TLS: its own ports
    (``serving``) and, where Valkey serves clients with the same files, Valkey (``valkey``)."""

    def __init__(self, files: TlsFiles, serving: ServerCertificate | None = None,
                 valkey: ValkeyCommand | None = None) -> None:
        self.files = files
        self.serving = serving
        self.valkey = valkey
        # What the files held when last looked at; a failed load is retried when they change again.
        self._seen = self._fingerprint()

    def _fingerprint(self) -> str:
        try:
            return self.files.fingerprint()
        except OSError as exc:
            return f"unreadable: {exc}"

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # Valkey's connection lost mid-reply: never end the watch
                log.info("certificate check failed, tried again: %r", exc)
            await asyncio.sleep(POLL_EVERY)

    async def check(self) -> str | None:
        """Load the files if they changed: "ok", "failed" (the old certificate stays), or None."""
        seen = self._fingerprint()
        if seen == self._seen:
            return None
        try:
            # Checked here first, even for Valkey: a bad pair is then refused with the files' names.
            fresh = server_context(self.files)
            if self.valkey is not None:
                # Valkey rebuilds its TLS context whenever a tls-* setting is set, to the same value
                # too (a volatile config), and keeps the old one if the files do not load.
                await self.valkey("CONFIG", "SET", "tls-cert-file", self.files.cert_file)
        except (ssl.SSLError, OSError, ValkeyError) as exc:
            if isinstance(exc, ConnectionError):
                # Valkey away for a moment (restarting): ask again on the next round.
                log.info("certificate reload waits for Valkey: %s", exc)
                return None
            self._seen = seen
            metrics.TLS_RELOADS.labels("failed").inc()
            log.warning("certificate %s with key %s not loaded, the previous one is still served: %s",
                        self.files.cert_file, self.files.key_file, exc)
            return "failed"
        self._seen = seen
        if self.serving is not None:
            self.serving.current = fresh
        metrics.TLS_RELOADS.labels("ok").inc()
        log.info("certificate %s reloaded", self.files.cert_file)
        return "ok"
