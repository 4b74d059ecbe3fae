"""kubectl engram status|switchover|snapshot|events NAME [-n NAMESPACE]: installed as `kubectl-engram`,
which kubectl finds on PATH as a plugin."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import sys
import time
from typing import Any

from engram.cli.status_table import print_status, table
from engram.node.peer import PeerRefused, PeerUnreachable, call, control_tls
from engram_operator import GROUP, constants, labels
from engram_operator.kubectl import runner, view
from engram_operator.kubectl.view import PluginError

RESOURCE = f"memoryclusters.{GROUP}"
SWITCHOVER_TIMEOUT = 30.0


def _say(message: str) -> None:
    print(f"kubectl engram: {message}", file=sys.stderr, flush=True)


def _cluster(name: str, namespace: str | None) -> dict[str, Any]:
    return runner.get_json(RESOURCE, name, namespace=namespace)


def _status(name: str, namespace: str | None) -> dict[str, Any]:
    cluster = _cluster(name, namespace)
    ns = cluster["metadata"].get("namespace")

    def pods(component: str) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.selector(name, component).items())
        return runner.get_json("pods", "-l", selector, namespace=ns)["items"]

    return view.status_doc(cluster, pods(labels.ENGINE), pods(labels.JOURNAL))


def cmd_status(args: argparse.Namespace) -> int:
    doc = _status(args.name, args.namespace)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_status(doc)
        if lines := view.resharding_lines(doc):
            print("\n" + "\n".join(lines))
    return 0


def _control_tls(name: str, pod: str, namespace: str) -> tuple[ssl.SSLContext | None, str | None]:
    """TLS to the pod's control port where its node serves it (its config names a certificate): the
    CA from the cluster's certificate Secret, and the pod's DNS name, which the certificate carries."""
    pod_obj = runner.get_json("pod", pod, namespace=namespace)
    node_config = json.loads((pod_obj["metadata"].get("annotations") or {}).get(labels.NODE_CONFIG) or "{}")
    if not node_config.get("tls_cert_file"):
        return None, None
    tls_spec = (_cluster(name, namespace).get("spec") or {}).get("tls") or {}
    secret_name = tls_spec.get("secretName") or labels.tls_secret_name(name)
    ca = (runner.get_json("secret", secret_name, namespace=namespace).get("data") or {}).get(constants.TLS_CA)
    if not ca:
        raise PluginError(f"the control port of {pod} speaks TLS, and Secret {secret_name} has no "
                          f"{constants.TLS_CA} to verify it with")
    server = f"{pod}.{labels.headless_service_name(name)}.{namespace}.svc.{constants.CLUSTER_DOMAIN}"
    return control_tls(ca_data=base64.b64decode(ca).decode()), server


def cmd_switchover(args: argparse.Namespace) -> int:
    doc = _status(args.name, args.namespace)
    primary, target = view.switchover_pair(doc, args.to)
    _say(f"{primary} hands its shard to {target}")
    tls, server = _control_tls(args.name, primary, doc["namespace"])
    with runner.port_forward(primary, constants.ADMIN_PORT, doc["namespace"]) as port:
        try:
            asyncio.run(call("127.0.0.1", port, "ENGRAM.FAILOVER", target, timeout=SWITCHOVER_TIMEOUT,
                             tls=tls, server_hostname=server))
        except (PeerRefused, PeerUnreachable) as exc:
            raise PluginError(f"switchover of {primary} to {target} failed: {exc}") from exc
    _say(f"done: {target} is the primary of its shard")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    request = args.request or time.strftime("kubectl-%Y%m%dT%H%M%SZ", time.gmtime())
    namespace = _cluster(args.name, args.namespace)["metadata"].get("namespace")
    patch = json.dumps(view.snapshot_patch(request))
    runner.kubectl("patch", RESOURCE, args.name, "--type", "merge", "-p", patch, namespace=namespace)
    _say(f"snapshot {request} requested of every shard")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    while True:
        done, results = view.snapshot_progress(_cluster(args.name, namespace), request)
        if done:
            break
        if time.monotonic() > deadline:
            raise PluginError(f"snapshot {request} not finished within {args.timeout:g}s; "
                              f"`kubectl engram status {args.name}` shows each shard's newest snapshot")
        _say(f"waiting for snapshot {request}: {time.monotonic() - started:.0f}s")
        time.sleep(2.0)
    failed = [r for r in results if not r.get("ok")]
    for r in results:
        _say(f"shard {r.get('shard')} on {r.get('pod') or '-'}: {'ok' if r.get('ok') else 'FAILED'} "
             f"{r.get('detail') or ''}".rstrip())
    return 1 if failed else 0


def cmd_events(args: argparse.Namespace) -> int:
    namespace = _cluster(args.name, args.namespace)["metadata"].get("namespace")
    events = runner.get_json("events", "--field-selector", f"involvedObject.name={args.name}",
                             namespace=namespace)["items"]
    if args.json:
        print(json.dumps(events, indent=2))
    elif events:
        table([("TIME", "TYPE", "REASON", "OBJECT", "MESSAGE"), *view.event_rows(events)])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl engram", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("name", metavar="NAME", help="the MemoryCluster")
        p.add_argument("-n", "--namespace", help="its namespace (default: kubectl's current one)")
        p.set_defaults(func=handler)
        return p

    status = command("status", cmd_status,
                     "nodes, shards, zones and roles; each shard's lag and snapshot; resharding progress")
    status.add_argument("--json", action="store_true", help="the shape of `engram local status --json`")
    switch = command("switchover", cmd_switchover, "planned hand-over of a shard to a named replica")
    switch.add_argument("--to", required=True, metavar="POD", help="the ready replica that takes over")
    snap = command("snapshot", cmd_snapshot, "take, verify and store a snapshot of every shard now")
    snap.add_argument("--request", help="a name for this request (default: the time)")
    snap.add_argument("--wait", action="store_true", help="wait until every shard answered")
    snap.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS", help="with --wait")
    events = command("events", cmd_events, "the cluster's events, oldest first")
    events.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PluginError as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
