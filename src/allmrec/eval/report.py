"""Results as JSON (the source of every reported number) and as a Markdown table."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Iterable

import torch

from allmrec.utils.io import write_json

DEFAULT_COLUMNS = ("hit@1", "hit@5", "hit@10", "ndcg@10", "mrr", "users")
def machine_description() -> str:
    """A one-line description of where a number was measured."""
    import os

    dev = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {dev}, torch {torch.__version__}"


def markdown_table(rows: dict[str, dict[str, Any]], columns: Iterable[str] = DEFAULT_COLUMNS, first: str = "method") -> str:
    """``rows`` maps a row label to a metrics dict; missing values print as "-"."""
    columns = list(columns)
    lines = ["| " + " | ".join([first, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for label, metrics in rows.items():
        cells = [_fmt(metrics.get(c)) for c in columns]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, name: str, results: dict[str, Any], table_rows: dict[str, dict[str, Any]] | None = None,
                  columns: Iterable[str] = DEFAULT_COLUMNS, title: str | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    results = {**results, "machine": results.get("machine", machine_description())}
    json_path = write_json(out_dir / f"{name}.json", results)
    md = f"# {title or name}\n\n"
    if table_rows:
        md += markdown_table(table_rows, columns)
    md += f"\nMachine: {results['machine']}. Source: `{json_path.name}`.\n"
    md_path = out_dir / f"{name}.md"
    from allmrec.utils.io import atomic_path

    with atomic_path(md_path) as tmp:
        tmp.write_text(md)
    return json_path, md_path


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and value > 1 else f"{value:.4f}"
    return str(value)
