"""docs/results.json and docs/results.md, shared by the benchmarks.

Each benchmark owns some top-level keys of results.json (its module's ``RESULT_KEYS``) and renders
them (its ``render_markdown(results)``); ``commands.PAGE_SECTIONS`` lists those modules in the page's
order. ``update_results`` replaces only the caller's keys and
regenerates the whole page from the JSON, so ``bench accuracy`` and ``bench serve`` can run in any
order without erasing each other. A key that no registered benchmark owns (a ``serve`` section
written before its module exists) is kept and shown as plain JSON.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dynadapter.bench.commands import PAGE_SECTIONS

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
#: headings of sections that no benchmark module renders yet
FALLBACK_HEADINGS = {"serve": "Serving"}
TITLE = "# Benchmark results\n\nWritten by `dynadapter bench`; regenerated from results.json beside this page."


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a results table: `digits` decimals, "-" where there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> str:
    """A Markdown (GitHub) table: the header, its rule and one row per line of cells."""
    rows = [header, ["---"] * len(header), *lines]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage for a results table: `digits` decimals, "—" where there is none."""
    return "—" if x is None else f"{100 * x:.{digits}f}"


def quotient(value: float | None, base: float | None) -> float | None:
    """``value / base`` of two results' numbers (a ratio target's, a table's); None where either is missing or zero."""
    if not value or not base:
        return None
    return value / base


def update_results(docs: Path, sections: dict[str, Any]) -> dict[str, Any]:
    """Merge ``sections`` into ``docs/results.json`` (other keys kept) and rewrite ``docs/results.md``."""
    docs.mkdir(parents=True, exist_ok=True)
    path = docs / RESULTS_JSON
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.update(sections)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (docs / RESULTS_MD).write_text(render_markdown(results))
    return results


def render_markdown(results: dict[str, Any]) -> str:
    """The whole page: each ``PAGE_SECTIONS`` module's part, then any key no module owns, as JSON."""
    parts, owned = [TITLE], set()
    for module_name in PAGE_SECTIONS:
        module = importlib.import_module(module_name)
        owned.update(module.RESULT_KEYS)
        parts.append(module.render_markdown(results))
    for key in sorted(set(results) - owned):
        heading = FALLBACK_HEADINGS.get(key, key.capitalize())
        parts.append(f"## {heading}\n\n```json\n{json.dumps(results[key], indent=2)}\n```")
    return "\n\n".join(p for p in parts if p) + "\n"
