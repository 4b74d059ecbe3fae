"""The readiness probe: its verdict from ENGRAM.STATUS fields, asked on the node's control port."""

from __future__ import annotations

import asyncio

import pytest
import redis

from engram.node import probe
from engram.node.control import ControlServer
from engram.node.peer import parse_status
from engram.node.probe import ready
from engram.platforms.local import ports
from tests.threaded_server import serving


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"role": "primary"}, True),
        ({"role": "replica", "halted": "", "lag": "3"}, True),
        ({"role": "replica", "halted": "", "lag": "5000"}, False),
        ({"role": "replica", "halted": "entry 9 was written by engine 9.0.0", "lag": "0"}, False),
        ({"role": "starting"}, False),
    ],
)
def test_ready_means_primary_or_a_caught_up_applying_replica(fields: dict[str, str], expected: bool) -> None:
    assert ready(fields, max_lag=1000)[0] is expected


def test_status_replies_parse_into_strings() -> None:
    assert parse_status([b"role", b"replica", b"lag", b"2"]) == {"role": "replica", "lag": "2"}
    with pytest.raises(ValueError, match="not a field/value array"):
        parse_status([b"odd"])




async def _no_switchover(target: str) -> None:
    raise AssertionError("the probe must not request a switchover")


def test_the_probe_asks_the_nodes_control_port() -> None:
    control = ControlServer(lambda: {"role": "replica", "halted": "", "lag": "2"}, _no_switchover)
    with serving(lambda port: control.start(ports.LOOPBACK, port)) as port:
        assert probe.main(["--port", str(port)]) == 0


def test_a_port_that_does_not_know_engram_status_is_not_ready(capsys: pytest.CaptureFixture[str]) -> None:
    """What the probe meets if pointed at the client port, where Valkey serves clients."""

    async def valkey_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"-ERR unknown command 'ENGRAM.STATUS', with args beginning with: \r\n")
        await writer.drain()
        writer.close()

    with serving(lambda port: asyncio.start_server(valkey_like, ports.LOOPBACK, port)) as port:
        assert probe.main(["--port", str(port), "--timeout", "2"]) == 1
    assert "not ready" in capsys.readouterr().err


def test_the_probes_help_says_port_is_the_control_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        probe.main(["--help"])
    assert "control port" in capsys.readouterr().out


def test_the_control_port_speaks_resp3_to_clients_that_open_with_hello_3() -> None:
    """redis-py 8 opens with HELLO 3; ENGRAM.STATUS is then a map, as a client expects."""
    control = ControlServer(lambda: {"role": "primary", "lag": "0"}, _no_switchover)
    with serving(lambda port: control.start(ports.LOOPBACK, port)) as port:
        client = redis.Redis(host=ports.LOOPBACK, port=port, protocol=3)
        assert client.execute_command("ENGRAM.STATUS") == {b"role": b"primary", b"lag": b"0"}
        assert client.execute_command("HELLO", "3")[b"proto"] == 3
        legacy = redis.Redis(host=ports.LOOPBACK, port=port, protocol=2)
        assert legacy.execute_command("ENGRAM.STATUS") == [b"role", b"primary", b"lag", b"0"]
        with pytest.raises(redis.ResponseError, match="NOPROTO"):
            legacy.execute_command("HELLO", "4")
        client.close()
        legacy.close()


def test_the_control_port_serves_the_nodes_prometheus_metrics() -> None:
    """A local cluster's nodes serve no metrics port: ENGRAM.METRICS is the same page."""
    control = ControlServer(lambda: {"role": "primary"}, _no_switchover)
    with serving(lambda port: control.start(ports.LOOPBACK, port)) as port:
        client = redis.Redis(host=ports.LOOPBACK, port=port)
        page = client.execute_command("ENGRAM.METRICS").decode()
        client.close()
    assert 'engram_commit_stage_seconds_count{stage="append"}' in page
