"""What every command shares: the options (declared once, here), turning them into a run's
configuration and resources, and turning expected user errors into one line and exit code 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console

console = Console()
T = TypeVar("T")

Run = Annotated[Optional[Path], typer.Option("--run", "-r", help="Run folder (default: runs/<dataset>).")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (see experiments/).", exists=True, dir_okay=False)]
Sets = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override any option: section.key=value (repeatable), e.g. cf.epochs=20.")]
Dataset = Annotated[Optional[str], typer.Option("--dataset", "-d", help="Preset name (ml-100k, amazon-beauty) or a YAML data config.")]
DataPath = Annotated[Optional[str], typer.Option("--path", "-p", help="Folder or file of the raw data (presets that need one).")]


def guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; expected user errors become one ``error: ...`` line and exit code 2 (no
    traceback). The message is escaped (a data file's content may look like rich markup) and
    never wrapped."""
    from rich.markup import escape

    from allmrec.data import DataFormatError

    try:
        return fn()
    except (DataFormatError, ValueError, KeyError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None


def resources(run: Optional[Path], config: Optional[Path], sets: Optional[list[str]], dataset: Optional[str] = None, path: Optional[str] = None,
              **flags: Any):
    """The run's :class:`~allmrec.pipeline.resources.Resources` from the layered options (flags
    given as ``section.key`` names; ``None`` = not given)."""
    from allmrec.pipeline.config import RunConfig
    from allmrec.pipeline.resources import Resources, RunFolder

    def build():
        cfg, run_dir = RunConfig.layered(run, config, {"dataset": dataset, "data.path": path, **flags}, sets or [])
        return Resources(cfg, RunFolder(run_dir))

    return guard(build)
