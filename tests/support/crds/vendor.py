"""Vendor a CustomResourceDefinition's schema for offline validation (tests/support/crds/README.md).

    python tests/support/crds/vendor.py CRD.yaml OUT.json --source "kedacore/keda@v2.x config/crd/bases/..." \
        [--only predictor]

Keeps the served storage version's ``openAPIV3Schema`` only, without ``description`` fields and without
``status`` (the API server ignores a manifest's status); ``--only`` keeps those ``spec`` properties and
lets the others through unchecked (``x-kubernetes-preserve-unknown-fields``), to keep the file small.
"""

import argparse
import json
from pathlib import Path

import yaml

UNCHECKED = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def without_descriptions(node: object) -> object:
    """``node`` (a schema) with every ``description`` key dropped, recursively."""
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def vendor(crd: dict, source: str, only: list[str]) -> dict:
    """The schema of ``crd``'s storage version, trimmed as the module docstring says."""
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = without_descriptions(version["schema"]["openAPIV3Schema"])
    assert isinstance(schema, dict)
    schema["properties"].pop("status", None)
    spec = schema["properties"]["spec"]["properties"]
    for name in spec if only else ():
        if name not in only:
            spec[name] = UNCHECKED
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    comment = f"{kind} {group}/{version['name']} from {source}; descriptions and status dropped"
    if only:
        comment += f"; spec fields other than {', '.join(only)} unchecked"
    return {"$comment": comment, **schema}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", required=True, help="repository@version and path, recorded in the file")
    parser.add_argument("--only", nargs="*", default=[], help="spec properties to keep checked")
    args = parser.parse_args()
    crd = yaml.safe_load(args.crd.read_text())
    args.out.write_text(json.dumps(vendor(crd, args.source, args.only), sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
