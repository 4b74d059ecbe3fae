"""A renewed certificate is served without a restart: by the node's own TLS ports (a new context
swapped in at each handshake) and, where Valkey serves TLS, by asking Valkey to read its files again."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from engram import metrics
from engram.node.certificate import CertificateWatch, ServerCertificate, TlsFiles
from engram.valkey.connection import ValkeyError
from tests.certificates import TestCA, serial_of

HOSTS = ["127.0.0.1"]


def _files(tmp_path: Path, ca: TestCA) -> tuple[TlsFiles, int]:
    ca.write_ca(tmp_path / "ca.pem")
    files = TlsFiles(str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(tmp_path / "ca.pem"))
    serial = ca.issue(Path(files.cert_file), Path(files.key_file), HOSTS)
    return files, serial


def _failed() -> float:
    return metrics.TLS_RELOADS.labels("failed")._value.get()


async def _echo_server(certificate: ServerCertificate) -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0, ssl=certificate.serving_context())


async def _connect(
    server: asyncio.Server, ca_file: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    port = server.sockets[0].getsockname()[1]
    context = ssl.create_default_context(cafile=ca_file)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return reader, writer, serial_of(der)


async def _echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await reader.readexactly(len(data))


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_new_connections_get_the_renewed_certificate_and_open_ones_keep_working(tmp_path: Path) -> None:
    ca = TestCA()
    files, first = _files(tmp_path, ca)

    async def scenario() -> None:
        certificate = ServerCertificate(files)
        watch = CertificateWatch(files, certificate)
        server = await _echo_server(certificate)
        reader, writer, served = await _connect(server, files.ca_file)
        assert served == first
        assert await watch.check() is None  # nothing changed, nothing loaded
        second = ca.issue(Path(files.cert_file), Path(files.key_file), HOSTS)
        assert await watch.check() == "ok"
        assert (await _connect(server, files.ca_file))[2] == second
        assert await _echoes(reader, writer, b"still here") == b"still here"
        server.close()

    _run(scenario)


def test_a_key_that_does_not_match_keeps_the_old_certificate_until_the_next_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = TestCA()
    files, first = _files(tmp_path, ca)

    async def scenario() -> None:
        certificate = ServerCertificate(files)
        watch = CertificateWatch(files, certificate)
        server = await _echo_server(certificate)
        failed_before = _failed()
        ca.issue(Path(files.cert_file), Path(files.key_file), HOSTS, write_key=False)
        assert await watch.check() == "failed"
        assert _failed() == failed_before + 1
        assert files.cert_file in caplog.text and files.key_file in caplog.text
        assert (await _connect(server, files.ca_file))[2] == first
        assert await watch.check() is None  # the same broken pair is not tried again
        # The key arrives: the next change is loaded.
        third = ca.issue(Path(files.cert_file), Path(files.key_file), HOSTS)
        assert await watch.check() == "ok"
        assert (await _connect(server, files.ca_file))[2] == third
        server.close()

    _run(scenario)


def test_an_unreadable_file_keeps_the_old_certificate(tmp_path: Path) -> None:
    ca = TestCA()
    files, first = _files(tmp_path, ca)

    async def scenario() -> None:
        certificate = ServerCertificate(files)
        watch = CertificateWatch(files, certificate)
        server = await _echo_server(certificate)
        os.unlink(files.key_file)
        assert await watch.check() == "failed"
        assert (await _connect(server, files.ca_file))[2] == first
        server.close()

    _run(scenario)


def test_a_secret_volume_swapped_by_its_data_symlink_is_noticed(tmp_path: Path) -> None:
    """The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>; a renewal writes a
    new timestamped directory and renames a new ..data link over the old one."""
    ca = TestCA()
    ca.write_ca(tmp_path / "ca.crt")
    first_dir, second_dir = tmp_path / "..2026_01", tmp_path / "..2026_02"
    for d in (first_dir, second_dir):
        d.mkdir()
    ca.issue(first_dir / "tls.crt", first_dir / "tls.key", HOSTS)
    (tmp_path / "..data").symlink_to(first_dir.name)
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    files = TlsFiles(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"), str(tmp_path / "ca.crt"))

    async def scenario() -> None:
        certificate = ServerCertificate(files)
        watch = CertificateWatch(files, certificate)
        server = await _echo_server(certificate)
        second = ca.issue(second_dir / "tls.crt", second_dir / "tls.key", HOSTS)
        assert await watch.check() is None  # written beside, not yet swapped in
        (tmp_path / "..data_tmp").symlink_to(second_dir.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        assert await watch.check() == "ok"
        assert (await _connect(server, files.ca_file))[2] == second
        server.close()

    _run(scenario)


class FakeValkey:
    """Records the commands the watch sends; answers with what ``reply`` holds (raised if an error)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []
        self.reply: object = b"OK"

    async def __call__(self, *args: str) -> object:
        self.sent.append(args)
        if isinstance(self.reply, BaseException):
            raise self.reply
        return self.reply


def test_valkey_is_asked_to_read_its_files_again_on_a_change_only(tmp_path: Path) -> None:
    ca = TestCA()
    files, _ = _files(tmp_path, ca)
    valkey = FakeValkey()
    watch = CertificateWatch(files, None, valkey)

    async def scenario() -> None:
        assert await watch.check() is None
        assert valkey.sent == []
        ca.issue(Path(files.cert_file), Path(files.key_file), HOSTS)
        assert await watch.check() == "ok"
        # The same path: Valkey rebuilds its whole TLS context (certificate, key and CA) from it.
        assert valkey.sent == [("CONFIG", "SET", "tls-cert-file", files.cert_file)]

    _run(scenario)


def test_a_pair_that_does_not_load_is_never_sent_to_valkey(tmp_path: Path) -> None:
    ca = TestCA()
    files, _ = _files(tmp_path, ca)
    valkey = FakeValkey()
    watch = CertificateWatch(files, None, valkey)

    async def scenario() -> None:
        ca.issue(Path(files.cert_file), Path(files.key_file), HOSTS, write_key=False)
        assert await watch.check() == "failed"
        assert valkey.sent == []

    _run(scenario)


def test_valkey_refusing_counts_a_failure_and_valkey_away_is_asked_again(tmp_path: Path) -> None:
    ca = TestCA()
    files, _ = _files(tmp_path, ca)
    valkey = FakeValkey()
    watch = CertificateWatch(files, None, valkey)

    async def scenario() -> None:
        ca.issue(Path(files.cert_file), Path(files.key_file), HOSTS)
        valkey.reply = ValkeyError("ERR CONFIG SET failed (possibly related to argument 'tls-cert-file')")
        failed_before = _failed()
        assert await watch.check() == "failed"
        assert _failed() == failed_before + 1
        assert await watch.check() is None  # refused: tried again on the next change, not before
        ca.issue(Path(files.cert_file), Path(files.key_file), HOSTS)
        valkey.reply = ConnectionRefusedError("valkey.sock")
        assert await watch.check() is None  # away: nothing decided
        valkey.reply = b"OK"
        assert await watch.check() == "ok"
        assert len(valkey.sent) == 3

    _run(scenario)
