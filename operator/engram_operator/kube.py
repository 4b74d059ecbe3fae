"""Thin Kubernetes API access for the reconcile (the official client is synchronous: calls go to threads)."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from engram_operator import GROUP, PLURAL, VERSION, labels


def load_config() -> None:
    """In a pod use the service account; elsewhere the current kubeconfig context."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def _to_dict(obj: Any) -> dict[str, Any]:
    return client.ApiClient().sanitize_for_serialization(obj)


def _selector(cluster: str, component: str) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.selector(cluster, component).items())


async def list_nodes() -> list[dict[str, Any]]:
    result = await asyncio.to_thread(client.CoreV1Api().list_node)
    return [_to_dict(n) for n in result.items]


async def list_pods(namespace: str, cluster: str, component: str) -> list[dict[str, Any]]:
    result = await asyncio.to_thread(
        client.CoreV1Api().list_namespaced_pod, namespace, label_selector=_selector(cluster, component)
    )
    return [_to_dict(p) for p in result.items]


async def list_engine_pods(namespace: str, cluster: str) -> list[dict[str, Any]]:
    return await list_pods(namespace, cluster, labels.ENGINE)


async def list_jobs(namespace: str, cluster: str) -> list[dict[str, Any]]:
    """The cluster's Jobs: provisioning and reshard Jobs (app.kubernetes.io/component tells which)."""
    selector = f"{labels.CLUSTER}={cluster},{labels.MANAGED_BY}={labels.MANAGER}"
    result = await asyncio.to_thread(
        client.BatchV1Api().list_namespaced_job, namespace, label_selector=selector
    )
    return [_to_dict(j) for j in result.items]


