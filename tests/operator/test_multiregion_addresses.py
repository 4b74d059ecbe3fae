"""A LoadBalancer or NodePort region's external leafnode URLs in the MultiRegionCluster status:
read from its leafnode Services (and the nodes, for NodePort) as the API server returns them, and
shown in status.regions[].externalLeafnodeURLs, or in status.waiting while not all are known."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from k8s_offline import admit, validate_manifest
from test_multiregion_spec import mrc

from engram.multiregion.link import LinkAuth
from engram_operator.builders.multiregion import build_leafnode_services, region_section
from engram_operator.builders.region_link import LINK_TLS, link_blocks
from engram_operator.decisions.multiregion import (
    LeafnodeServiceSeen,
    ObservedRegions,
    RegionCluster,
    decide_regions,
)
from engram_operator.multiregion_reconcile import leafnode_service_from_api, node_address, node_addresses
from engram_operator.multiregion_spec import MultiRegionSpec
from engram_operator.multiregion_status import build_multiregion_status, external_leafnode, region_rows
from engram_operator.observe import SecretData

LINK = SecretData("shop-link", found=True, data={"user": b"link", "password": b"s3cret"})
TLS = SecretData("shop-tls", found=True, data={"tls.crt": b"C", "tls.key": b"K", "ca.crt": b"A"})


def body(east: str = "LoadBalancer", **extra: Any) -> dict[str, Any]:
    """A MultiRegionCluster whose east region's leafnode Services are of type ``east``."""
    return mrc(
        [
            {"name": "east", "namespace": "shop-east", "leafnodeService": {"type": east}},
            {"name": "west", "namespace": "shop-west"},
        ],
        **extra,
    )


def spec(east: str = "LoadBalancer", **extra: Any) -> MultiRegionSpec:
    stored, errors = admit(body(east, **extra))
    assert errors == [], errors
    return MultiRegionSpec.from_body(stored)


def services(mr: MultiRegionSpec, ingress: list[list[dict[str, str]]] | None = None) -> list[dict[str, Any]]:
    """East's leafnode Services as the API server returns them: a nodePort allocated to each server's
    (NodePort and LoadBalancer), and ``ingress[i]`` as server i's load balancer status."""
    out = []
    for i, obj in enumerate(build_leafnode_services(mr, mr.regions[0], "uid-east")):
        obj = copy.deepcopy(obj)
        if obj["spec"]["type"] != "ClusterIP":
            obj["spec"]["ports"][0]["nodePort"] = 30100 + i
        obj["status"] = {"loadBalancer": {"ingress": ingress[i]} if ingress else {}}
        validate_manifest(obj)
        out.append(obj)
    return out


def node(
    name: str, *addresses: tuple[str, str], ready: bool = True, cordoned: bool = False
) -> dict[str, Any]:
    obj = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"unschedulable": cordoned},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "addresses": [{"type": t, "address": a} for t, a in addresses],
        },
    }
    validate_manifest(obj)
    return obj


def observed(mr: MultiRegionSpec, objs: list[dict[str, Any] | None], **extra: Any) -> ObservedRegions:
    """What observe_regions keeps of east's Services (None: not found), both regions made and Ready."""
    clusters = {
        o["metadata"]["labels"]["engram.io/region"]: RegionCluster(
            True, "u", o["metadata"]["labels"], admit(o)[0]["spec"],
            {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]},
        )
        for o in decide_regions(mr, ObservedRegions(link_secret=LINK, tls_secret=TLS)).create
    }
    seen = tuple(
        leafnode_service_from_api(f"shop-east-leafnode-{i}", obj) for i, obj in enumerate(objs)
    )
    return ObservedRegions(clusters=clusters, link_secret=LINK, tls_secret=TLS,
                           leafnode_services={"east": seen}, **extra)


def status_of(mr: MultiRegionSpec, seen: ObservedRegions) -> dict[str, Any]:
    """The whole status, admitted by the CRD's status schema as the status subresource would be."""
    status = build_multiregion_status(mr, seen, decide_regions(mr, seen), {}, 1)
    assert admit({**admit(body())[0], "status": status})[1] == []
    return status


def east_row(status: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in status["regions"] if r["name"] == "east")


def external_waits(status: dict[str, Any]) -> list[str]:
    return [w for w in status["waiting"] if "external leafnode URLs" in w]


