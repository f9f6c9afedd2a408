"""The ``allmrec`` command line. Every command reads options layered as
built-in defaults < the run folder's saved config < ``--config FILE`` < flags and ``--set key=value``.

A run folder (``--run``) holds everything one pipeline produces: ``config.yaml``, ``cf/``,
``stage1/``, ``stage2/`` and ``results/``. Each step reuses or resumes what is already there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from allmrec import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, help="A-LLMRec: LLMs meet collaborative filtering.")
console = Console()

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see experiments/).", exists=True, dir_okay=False)
RunOpt = typer.Option(None, "--run", "-r", help="Run folder (default: runs/<dataset>).")
SetOpt = typer.Option(None, "--set", "-s", help="Override any option: section.key=value (repeatable), e.g. cf.epochs=20.")


def _version(value: bool) -> None:
    if value:
        console.print(f"allmrec {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _pipeline(run: Optional[Path], config: Optional[Path], sets: Optional[list[str]], **flags):
    from allmrec.pipeline import Pipeline

    try:
        return Pipeline.from_sources(run=run, config_file=config, sets=sets or [], flags=flags)
    except (ValueError, KeyError, FileNotFoundError) as err:
        _error(err)


def _error(err: BaseException) -> None:
    """Print ``err`` as one ``error:`` line (its text escaped: a data file's content may look like
    rich markup, and is never wrapped) and exit with code 2."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
    raise typer.Exit(2) from None


def _guard(fn):
    """Turn expected user errors into a one-line message and exit code 2."""
    from allmrec.data import DataFormatError

    try:
        return fn()
    except (DataFormatError, ValueError, KeyError, FileNotFoundError) as err:
        _error(err)


