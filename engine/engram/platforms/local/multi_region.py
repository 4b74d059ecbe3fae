"""`engram local up/status/down` of a multi-region cluster: one local cluster per region, linked
(docs/multi-region.md, "A local multi-region cluster"). The layout is decided in regions.py; this
module starts, asks and stops the region clusters through cluster.py, as `up` does one cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats

from engram.multiregion.lag import ASK_TIMEOUT, RegionJournal, read_lags
from engram.multiregion.link import INBOUND_ACCOUNT
from engram.platforms.local import cluster, journal, plan, ports
from engram.platforms.local.cluster import AlreadyExists, LocalError, NotRunning, Progress
from engram.platforms.local.link_relay import (
    CUTS_DIR,
    clear_cuts,
    cut_links,
    cut_marker,
    every_link,
    links_to_cut,
)
from engram.platforms.local.regions import (
    RegionsError,
    RegionsRecord,
    check_regions,
    load_record,
    plan_links,
    port_bases,
    record_path,
    region_cluster,
    relay_port_bases,
)
from engram.platforms.local.state import STATE_FILE, ClusterState, JournalState, cluster_dir, replace_file
from engram.platforms.local.tls import LocalTLS

LINK_TIMEOUT = 60.0


def refused_options(spec: plan.ClusterSpec) -> list[str]:
    """The `up` options a multi-region cluster cannot take, each with why."""
    refused = []
    if spec.netns:
        refused.append("--netns (the regions' journals would have to reach each other across the zones' "
                       "namespaces)")
    if spec.restore_from or spec.restore_cluster:
        refused.append("--restore-from/--restore-from-cluster (keys restored into each region would carry "
                       "no stamps, so the regions could not agree on them)")
    return refused


def cuts_dir(base: str | Path, name: str) -> Path:
    """Where the markers of the multi-region cluster's cut links are (link_relay.py)."""
    return cluster_dir(base, name) / CUTS_DIR


def _existing(base: str | Path, clusters: Sequence[str]) -> list[str]:
    return [c for c in clusters if (cluster_dir(base, c) / STATE_FILE).exists()]


def up(spec: plan.ClusterSpec, regions: Sequence[str], base: str | Path, timeout: float = 90.0,
       progress: Progress = lambda _msg: None) -> dict[str, Any]:
    """Start one cluster per region, linked; return the multi-region status once every region serves
    and the link is up. AlreadyExists when it is running already."""
    name = spec.name
    regions = check_regions(name, list(regions))
    if refused := refused_options(spec):
        raise RegionsError(f"--regions cannot be combined with {'; '.join(refused)}")
    if (cluster_dir(base, name) / STATE_FILE).exists():
        raise LocalError(f"cluster {name} already exists as a single-region cluster; choose another name "
                         f"or stop it with `{cluster.down_hint(base, name)}`")
    record = load_record(base, name)
    clusters = [region_cluster(name, r) for r in regions]
    if record is not None and record.regions != regions:
        raise LocalError(f"{name} is a multi-region cluster of regions {','.join(record.regions)}, not "
                         f"{','.join(regions)}; stop it with `{cluster.down_hint(base, name)}` first")
    if running := _existing(base, clusters):
        if record is not None and len(running) == len(clusters):
            raise AlreadyExists(f"multi-region cluster {name} is already running (regions "
                                f"{', '.join(regions)}); choose another name or stop it with "
                                f"`{cluster.down_hint(base, name)}`")
        what = f"part of {name} ({', '.join(running)})" if record else f"cluster {', '.join(running)}"
        raise LocalError(f"{what} already exists; stop it with "
                         f"`{cluster.down_hint(base, name if record else running[0])}` first")
    # Ports: each region's cluster allocates its own; the listening region's leafnode ports come
    # from the same allocator, so nothing else in this process is handed them.
    per_cluster = plan.port_count(replace(spec, name=clusters[0]))
    bases = port_bases(spec.base_port, len(regions), per_cluster, len(spec.zones))
    leaf_ports = {}
    for k, region in enumerate(regions):
        start = bases[k]
        leaf_ports[region] = ports.allocate(len(spec.zones), None if start is None else start + per_cluster)
    # The link's password: each region's servers log in to the others with it, which binds each
    # connection to its own account (engram.multiregion.link).
    # Each region's dials go through relays its supervisor holds, so a link can be cut (link_relay.py).
    relay_bases = relay_port_bases(spec.base_port, len(regions), per_cluster, len(spec.zones))
    relay_ports = {r: ports.allocate(len(spec.zones) * (len(regions) - 1), relay_bases[k])
                   for k, r in enumerate(regions)}
    ca_files = _region_cas(base, name, regions) if spec.tls else None
    links = plan_links(name, regions, spec.zones, leaf_ports, ports.LOOPBACK, secrets.token_hex(16), ca_files,
                       relay_ports, str(cuts_dir(base, name)))
    clear_cuts(cuts_dir(base, name))  # a cut left by `down --keep-data`: links start up
    path = record_path(base, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, RegionsRecord(name, regions).to_json())
    launched: list[cluster.Launched] = []
    try:
        # Every region's supervisor starts before any is waited for: a primary's inbound streams
        # then find the other region's journal linked, where a stream created before the link came
        # up was seen to wait about 40 s for NATS to retry its source.
        for k, region in enumerate(regions):
            progress(f"region {region}: starting cluster {clusters[k]}")
            launched.append(cluster.launch(
                replace(spec, name=clusters[k], base_port=bases[k], region_link=links[region]), base,
                _prefixed(progress, region)))
        for region, started in zip(regions, launched, strict=True):
            cluster.wait_serving(started, timeout, _prefixed(progress, region))
        asyncio.run(_wait_linked(base, clusters, LINK_TIMEOUT))
        progress(f"regions {', '.join(regions)} linked")
    except BaseException:
        progress("start failed; stopping the regions started")
        for started in launched:
            cluster.abandon(started)
        if record is None:  # a kept record (down --keep-data) names data still there
            _remove_record(base, name)
        raise
    return status(base, name)