def test_a_load_balancers_ips_are_the_external_urls_one_per_journal_server() -> None:
    mr = spec()
    objs = services(mr, [[{"ip": f"203.0.113.{10 + i}"}] for i in range(3)])
    status = status_of(mr, observed(mr, list(objs)))
    row = east_row(status)
    assert row["externalLeafnodeURLs"] == [f"nats-leaf://203.0.113.{10 + i}:7422" for i in range(3)]
    # The in-cluster names stay, for regions in this Kubernetes cluster.
    assert row["leafnodeURLs"][0] == "nats-leaf://shop-east-leafnode-0.shop-east.svc.cluster.local:7422"
    assert external_waits(status) == []
    # West is ClusterIP: reached by its in-cluster names only.
    west = next(r for r in status["regions"] if r["name"] == "west")
    assert "externalLeafnodeURLs" not in west and len(west["leafnodeURLs"]) == 3


def test_a_load_balancers_hostname_is_taken_over_its_ip() -> None:
    mr = spec()
    objs = services(mr, [
        [{"hostname": "a0.elb.example.com"}],
        [{"ip": "203.0.113.11", "hostname": "a1.elb.example.com"}],
        # Dual stack: the first ingress point is taken, an IPv6 one in brackets.
        [{"ip": "2001:db8::12"}, {"ip": "203.0.113.12"}],
    ])
    row = east_row(status_of(mr, observed(mr, list(objs))))
    assert row["externalLeafnodeURLs"] == [
        "nats-leaf://a0.elb.example.com:7422",
        "nats-leaf://a1.elb.example.com:7422",
        "nats-leaf://[2001:db8::12]:7422",
    ]


def test_while_a_load_balancer_has_no_address_the_list_is_empty_and_waiting_names_its_service() -> None:
    mr = spec()
    objs = services(mr, [[{"ip": "203.0.113.10"}], [], [{"ip": "203.0.113.12"}]])
    status = status_of(mr, observed(mr, list(objs)))
    # A partial list copied into another cluster would leave a server out: none is shown.
    assert east_row(status)["externalLeafnodeURLs"] == []
    assert external_waits(status) == [
        "region east: external leafnode URLs not known yet: Service shop-east/shop-east-leafnode-1: "
        "no load balancer address yet"
    ]
    # The region is Ready all the same: reaching it from elsewhere is the provider's part.
    assert status["phase"] == "Ready"


def test_a_missing_an_unreadable_and_a_wrongly_typed_service_each_say_why() -> None:
    mr = spec()
    objs: list[dict[str, Any] | None] = list(services(mr, [[{"ip": "203.0.113.10"}]] * 3))
    objs[0] = None
    objs[2] = {**objs[2], "spec": {**objs[2]["spec"], "type": "ClusterIP"}}  # type: ignore[index]
    seen = observed(mr, objs)
    first, _, last = seen.leafnode_services["east"]
    unreadable = LeafnodeServiceSeen("shop-east-leafnode-1", error="500 Internal Server Error")
    status = status_of(mr, dataclasses.replace(seen, leafnode_services={"east": (first, unreadable, last)}))
    assert east_row(status)["externalLeafnodeURLs"] == []
    [wait] = external_waits(status)
    assert "shop-east/shop-east-leafnode-0: not made yet" in wait
    assert "shop-east/shop-east-leafnode-1: could not be read (500 Internal Server Error)" in wait
    assert "shop-east/shop-east-leafnode-2: of type ClusterIP, not LoadBalancer: delete it" in wait


def test_services_not_read_yet_are_pending_not_empty_of_meaning() -> None:
    mr = spec()
    external = external_leafnode(mr, mr.regions[0], ObservedRegions())
    assert external is not None and external.urls == () and "not read" in external.pending


