"""``allmrec experiment``: the paper's evaluation suite for one dataset, from one YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from allmrec.cli.options import console, guard


def experiment(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="Experiment YAML (experiments/*_cpu.yaml, *_gpu.yaml)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Experiment folder (default: <out_dir>/<name> from the YAML)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override any key: path.to.key=value, e.g. ablations.enabled=false or base.stage2.train.max_steps=20."),
    report_only: bool = typer.Option(False, "--report-only", help="Only rebuild report.md and the plots from the folder's results.json."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
    plan: bool = typer.Option(False, "--plan", help="Only list the units (training steps, users to score) without running anything."),
    publish_to: Optional[Path] = typer.Option(None, "--publish", help="Then copy report.md, results.json, plots/ and units/ into this folder (e.g. benchmarks/results/experiments/<name>)."),
) -> None:
    """The paper's evaluation suite (baselines, scenarios, ablations, efficiency, genres) for one dataset:
    every variant trained and evaluated, finished units reused; writes results.json, report.md and plots/."""
    from allmrec.experiment import ExperimentRunner, load_experiment, publish, rebuild_report

    cfg = guard(lambda: load_experiment(config, set_ or []))
    root = out or Path(cfg.out_dir) / cfg.name
    if plan:
        summary = guard(lambda: ExperimentRunner(cfg, root, console=console).plan_summary())
        for row in summary["units"]:
            console.print("  ".join(f"{k}={v}" for k, v in row.items()), highlight=False, soft_wrap=True)
        console.print(f"{len(summary['units'])} units, {summary['trainings']} trainings, {summary['stage2_steps']} stage-2 steps, "
                      f"{summary['tallrec_steps']} TALLRec steps, at most {summary['llm_user_evaluations_at_most']} LLM user evaluations", soft_wrap=True)
        return
    if report_only:
        guard(lambda: rebuild_report(root, plots=not no_plots))
    else:
        guard(lambda: ExperimentRunner(cfg, root, console=console).run(plots=not no_plots))
    console.print(f"report: {root / 'report.md'}; results: {root / 'results.json'}")
    if publish_to:
        console.print(f"published: {guard(lambda: publish(root, publish_to))}")


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment)
