"""Offline stand-ins for what an API server checks: built-in schemas, CRD structural schemas, CEL rules.

No cluster runs here, so tests admit objects the way the API server would: defaults from the
CRD schema, then the openAPIV3Schema (unknown fields refused, as `kubectl --validate=strict`
does) and the uniqueness of list-type map keys, then every x-kubernetes-validations rule,
evaluated with cel-python.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
CHART_DIR = ROOT / "charts" / "engram-operator"
# The Kubernetes minor the manifests must be valid for (kind's node image in e2e is this or newer).
K8S_VERSION = "1.30"
_MISSING = object()


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def validate_manifest(obj: dict[str, Any]) -> None:
    """Raise kubernetes_validate.ValidationError if obj is not a valid object of its built-in kind."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def crd_schema(crd: dict[str, Any], version: str = "v1alpha1") -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version}")


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Structural defaulting: missing fields with a default get it, then defaults apply inside."""
    if not isinstance(obj, dict) or schema.get("type") != "object":
        if isinstance(obj, list) and "items" in schema:
            return [apply_defaults(schema["items"], item) for item in obj]
        return obj
    out = dict(obj)
    for key, sub in (schema.get("properties") or {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = apply_defaults(sub, out[key])
    return out


def _closed(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists properties (strict field validation)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items() if k != "default"}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        # OpenAPI's `nullable: true` (a null the API server stores as given) has no JSON Schema
        # draft 7 keyword: it is a null added to the type.
        if schema.get("nullable") and isinstance(schema.get("type"), str):
            out["type"] = [schema["type"], "null"]
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def schema_errors(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_closed(schema))
    errors = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in err.absolute_path) or "<root>"
        errors.append(f"{path}: {err.message}")
    return errors


def list_map_errors(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    """Items of an x-kubernetes-list-type: map list sharing their keys, or equal items of a set,
    refused as the API server does ("Duplicate value"); jsonschema knows nothing of list types."""
    errors: list[str] = []
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in obj:
                errors += list_map_errors(sub, obj[key], f"{path}.{key}" if path else key)
    elif isinstance(obj, list) and "items" in schema:
        keys = schema.get("x-kubernetes-list-map-keys") or []
        list_type = schema.get("x-kubernetes-list-type")
        seen: set[str] = set()
        for i, item in enumerate(obj):
            if list_type == "set" or (list_type == "map" and isinstance(item, dict)):
                value = json.dumps(item if list_type == "set" else {k: item.get(k) for k in keys},
                                   sort_keys=True)
                if value in seen:
                    errors.append(f"{path}[{i}]: Duplicate value: {value}")
                seen.add(value)
            errors += list_map_errors(schema["items"], item, f"{path}[{i}]")
    return errors


@cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_errors(schema: dict[str, Any], obj: Any, old: Any = _MISSING, path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule; transition rules only where an old value exists."""
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        expr = rule["rule"]
        if "oldSelf" in expr and old is _MISSING:
            continue
        activation = {"self": celpy.json_to_cel(obj)}
        if old is not _MISSING:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = _program(expr).evaluate(activation)
        # A rule passes only on a CEL true; an evaluation error (returned, not raised) fails it.
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{path or '<root>'}: {rule.get('message') or 'failed rule: ' + expr}")
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in obj:
                prior = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
                errors += cel_errors(sub, obj[key], prior, f"{path}.{key}" if path else key)
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            errors += cel_errors(schema["items"], item, _MISSING, f"{path}[{i}]")
    return errors


@cache
def _core_definitions() -> dict[str, Any]:
    root = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"v{K8S_VERSION}.0-local-strict"
    )
    return json.loads((root / "_definitions.json").read_text())["$defs"]


def core_structural_schema(name: str, api: str = "core.v1") -> dict[str, Any]:
    """A built-in type's schema (core/v1 unless ``api`` says e.g. "networking.v1") as a CRD embeds
    it: references inlined, nullable types made plain, descriptions left out (the CRD's fields say
    what they are for; `kubectl explain` shows both)."""

    def structural(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return structural(_core_definitions()[node["$ref"].rsplit("/", 1)[1]])
        out: dict[str, Any] = {}
        kind = node.get("type")
        if isinstance(kind, list):
            [kind] = [k for k in kind if k != "null"]
        if kind:
            out["type"] = kind
        for key in ("format", "enum"):
            if key in node:
                out[key] = node[key]
        if "properties" in node:
            out["properties"] = {k: structural(v) for k, v in node["properties"].items()}
        if "items" in node:
            out["items"] = structural(node["items"])
        if isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = structural(node["additionalProperties"])
        for key in ("required", "x-kubernetes-list-type", "x-kubernetes-map-type"):
            if key in node:
                out[key] = node[key]
        return out

    return structural(_core_definitions()[f"io.k8s.api.{api}.{name}"])


@cache
def memorycluster_crd() -> dict[str, Any]:
    return load_yaml_documents(CRD_DIR / "engram.io_memoryclusters.yaml")[0]


@cache
def multiregioncluster_crd() -> dict[str, Any]:
    return load_yaml_documents(CRD_DIR / "engram.io_multiregionclusters.yaml")[0]


def crd_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The CRD of a custom resource, by its kind."""
    return multiregioncluster_crd() if obj.get("kind") == "MultiRegionCluster" else memorycluster_crd()


def admit(obj: dict[str, Any], old: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """What the API server would store (defaults applied) and the errors that would refuse it."""
    schema = crd_schema(crd_of(obj))
    stored = apply_defaults(schema, obj)
    errors = schema_errors(schema, stored) + list_map_errors(schema, stored)
    if not errors:
        previous = apply_defaults(schema, old) if old is not None else _MISSING
        errors = cel_errors(schema, stored, previous)
    return stored, errors