def _region_cas(base: str | Path, name: str, regions: Sequence[str]) -> dict[str, str]:
    """Every region's CA, made before any region starts: each region's journal servers load the
    others' CAs (to verify their leafnode certificates) when they start."""
    cas = {}
    for region in regions:
        tls = LocalTLS(cluster_dir(base, region_cluster(name, region)) / "tls")
        tls.ensure([ports.LOOPBACK])
        cas[region] = tls.ca_file
    return cas


def _prefixed(progress: Progress, region: str) -> Progress:
    return lambda msg: progress(f"region {region}: {msg}")


async def _leafs(server: JournalState) -> list[dict[str, Any]] | None:
    """A journal server's leaf node connections (its monitoring port's /leafz); None when it does not
    answer (stopped, or away)."""
    try:
        code, body = await journal._http_get(server.host, server.http_port, "/leafz", ASK_TIMEOUT)
        return (json.loads(body).get("leafs") or []) if code == 200 else None
    except (OSError, TimeoutError, ValueError, IndexError):
        return None


async def leaf_connections(server: JournalState) -> int:
    """How many of a journal server's own links to other regions are up: its leaf node connections
    bound to the inbound account."""
    return sum(1 for leaf in await _leafs(server) or [] if leaf.get("account") == INBOUND_ACCOUNT)


async def _wait_linked(base: str | Path, clusters: Sequence[str], timeout: float) -> None:
    """Wait until every journal server of every region that dials holds its leaf connections."""
    states = [ClusterState.load(cluster_dir(base, c) / STATE_FILE) for c in clusters]
    dialling = [(s, server) for s in states if s.leaf_remotes for server in s.journal]
    deadline = time.monotonic() + timeout
    while True:
        counts = await asyncio.gather(*(leaf_connections(j) for _, j in dialling))
        missing = [f"{s.name} {j.target}" for (s, j), n in zip(dialling, counts, strict=True)
                   if n < len(s.leaf_remotes)]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise LocalError(f"the regions' journals did not link within {timeout:.0f}s: no leaf connection "
                             f"from {', '.join(missing)} (see their journal logs)")
        await asyncio.sleep(0.2)


