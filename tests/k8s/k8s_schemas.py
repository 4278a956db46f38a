"""Offline validation of rendered manifests.

- Core kinds: ``kubernetes-validate --strict`` (unknown fields are errors) against the newest Kubernetes
  version it ships.
- Ray kinds: the ``openAPIV3Schema`` of the KubeRay v1.7.0 CRDs in ``../shared/schemas`` (never copied into
  the repository), made strict the way the API server's strict field validation is: an object schema
  with ``properties`` accepts no other field unless it says ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jsonschema
import pytest
import yaml

from k8s_helpers import CRD_DIR, OPERATOR_KINDS, RAY_KINDS


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


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str, version: str = "v1") -> jsonschema.Draft7Validator:
    if not CRD_DIR.is_dir():
        pytest.skip(f"the KubeRay CRDs are not at {CRD_DIR} (../shared is absent)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 13-25k lines
    crd = yaml.load((CRD_DIR / RAY_KINDS[kind]).read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(_strict(schema))


def validate_ray(doc: dict) -> None:
    group, version = doc["apiVersion"].split("/")
    assert group == "ray.io", doc["apiVersion"]
    errors = sorted(crd_validator(doc["kind"], version).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        lines = [f"  {'/'.join(str(p) for p in e.path)}: {e.message[:300]}" for e in errors[:10]]
        raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} does not match the KubeRay "
                             f"{version} CRD schema:\n" + "\n".join(lines))


def validate_all(docs: list[dict]) -> dict[str, int]:
    """Validate every document; return how many of each kind were checked."""
    counts: dict[str, int] = {}
    for doc in docs:
        kind = doc["kind"]
        if kind in RAY_KINDS:
            validate_ray(doc)
        elif kind in OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        else:
            validate_core(doc)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def crd_path(kind: str) -> Path:
    return CRD_DIR / RAY_KINDS[kind]