@app.command()
def prepare(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Preset name (ml-100k, amazon-beauty) or a YAML data config."),
    path: Optional[str] = typer.Option(None, "--path", "-p", help="Folder or file of the raw data (presets that need one)."),
    force: bool = typer.Option(False, "--force", help="Prepare again even if cached."),
    run: Optional[Path] = RunOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Read raw data, filter, split leave-one-out, draw the candidate sets; cache and print statistics."""
    pipe = _pipeline(run, config, set_, dataset=dataset, **{"data.path": path})
    _guard(lambda: pipe.prepare(force=force, show=True))


@app.command("train-cf")
def train_cf(
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="sasrec, gru4rec, nextitnet, ncf or a registered one."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d"),
    path: Optional[str] = typer.Option(None, "--path", "-p"),
    run: Optional[Path] = RunOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Train (or resume) the collaborative-filtering backbone; early-stops on validation."""
    pipe = _pipeline(run, config, set_, dataset=dataset, **{"data.path": path, "cf.backbone": backbone, "cf.epochs": epochs})
    _guard(lambda: pipe.train_cf(show=True))


@app.command()
def align(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d"),
    path: Optional[str] = typer.Option(None, "--path", "-p"),
    run: Optional[Path] = RunOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Stage 1: align CF item embeddings with (fine-tuned) Sentence-BERT text embeddings."""
    pipe = _pipeline(run, config, set_, dataset=dataset, **{"data.path": path})
    _guard(lambda: pipe.align(show=True))


@app.command()
def train(
    llm: Optional[str] = typer.Option(None, "--llm", help="'default' (bundled SmolLM2-135M), a HF model id or a local folder."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop stage 2 after this many optimiser steps."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d"),
    path: Optional[str] = typer.Option(None, "--path", "-p"),
    run: Optional[Path] = RunOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Stage 2: train the projectors that feed soft tokens to the frozen LLM."""
    pipe = _pipeline(run, config, set_, dataset=dataset, **{"data.path": path, "llm.name_or_path": llm, "stage2.max_steps": max_steps})
    _guard(lambda: pipe.train_stage2(show=True))


@app.command()
def evaluate(
    methods: Optional[str] = typer.Option(None, "--methods", "-m", help="Comma list of cf, llm-only, allmrec, allmrec-sbert."),
    mode: Optional[str] = typer.Option(None, "--mode", help="LLM inference: rank (likelihood of each candidate) or generate (greedy + exact match)."),
    max_users: Optional[int] = typer.Option(None, "--max-users", help="Evaluate a seeded random sample of this many users."),
    split: Optional[str] = typer.Option(None, "--split", help="test (default) or valid."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d"),
    path: Optional[str] = typer.Option(None, "--path", "-p"),
    run: Optional[Path] = RunOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Score methods on the stored candidates (overall and per scenario); write JSON + Markdown."""
    flags = {"dataset": dataset, "data.path": path, "eval.methods": methods.split(",") if methods else None,
             "eval.mode": mode, "eval.max_users": max_users, "eval.split": split}
    pipe = _pipeline(run, config, set_, **flags)
    _guard(lambda: pipe.evaluate(show=True))


@app.command()
def recommend(
    history: str = typer.Option(..., "--history", help="Comma-separated item ids (original ids), oldest first."),
    candidates: Optional[str] = typer.Option(None, "--candidates", help="Comma-separated item ids to rank (default: 19 random + none)."),
    top: int = typer.Option(10, "--top", help="How many to print."),
    run: Optional[Path] = RunOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Rank candidate items for a history with the trained A-LLMRec model; print titles."""
    pipe = _pipeline(run, config, set_)
    hist = [h.strip() for h in history.split(",") if h.strip()]
    cands = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else None
    _guard(lambda: pipe.recommend(hist, cands, top=top, show=True))


@app.command()
def demo(
    run: Optional[Path] = typer.Option(Path("runs/demo"), "--run", "-r", help="Run folder."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """The whole pipeline on MovieLens-100K with the bundled models, on CPU:
    SASRec, stage 1, stage 2, then SASRec vs LLM-only vs A-LLMRec Hit@1 on the same users and candidates."""
    from allmrec.pipeline import demo_config_file

    pipe = _pipeline(run, config or demo_config_file(), set_)
    _guard(lambda: pipe.demo())


@app.command()
def experiment(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="Experiment YAML (experiments/*_cpu.yaml, *_gpu.yaml)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Experiment folder (default: <out_dir>/<name> from the YAML)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override any key: path.to.key=value, e.g. ablations.enabled=false or base.stage2.max_steps=20."),
    report_only: bool = typer.Option(False, "--report-only", help="Only rebuild report.md and the plots from the folder's results.json."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
    plan: bool = typer.Option(False, "--plan", help="Only list the units (training steps, users to score) without running anything."),
    publish_to: Optional[Path] = typer.Option(None, "--publish", help="Then copy report.md, results.json, plots/ and units/ into this folder (e.g. benchmarks/results/experiments/<name>)."),
) -> None:
    """The paper's evaluation suite (baselines, scenarios, ablations, efficiency, genres) for one dataset:
    every variant trained and evaluated, finished units reused; writes results.json, report.md and plots/."""
    from allmrec.experiment import ExperimentConfigError, load_experiment, publish, rebuild_report, run_experiment

    try:
        cfg = load_experiment(config, set_ or [])
    except (ExperimentConfigError, ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    root = out or Path(cfg.out_dir) / cfg.name
    if plan:
        from allmrec.experiment import ExperimentRunner

        summary = _guard(lambda: ExperimentRunner(cfg, root, console=console).plan_summary())
        for row in summary["units"]:
            console.print("  ".join(f"{k}={v}" for k, v in row.items()), highlight=False, soft_wrap=True)
        console.print(f"{len(summary['units'])} units, {summary['trainings']} trainings, {summary['stage2_steps']} stage-2 steps, "
                      f"{summary['tallrec_steps']} TALLRec steps, at most {summary['llm_user_evaluations_at_most']} LLM user evaluations", soft_wrap=True)
        return
    if report_only:
        _guard(lambda: rebuild_report(root, plots=not no_plots))
    else:
        _guard(lambda: run_experiment(cfg, root, plots=not no_plots, console=console))
    console.print(f"report: {root / 'report.md'}; results: {root / 'results.json'}")
    if publish_to:
        console.print(f"published: {_guard(lambda: publish(root, publish_to))}")


if __name__ == "__main__":  # pragma: no cover
    app()
