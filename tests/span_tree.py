"""Spans as plain dicts (from an in-memory exporter or a worker's JSON-lines file) and their tree as text.

Shared by the tracing tests and used to render the span tree shown in docs/observability.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SHOWN = ("dbos.", "dbos_pydantic_ai.", "operationUUID")


def span_dict(span: Any) -> dict[str, Any]:
    """An SDK `ReadableSpan` as a dict of what the tests look at."""
    return {
        "name": span.name,
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else None,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "start": span.start_time,
        "status": span.status.status_code.name,  # UNSET, OK or ERROR
        "attributes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in (span.attributes or {}).items()},
        "events": [
            {
                "name": e.name,
                "attributes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in e.attributes.items()},
            }
            for e in span.events
        ],
        "links": [
            {"trace_id": format(link.context.trace_id, "032x"), "span_id": format(link.context.span_id, "016x")}
            for link in span.links
        ],
    }


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans a worker wrote to `path`, one JSON object per line ([] when there is no file)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def children(spans: Sequence[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((s for s in spans if s["parent_id"] == parent["span_id"]), key=lambda s: s["start"])


def roots(spans: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = {s["span_id"] for s in spans}
    return sorted((s for s in spans if s["parent_id"] not in ids), key=lambda s: s["start"])


def render(spans: Sequence[dict[str, Any]], *, shown: Iterable[str] = SHOWN) -> str:
    """The spans as an indented tree, each with its attributes and events of this library and DBOS."""
    prefixes = tuple(shown)
    lines: list[str] = []

    def show(span: dict[str, Any], depth: int) -> None:
        attrs = {k: v for k, v in span["attributes"].items() if k.startswith(prefixes) and k != "dbos.workflow_id"}
        text = "  " * depth + span["name"]
        if attrs:
            text += "  " + " ".join(f"{k}={v}" for k, v in sorted(attrs.items()))
        for link in span["links"]:
            text += f"  [link -> trace {link['trace_id'][:8]}… span {link['span_id'][:8]}…]"
        lines.append(text)
        for event in span["events"]:
            event_attrs = {k: v for k, v in event["attributes"].items() if k.startswith(prefixes)}
            lines.append(
                "  " * (depth + 1) + f"* {event['name']} " + " ".join(f"{k}={v}" for k, v in event_attrs.items())
            )
        for child in children(spans, span):
            show(child, depth + 1)

    for root in roots(spans):
        lines.append(f"trace {root['trace_id'][:8]}…")
        show(root, 1)
    return "\n".join(lines)