async def get_memorycluster(namespace: str, name: str) -> dict[str, Any] | None:
    """Another MemoryCluster of the namespace (a restore source), or None when there is none."""
    try:
        return await asyncio.to_thread(
            client.CustomObjectsApi().get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise


async def get_secret(namespace: str, name: str) -> dict[str, Any] | None:
    """A Secret of the namespace (a password spec.users names, or the users file), or None."""
    try:
        result = await asyncio.to_thread(client.CoreV1Api().read_namespaced_secret, name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return _to_dict(result)


async def replace_secret(obj: dict[str, Any]) -> None:
    """Overwrite a Secret the operator owns (the users file) with a new rendering."""
    meta = obj["metadata"]
    await asyncio.to_thread(
        client.CoreV1Api().replace_namespaced_secret, meta["name"], meta["namespace"], obj
    )


async def list_children(namespace: str, cluster: str) -> tuple[frozenset[tuple[str, str]], int]:
    """Names of the cluster's Services, ConfigMaps, StatefulSets and PDBs, and ready journal servers."""
    core, apps, policy = client.CoreV1Api(), client.AppsV1Api(), client.PolicyV1Api()
    sel = f"{labels.CLUSTER}={cluster},{labels.MANAGED_BY}={labels.MANAGER}"
    services, configmaps, statefulsets, pdbs = await asyncio.gather(
        asyncio.to_thread(core.list_namespaced_service, namespace, label_selector=sel),
        asyncio.to_thread(core.list_namespaced_config_map, namespace, label_selector=sel),
        asyncio.to_thread(apps.list_namespaced_stateful_set, namespace, label_selector=sel),
        asyncio.to_thread(policy.list_namespaced_pod_disruption_budget, namespace, label_selector=sel),
    )
    names = {("Service", o.metadata.name) for o in services.items}
    names |= {("ConfigMap", o.metadata.name) for o in configmaps.items}
    names |= {("StatefulSet", o.metadata.name) for o in statefulsets.items}
    names |= {("PodDisruptionBudget", o.metadata.name) for o in pdbs.items}
    journal_ready = sum(1 for s in statefulsets.items if (s.status.ready_replicas or 0) >= 1)
    return frozenset(names), journal_ready


async def list_certificates(namespace: str, cluster: str) -> list[str]:
    """Names of the cert-manager Certificates the operator made for the cluster (spec.tls.issuerRef)."""
    sel = f"{labels.CLUSTER}={cluster},{labels.MANAGED_BY}={labels.MANAGER}"
    result = await asyncio.to_thread(
        client.CustomObjectsApi().list_namespaced_custom_object,
        "cert-manager.io", "v1", namespace, "certificates", label_selector=sel,
    )
    return [item["metadata"]["name"] for item in result.get("items", [])]


async def list_network_policies(namespace: str, cluster: str) -> list[dict[str, Any]]:
    """The NetworkPolicies the operator made for the cluster (its labels; a user's are not listed)."""
    sel = f"{labels.CLUSTER}={cluster},{labels.MANAGED_BY}={labels.MANAGER}"
    result = await asyncio.to_thread(
        client.NetworkingV1Api().list_namespaced_network_policy, namespace, label_selector=sel
    )
    return [_to_dict(p) for p in result.items]


async def replace_network_policy(obj: dict[str, Any]) -> None:
    """Rewrite a NetworkPolicy the operator owns with a new spec (spec.network changed)."""
    meta = obj["metadata"]
    await asyncio.to_thread(
        client.NetworkingV1Api().replace_namespaced_network_policy, meta["name"], meta["namespace"], obj
    )


async def delete_network_policy(namespace: str, name: str) -> None:
    try:
        await asyncio.to_thread(client.NetworkingV1Api().delete_namespaced_network_policy, name, namespace)
    except ApiException as err:
        if err.status != 404:
            raise


_CREATE = {
    "Pod": lambda ns, body: client.CoreV1Api().create_namespaced_pod(ns, body),
    "Service": lambda ns, body: client.CoreV1Api().create_namespaced_service(ns, body),
    "ConfigMap": lambda ns, body: client.CoreV1Api().create_namespaced_config_map(ns, body),
    "Secret": lambda ns, body: client.CoreV1Api().create_namespaced_secret(ns, body),
    "StatefulSet": lambda ns, body: client.AppsV1Api().create_namespaced_stateful_set(ns, body),
    "PodDisruptionBudget": lambda ns, body: client.PolicyV1Api().create_namespaced_pod_disruption_budget(
        ns, body
    ),
    "Job": lambda ns, body: client.BatchV1Api().create_namespaced_job(ns, body),
    "NetworkPolicy": lambda ns, body: client.NetworkingV1Api().create_namespaced_network_policy(ns, body),
    "Certificate": lambda ns, body: client.CustomObjectsApi().create_namespaced_custom_object(
        "cert-manager.io", "v1", ns, "certificates", body
    ),
}


async def create(obj: dict[str, Any]) -> bool:
    """Create a child; False if it already exists (a previous, interrupted reconcile made it)."""
    try:
        await asyncio.to_thread(_CREATE[obj["kind"]], obj["metadata"]["namespace"], obj)
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


async def delete_pod(namespace: str, name: str) -> None:
    try:
        await asyncio.to_thread(client.CoreV1Api().delete_namespaced_pod, name, namespace)
    except ApiException as err:
        if err.status != 404:
            raise


async def delete_job(namespace: str, name: str) -> None:
    """Delete a Job and its pods (the API's default for Jobs would orphan the pods)."""
    try:
        await asyncio.to_thread(
            client.BatchV1Api().delete_namespaced_job, name, namespace, propagation_policy="Background"
        )
    except ApiException as err:
        if err.status != 404:
            raise


async def set_pod_label(namespace: str, name: str, key: str, value: str) -> None:
    body = {"metadata": {"labels": {key: value}}}
    try:
        await asyncio.to_thread(client.CoreV1Api().patch_namespaced_pod, name, namespace, body)
    except ApiException as err:
        if err.status != 404:
            raise


async def create_memorycluster(obj: dict[str, Any]) -> bool:
    """Create a region's MemoryCluster (a MultiRegionCluster's); False if it already exists."""
    meta = obj["metadata"]
    try:
        await asyncio.to_thread(
            client.CustomObjectsApi().create_namespaced_custom_object,
            GROUP, VERSION, meta["namespace"], PLURAL, obj,
        )
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


async def patch_memorycluster_spec(namespace: str, name: str, spec: dict[str, Any]) -> None:
    """Merge a region's desired spec into its MemoryCluster (a MultiRegionCluster's template changed)."""
    await asyncio.to_thread(
        client.CustomObjectsApi().patch_namespaced_custom_object,
        GROUP, VERSION, namespace, PLURAL, name, {"spec": spec},
    )


async def delete_memorycluster(namespace: str, name: str) -> None:
    try:
        await asyncio.to_thread(
            client.CustomObjectsApi().delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as err:
        if err.status != 404:
            raise


async def service_exists(namespace: str, name: str) -> bool:
    return await read_service(namespace, name) is not None


async def read_service(namespace: str, name: str) -> dict[str, Any] | None:
    """A Service as the API returns it, or None when there is none."""
    try:
        result = await asyncio.to_thread(client.CoreV1Api().read_namespaced_service, name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return client.ApiClient().sanitize_for_serialization(result)