def _remove_record(base: str | Path, name: str) -> None:
    record_path(base, name).unlink(missing_ok=True)
    clear_cuts(cuts_dir(base, name))
    with contextlib.suppress(OSError):
        cuts_dir(base, name).rmdir()
    with contextlib.suppress(OSError):
        cluster_dir(base, name).rmdir()


# ---- status ------------------------------------------------------------------------------------


def status(base: str | Path, name: str) -> dict[str, Any]:
    """Each region's `local status` document, with its lag behind every other region (`lag`)."""
    record = load_record(base, name)
    if record is None:
        raise NotRunning(f"{name} is not a multi-region cluster (no {record_path(base, name)})")
    docs: dict[str, dict[str, Any]] = {}
    states = {}
    for region, name_of in record.clusters.items():
        try:
            states[region] = cluster.load_running(base, name_of)
        except LocalError as exc:
            # A region that is down is what an operator looks at the others' lag for: show it as
            # down and go on (its lag cannot be read; the others' shows how long since it spoke).
            docs[region] = {"region": region, "name": name_of, "running": False, "error": str(exc), "lag": []}
            continue
        docs[region] = {"region": region, "running": True,
                        **cluster.describe(states[region], cluster._probe(states[region]))}
    if not states:
        raise NotRunning(f"no region of {name} is running ({', '.join(record.clusters.values())}); "
                         f"clean up with `{cluster.down_hint(base, name)}`")
    lags = asyncio.run(_lags(states))
    for region, lag in lags.items():
        docs[region]["lag"] = lag
    cut = set(cut_links(cuts_dir(base, name)))
    links = [{"regions": list(pair), "cut": pair in cut} for pair in every_link(record.regions)]
    return {"name": name, "regions": docs, "links": links}


async def _connect(state: ClusterState) -> nats.NATS | None:
    try:
        return await nats.connect(state.journal_urls, connect_timeout=2, allow_reconnect=False,
                                  max_reconnect_attempts=0, **state.journal_security.connect_options())
    except Exception:  # a region whose journal is away: its figures show as unknown
        return None


async def _lags(states: dict[str, ClusterState]) -> dict[str, list[dict[str, Any]]]:
    """Each running region's lag rows, read from every region's own journal (engram.multiregion.lag)."""
    conns = {r: await _connect(s) for r, s in states.items()}
    try:
        js = {r: c.jetstream(timeout=ASK_TIMEOUT) if c else None for r, c in conns.items()}
        journals = {r: RegionJournal(r, s.name, s.shards, s.linked_regions) for r, s in states.items()}
        return await read_lags(journals, js, ASK_TIMEOUT)
    finally:
        for conn in conns.values():
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


# ---- cutting and healing links ------------------------------------------------------------------


def partition(base: str | Path, name: str, named: Sequence[str], timeout: float = LINK_TIMEOUT,
              progress: Progress = lambda _msg: None) -> dict[str, Any]:
    """Cut the link between two named regions, or every link of one, while all go on serving; the
    multi-region status once the running regions' journals hold no connection across it."""
    record = _record(base, name)
    try:
        pairs = links_to_cut(record.regions, list(named))
    except ValueError as exc:
        raise RegionsError(f"partition {name}: {exc}") from None
    cuts = cuts_dir(base, name)
    cuts.mkdir(parents=True, exist_ok=True)
    for a, b in pairs:
        cut_marker(cuts, a, b).touch()
        progress(f"cutting the link {a}-{b}")
    asyncio.run(_wait_links(base, record, pairs, up=False, timeout=timeout))
    progress(f"cut: {', '.join(f'{a}-{b}' for a, b in pairs)}")
    return status(base, name)


def heal(base: str | Path, name: str, named: Sequence[str] = (), timeout: float = LINK_TIMEOUT,
         progress: Progress = lambda _msg: None) -> dict[str, Any]:
    """Heal the named link (as `partition` names them), or every cut link; the multi-region status
    once the running regions' journals are linked across it again."""
    record = _record(base, name)
    cuts = cuts_dir(base, name)
    try:
        pairs = links_to_cut(record.regions, list(named)) if named else cut_links(cuts)
    except ValueError as exc:
        raise RegionsError(f"heal {name}: {exc}") from None
    for a, b in pairs:
        cut_marker(cuts, a, b).unlink(missing_ok=True)
        progress(f"healing the link {a}-{b}")
    asyncio.run(_wait_links(base, record, pairs, up=True, timeout=timeout))
    if pairs:
        progress(f"linked again: {', '.join(f'{a}-{b}' for a, b in pairs)}")
    return status(base, name)


