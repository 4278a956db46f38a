"""Offline validation of rendered manifests.

- Core kinds: ``kubernetes-validate --strict`` (unknown fields are errors) against the newest Kubernetes
  version it ships.
- Ray kinds: the ``openAPIV3Schema`` of the KubeRay v1.7.0 CRDs in ``../shared/schemas`` (never copied into
  the repository), made strict the way the API server's strict field validation is: an object schema
  with ``properties`` accepts no other field unless it says ``x-kubernetes-preserve-unknown-fields``;
  then the CRDs' ``x-kubernetes-validations`` (CEL rules, which JSON Schema cannot express) evaluated with
  cel-python on every node of the resource that carries them, as the API server does on create.
  Transition rules (those that read ``oldSelf``) apply on update only; they are evaluated with
  ``oldSelf = self`` (an upgrade that changes nothing must pass).
- Prometheus Operator kinds (PodMonitor, ServiceMonitor, PrometheusRule): the same strict check against
  the v0.93.1 CRDs in ``../shared/schemas`` (their CRDs carry no CEL rule).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jsonschema
import pytest
import yaml

from k8s_helpers import CRD_DIR, OPERATOR_CRD_DIR, OPERATOR_KINDS, RAY_KINDS


@functools.lru_cache(maxsize=None)
def k8s_version() -> str:
    import kubernetes_validate

    return kubernetes_validate.latest_version()


def validate_core(doc: dict, version: str | None = None) -> None:
    """Raise with the resource's kind/name when it does not validate strictly (newest version by default)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, version or k8s_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')}: {e.message} at "
                             f"{'/'.join(str(p) for p in e.path)}") from None


def _strict(node):
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if node.get("x-kubernetes-int-or-string"):
            # int-or-string: the CRD gives no type (anyOf integer/string).
            node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def crd_path(kind: str) -> Path:
    if kind in RAY_KINDS:
        return CRD_DIR / RAY_KINDS[kind]
    return OPERATOR_CRD_DIR / OPERATOR_KINDS[kind]


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str, version: str = "v1") -> dict:
    """The CRD's ``openAPIV3Schema`` for ``version`` as the file has it (CEL rules included)."""
    path = crd_path(kind)
    if not path.parent.is_dir():
        pytest.skip(f"the CRDs of {kind} are not at {path.parent} (../shared is absent)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 13-25k lines
    crd = next(d for d in yaml.load_all(path.read_text(), Loader=loader) if d)
    assert crd["spec"]["names"]["kind"] == kind
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str, version: str = "v1") -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(_strict(crd_schema(kind, version)))


# ----------------------------------------------------------------------------------------------- CEL rules

def cel_rules(schema: dict, path: tuple = ()) -> list[tuple[tuple, dict]]:
    """Every ``x-kubernetes-validations`` list in a schema, with the schema path it sits at (``"*"`` for the
    items of a list or the values of a map)."""
    out = []
    if schema.get("x-kubernetes-validations"):
        out.append((path, schema))
    for k, sub in (schema.get("properties") or {}).items():
        out += cel_rules(sub, path + (k,))
    if isinstance(schema.get("items"), dict):
        out += cel_rules(schema["items"], path + ("*",))
    if isinstance(schema.get("additionalProperties"), dict):
        out += cel_rules(schema["additionalProperties"], path + ("*",))
    return out


@functools.lru_cache(maxsize=None)
def _cel_program(rule: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_nodes(value, schema: dict, where: str):
    """(document path, value, schema) for every node of ``value`` whose schema carries CEL rules."""
    if schema.get("x-kubernetes-validations"):
        yield where, value, schema
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from _cel_nodes(v, sub, f"{where}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            yield from _cel_nodes(v, schema["items"], f"{where}[{i}]")


def cel_errors(doc: dict, schema: dict) -> list[str]:
    """The messages of the CEL rules that ``doc`` breaks (the API server would refuse it with them)."""
    import celpy

    errors = []
    for where, value, node in _cel_nodes(doc, schema, ""):
        self = celpy.json_to_cel(value)
        for v in node["x-kubernetes-validations"]:
            activation = {"self": self}
            if "oldSelf" in v["rule"]:
                activation["oldSelf"] = self
            result = _cel_program(v["rule"]).evaluate(activation)
            if isinstance(result, Exception) or not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
                errors.append(f"  {where.lstrip('.') or '.'}: {v.get('message') or v['rule']} (rule: {v['rule']}"
                              + (f"; {result}" if isinstance(result, Exception) else "") + ")")
    return errors


def validate_crd(doc: dict, groups: tuple[str, ...]) -> None:
    """Strict JSON-schema validation against the kind's CRD, then its CEL rules."""
    group, version = doc["apiVersion"].split("/")
    assert group in groups, doc["apiVersion"]
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    errors = sorted(crd_validator(doc["kind"], version).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        lines = [f"  {'/'.join(str(p) for p in e.path)}: {e.message[:300]}" for e in errors[:10]]
        raise AssertionError(f"{name} does not match the {group} {version} CRD schema:\n" + "\n".join(lines))
    broken = cel_errors(doc, crd_schema(doc["kind"], version))
    if broken:
        raise AssertionError(f"{name} breaks the {group} {version} CRD's validation rules:\n" + "\n".join(broken))


def validate_ray(doc: dict) -> None:
    validate_crd(doc, ("ray.io",))


def validate_operator(doc: dict) -> None:
    validate_crd(doc, ("monitoring.coreos.com",))


def validate_all(docs: list[dict]) -> dict[str, int]:
    """Validate every document; return how many of each kind were checked."""
    counts: dict[str, int] = {}
    for doc in docs:
        kind = doc["kind"]
        if kind in RAY_KINDS:
            validate_ray(doc)
        elif kind in OPERATOR_KINDS:
            validate_operator(doc)
        else:
            validate_core(doc)
        counts[kind] = counts.get(kind, 0) + 1
    return counts
