"""What the docker/k8s manifest tests share: the manifests as kustomize builds them, the Kubernetes
versions they are validated against (kubernetes-validate's bundled schemas) and validators for the
vendored KEDA and KServe CRD schemas (tests/support/crds/README.md)."""

import copy
import json
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

#: The oldest and the newest Kubernetes that the bundled schemas cover.
VERSIONS: list[str] = sorted({kubernetes_validate.utils.all_versions()[0], kubernetes_validate.utils.latest_version()})

CRDS = Path(__file__).resolve().parent / "crds"
ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "docker" / "k8s"


def load(path: Path) -> dict:
    """One YAML document."""
    return yaml.safe_load(path.read_text())


def kustomize(directory: Path) -> dict[str, dict]:
    """The resources of a kustomization by kind, with its patches applied.

    Enough of kustomize for these files: resources are files or a parent kustomization; a patch (a
    file, or inline) merges maps recursively, merges lists of named items by name and replaces other
    lists; an inline patch with ``$patch: delete`` removes its resource.
    """
    kustomization = load(directory / "kustomization.yaml")
    resources: dict[str, dict] = {}
    for entry in kustomization["resources"]:
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.update(kustomize(path))
        else:
            resource = load(path)
            resources[resource["kind"]] = resource
    for patch in kustomization.get("patches", []):
        body = load(directory / patch["path"]) if "path" in patch else yaml.safe_load(patch["patch"])
        target = resources[body["kind"]]
        assert (target["apiVersion"], target["metadata"]["name"]) == (body["apiVersion"], body["metadata"]["name"])
        if body.get("$patch") == "delete":
            del resources[body["kind"]]
        else:
            resources[body["kind"]] = strategic_merge(target, body)
    return resources


def strategic_merge(base: object, patch: object) -> object:
    """``patch`` merged into ``base`` (kubectl's strategic merge, for maps and lists of named items)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in patch):
        merged = copy.deepcopy(base)
        for item in patch:
            index = next((i for i, old in enumerate(merged) if old.get("name") == item["name"]), None)
            if index is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[index] = strategic_merge(merged[index], item)
        return merged
    return copy.deepcopy(patch)


def strict(schema: object) -> object:
    """``schema`` (a CRD's structural schema) with unknown fields refused, as ``kubectl apply`` does.

    The API server prunes (and with field validation ``Strict``, the default of kubectl >= 1.27, refuses)
    fields a structural schema does not declare; JSON Schema allows them unless ``additionalProperties``
    says otherwise, so every object with declared ``properties`` and no ``additionalProperties`` or
    ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    # Under `properties` the keys are field names, not schema keywords.
    tightened = {
        key: {name: strict(sub) for name, sub in value.items()} if key == "properties" else strict(value)
        for key, value in schema.items()
    }
    if "properties" in schema and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            tightened["additionalProperties"] = False
    return tightened


@cache
def crd_validator(name: str) -> jsonschema.Draft7Validator:
    """A strict validator for a vendored CRD schema: ``keda-scaledobject`` or ``kserve-inferenceservice``.

    ``validator.validate(manifest)`` raises ``jsonschema.ValidationError`` naming the first offending path.
    """
    schema = json.loads((CRDS / f"{name}.json").read_text())
    return jsonschema.Draft7Validator(strict(schema))