def _record(base: str | Path, name: str) -> RegionsRecord:
    record = load_record(base, name)
    if record is None:
        raise NotRunning(f"{name} is not a multi-region cluster (no {record_path(base, name)})")
    return record


async def _leaf_peers(server: JournalState) -> list[str] | None:
    """The servers a journal server's own dials to other regions reach, by name; None when it does
    not answer."""
    leafs = await _leafs(server)
    return None if leafs is None else [leaf.get("name", "") for leaf in leafs if leaf.get("is_spoke")]


def links_reached(peers: Sequence[str], other_cluster: str) -> bool:
    """Whether a server's dials reach a server of the other region's cluster (named CLUSTER-journal-Z)."""
    return any(peer.startswith(f"{other_cluster}-") for peer in peers)


async def _wait_links(base: str | Path, record: RegionsRecord, pairs: Sequence[tuple[str, str]], *,
                      up: bool, timeout: float) -> None:
    """Wait until every answering journal server of each pair's regions reaches (up) or no longer
    reaches (not up) the other region; regions that are down are not waited for."""
    clusters = record.clusters
    states = {}
    for region in {r for pair in pairs for r in pair}:
        with contextlib.suppress(FileNotFoundError, ValueError):
            states[region] = ClusterState.load(cluster_dir(base, clusters[region]) / STATE_FILE)
    checks = [(a, b, server) for x, y in pairs for a, b in ((x, y), (y, x))
              if a in states and b in states for server in states[a].journal]
    deadline = time.monotonic() + timeout
    while True:
        peers = await asyncio.gather(*(_leaf_peers(server) for _, _, server in checks))
        waiting = [f"{a} {server.target} -> {b}" for (a, b, server), seen in zip(checks, peers, strict=True)
                   if seen is not None and links_reached(seen, clusters[b]) is not up]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise LocalError(f"the link{'s' if len(pairs) > 1 else ''} did not "
                             f"{'come back' if up else 'go down'} within {timeout:.0f}s: "
                             f"{', '.join(waiting)} (see the journal and supervisor logs)")
        await asyncio.sleep(0.2)


# ---- every region at once ------------------------------------------------------------------------


def each_region(base: str | Path, name: str, change: Callable[[str, Progress], object],
                progress: Progress = lambda _msg: None) -> dict[str, Any]:
    """Apply one cluster-wide change (an upgrade, a replica count) to every region's cluster, one
    region after another, so that the others keep serving their clients meanwhile; the
    multi-region status after. A region that fails stops the run: its message says which."""
    record = load_record(base, name)
    if record is None:
        raise NotRunning(f"{name} is not a multi-region cluster (no {record_path(base, name)})")
    for region, cluster_name in record.clusters.items():
        progress(f"region {region}: cluster {cluster_name}")
        try:
            change(cluster_name, _prefixed(progress, region))
        except LocalError as exc:
            raise LocalError(f"region {region} ({cluster_name}): {exc}; the regions before it are done, "
                             "run the same command again to go on") from exc
    return status(base, name)


# ---- down --------------------------------------------------------------------------------------


def down(base: str | Path, name: str, keep_data: bool = False,
         progress: Progress = lambda _msg: None) -> None:
    """Stop every region's cluster and forget the multi-region cluster (unless keep_data)."""
    record = load_record(base, name)
    if record is None:
        raise NotRunning(f"{name} is not a multi-region cluster (no {record_path(base, name)})")
    stopped = []
    for region, name_of in record.clusters.items():
        try:
            cluster.down(base, name_of, keep_data=keep_data,
                         progress=lambda msg, r=region: progress(f"region {r}: {msg}"))
            stopped.append(region)
            progress(f"region {region}: cluster {name_of} stopped")
        except NotRunning as exc:
            progress(f"region {region}: {exc}")
    if not keep_data:
        _remove_record(base, name)
    if not stopped:
        raise NotRunning(f"no region of {name} was running; nothing to do")
