"""Dataset statistics as a dict or a compact table."""

from __future__ import annotations

from typing import Any

from allmrec.data.dataset import SequenceDataset

_MAIN = ("users", "items", "interactions", "avg_sequence_length", "median_sequence_length", "density",
         "items_without_title", "users_too_short", "cold_users", "prepare_seconds")


def dataset_stats(ds: SequenceDataset) -> dict[str, Any]:
    """The statistics recorded when ``ds`` was prepared, plus its name and fingerprint."""
    return {"name": ds.name, "fingerprint": ds.fingerprint, **ds.stats}


def stats_table(ds: SequenceDataset | dict[str, Any], full: bool = False):
    """A ``rich.table.Table`` of the main statistics (all of them with ``full``)."""
    from rich.table import Table

    stats = dataset_stats(ds) if isinstance(ds, SequenceDataset) else dict(ds)
    title = f"{stats.get('name', 'dataset')} ({stats.get('fingerprint', '')})"
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    keys = [k for k in stats if k not in ("name", "fingerprint")] if full else [k for k in _MAIN if k in stats]
    for k in keys:
        v = stats[k]
        if isinstance(v, float):
            text = f"{v:.3g}" if abs(v) < 1e-2 else f"{v:,.2f}"
        elif isinstance(v, int):
            text = f"{v:,}"
        else:
            text = str(v)
        table.add_row(k.replace("_", " "), text)
    return table


def print_stats(ds: SequenceDataset | dict[str, Any], full: bool = False, console=None) -> None:
    """Print :func:`stats_table` with rich (to ``console`` or stdout)."""
    from rich.console import Console

    (console or Console()).print(stats_table(ds, full))
