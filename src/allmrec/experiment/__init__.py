"""``allmrec experiment``: the paper's evaluation suite for one dataset from one YAML file.

    from allmrec.experiment import load_experiment, run_experiment
    results = run_experiment(load_experiment("experiments/ml100k_cpu.yaml"))

Writes ``<out_dir>/<name>/``: the variants' run folders, ``shared/`` (CF models and stage-1 runs
shared between variants), ``units/`` (one record per finished unit of work; a rerun skips
them), ``results.json``, ``report.md`` and ``plots/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from allmrec.experiment.config import ExperimentConfig, ExperimentConfigError, load_experiment, parse_experiment
from allmrec.experiment.runner import ExperimentRunner


def run_experiment(config: ExperimentConfig, root: str | Path | None = None, plots: bool = True, console: Any = None) -> dict[str, Any]:
    """Run (or resume) an experiment; returns the contents of its ``results.json``."""
    return ExperimentRunner(config, root, console=console).run(plots=plots)


def rebuild_report(root: str | Path, plots: bool = True) -> dict[str, Any]:
    """Rewrite ``report.md`` (and the plots) of an experiment folder from its ``results.json``."""
    from allmrec.experiment.plots import write_plots
    from allmrec.experiment.report import write_report
    from allmrec.utils.io import read_json, write_json

    root = Path(root)
    results = read_json(root / "results.json")
    if plots:
        results["plots"] = [str(p.relative_to(root)) for p in write_plots(results, root / "plots")]
        write_json(root / "results.json", results)
    write_report(results, root / "report.md")
    return results


PUBLISHED = ("report.md", "results.json", "plots", "units")


def publish(root: str | Path, dest: str | Path) -> Path:
    """Copy an experiment's report with its evidence (``results.json``, ``plots/`` and the unit
    records with their per-user ranks, which the report cites) into ``dest``, e.g. a folder under
    version control. Model files stay behind; ``dest`` is replaced as a whole."""
    import shutil

    root, dest = Path(root), Path(dest)
    missing = [name for name in ("report.md", "results.json", "units") if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(f"{root}: no {', '.join(missing)}; run the experiment first")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in PUBLISHED:
        if (root / name).is_dir():
            shutil.copytree(root / name, tmp / name)
        elif (root / name).exists():
            shutil.copy2(root / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


__all__ = ["ExperimentConfig", "ExperimentConfigError", "ExperimentRunner", "load_experiment", "parse_experiment", "publish", "rebuild_report",
           "run_experiment"]