def test_a_nodeport_region_is_reached_through_its_usable_nodes_in_turn_each_server_on_its_node_port() -> None:
    mr = spec("NodePort")
    nodes = [
        node("n3", ("InternalIP", "10.0.0.3"), ("ExternalIP", "198.51.100.3")),
        node("n1", ("InternalIP", "10.0.0.1"), ("ExternalIP", "198.51.100.1"), ("Hostname", "n1")),
        node("n2", ("InternalIP", "10.0.0.2")),  # no external address: clusters on one private network
        node("n0", ("ExternalIP", "198.51.100.9"), ready=False),
        node("n4", ("ExternalIP", "198.51.100.4"), cordoned=True),
        node("n5", ("Hostname", "n5")),
    ]
    addresses = node_addresses(nodes)
    assert addresses == ("198.51.100.1", "10.0.0.2", "198.51.100.3")
    row = east_row(status_of(mr, observed(mr, list(services(mr)), node_addresses=addresses)))
    assert row["externalLeafnodeURLs"] == [
        "nats-leaf://198.51.100.1:30100",
        "nats-leaf://10.0.0.2:30101",
        "nats-leaf://198.51.100.3:30102",
    ]
    # Fewer nodes than servers: they wrap around.
    two = observed(mr, list(services(mr)), node_addresses=("a", "b"))
    assert region_rows(mr, two)[0]["externalLeafnodeURLs"] == [
        "nats-leaf://a:30100", "nats-leaf://b:30101", "nats-leaf://a:30102",
    ]


@pytest.mark.parametrize(
    ("nodes_error", "why"),
    [("", "no Ready node has an ExternalIP or InternalIP address"), ("403 Forbidden", "(403 Forbidden)")],
)
def test_a_nodeport_region_without_node_addresses_is_pending(nodes_error: str, why: str) -> None:
    mr = spec("NodePort")
    status = status_of(mr, observed(mr, list(services(mr)), nodes_error=nodes_error))
    assert east_row(status)["externalLeafnodeURLs"] == []
    [wait] = external_waits(status)
    assert wait.startswith("region east: external leafnode URLs not known yet:") and why in wait


def test_node_address_prefers_external_ip_and_skips_nodes_that_take_no_pods() -> None:
    both = node("a", ("InternalIP", "10.0.0.1"), ("ExternalIP", "198.51.100.1"))
    assert node_address(both) == "198.51.100.1"
    assert node_address(node("a", ("Hostname", "a"), ("InternalIP", "10.0.0.1"))) == "10.0.0.1"
    assert node_address(node("a", ("ExternalIP", "198.51.100.1"), ready=False)) == ""
    assert node_address(node("a", ("ExternalIP", "198.51.100.1"), cordoned=True)) == ""


def test_a_clusterip_region_has_no_external_urls() -> None:
    mr = spec("ClusterIP")
    assert external_leafnode(mr, mr.regions[0], ObservedRegions()) is None
    status = status_of(mr, observed(mr, []))
    assert all("externalLeafnodeURLs" not in r for r in status["regions"])
    assert external_waits(status) == []


def test_under_link_tls_the_urls_dialled_from_another_cluster_connect_over_tls() -> None:
    tls = {"secretName": "shop-link", "tls": {"secretName": "shop-tls"}}
    mr = spec(link=tls)
    objs = services(mr, [[{"hostname": f"leaf-{i}.east.example.com"}] for i in range(3)])
    row = east_row(status_of(mr, observed(mr, list(objs))))
    urls = row["externalLeafnodeURLs"]
    # The scheme of the in-cluster URLs: the dialling side's TLS comes from its remote's tls block.
    assert {u.split("://")[0] for u in urls} == {u.split("://")[0] for u in row["leafnodeURLs"]}
    # The other cluster lists east as remote with these URLs; its journal servers dial them over TLS.
    other = mrc(
        [
            {"name": "west", "namespace": "shop-west"},
            {"name": "east", "remote": {"clusterName": "shop-east", "shards": 2, "leafnodeURLs": urls}},
        ],
        link=tls,
    )
    stored, errors = admit(other)
    assert errors == [], errors
    there = MultiRegionSpec.from_body(stored)
    west = next(r for r in there.regions if r.name == "west")
    block = "\n".join(link_blocks(region_section(there, west), LinkAuth("link", "s3cret"), tls=True))
    remote = block.split("# region east")[1].split("# region")[0]
    assert "nats-leaf://link-west:s3cret@leaf-0.east.example.com:7422" in remote
    assert f'ca_file: "{LINK_TLS.ca_file}"' in remote


def test_the_crd_refuses_a_status_field_it_does_not_declare() -> None:
    """The status checks above can fail: the schema is closed (as kubectl's strict field validation)."""
    mr = spec()
    status = status_of(mr, observed(mr, list(services(mr, [[{"ip": "203.0.113.10"}]] * 3))))
    east_row(status)["externalLeafnodeUrls"] = east_row(status).pop("externalLeafnodeURLs")
    stored, _ = admit(body())
    assert admit({**stored, "status": status})[1] != []
