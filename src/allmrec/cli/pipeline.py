"""The pipeline's commands: prepare, train-cf, align, fuse, train, evaluate, recommend, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from allmrec.cli.options import ConfigFile, DataPath, Dataset, Run, Sets, console, guard, resources


def _show_validation(res, model) -> None:
    from allmrec.cf import evaluate_cf
    from allmrec.pipeline.steps import evaluation_users

    users = evaluation_users(res, "valid")
    metrics = evaluate_cf(model, res.dataset, "valid", users)
    console.print(f"{model.name} validation ({len(users)} users): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "users"))
    console.print(f"model: {res.folder.cf / 'model.safetensors'}")


def prepare(dataset: Dataset = None, path: DataPath = None, force: bool = typer.Option(False, "--force", help="Prepare again even if cached."),
            run: Run = None, config: ConfigFile = None, set_: Sets = None) -> None:
    """Read raw data, filter, split leave-one-out, draw the candidate sets; cache and print statistics."""
    from allmrec.data import dataset_dir, print_stats
    from allmrec.pipeline import steps

    res = resources(run, config, set_, dataset, path)
    ds = guard(lambda: steps.prepare(res, force=force))
    print_stats(ds, console=console)
    console.print(f"prepared dataset (statistics in meta.json): {dataset_dir(res.config.data())}")


def train_cf(backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="sasrec, gru4rec, nextitnet, ncf, morec or a registered one."),
             epochs: Optional[int] = typer.Option(None, "--epochs"), dataset: Dataset = None, path: DataPath = None, run: Run = None,
             config: ConfigFile = None, set_: Sets = None) -> None:
    """Train (or resume) the collaborative-filtering backbone; early-stops on validation."""
    from allmrec.pipeline import steps

    res = resources(run, config, set_, dataset, path, **{"cf.backbone": backbone, "cf.epochs": epochs})
    model, _ = guard(lambda: steps.train_cf(res))
    _show_validation(res, model)


def align(dataset: Dataset = None, path: DataPath = None, run: Run = None, config: ConfigFile = None, set_: Sets = None) -> None:
    """Stage 1: align CF item embeddings with (fine-tuned) Sentence-BERT text embeddings."""
    from allmrec.pipeline import steps

    res = resources(run, config, set_, dataset, path)
    result = guard(lambda: steps.align(res))
    if result.history:
        last = result.history[-1]
        console.print("stage 1 last epoch: " + ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "matching", "item_recon", "text_recon", "rec") if k in last))
    console.print(f"model: {result.checkpoint}")


def fuse(dataset: Dataset = None, path: DataPath = None, run: Run = None, config: ConfigFile = None, set_: Sets = None) -> None:
    """Fit the fusions with no LLM (the best mode's prior, and the SASRec + text control) on validation items of training users."""
    from allmrec.pipeline import steps

    res = resources(run, config, set_, dataset, path)
    for name, meta in guard(lambda: steps.fuse(res)).items():
        criterion = meta["beta_criterion"][str(meta["beta"])] if str(meta["beta"]) in meta["beta_criterion"] else float("nan")
        console.print(f"fusion/{name}: fitted on {meta['fit_users']} users (early stopping: {meta['es_users']}), beta {meta['beta']} "
                      f"(early-stopping all-round Hit@1 {criterion:.4f}), {meta['seconds']['total']:.0f} s")
    console.print(f"models: {res.folder.fusion}")


def train(llm: Optional[str] = typer.Option(None, "--llm", help="'default' (bundled SmolLM2-135M), a HF model id or a local folder."),
          mode: Optional[str] = typer.Option(None, "--mode", help="Stage-2 mode: best (default), cf-residual, paper or listwise."),
          max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop stage 2 after this many optimiser steps."),
          dataset: Dataset = None, path: DataPath = None, run: Run = None, config: ConfigFile = None, set_: Sets = None) -> None:
    """Stage 2 with the frozen LLM (the best mode by default; --mode paper for the paper's)."""
    from allmrec.pipeline import steps

    res = resources(run, config, set_, dataset, path, **{"llm.name_or_path": llm, "stage2.mode": mode, "stage2.train.max_steps": max_steps})
    _, state = guard(lambda: steps.train_stage2(res))
    console.print(f"stage 2 ({res.config.stage2().label}): {state['step']} steps; model: {res.folder.stage2 / 'model.safetensors'}")


def evaluate(methods: Optional[str] = typer.Option(None, "--methods", "-m", help="Comma list of cf, text-sim, cf-text, fusion, llm-only, allmrec, allmrec-sbert, tallrec, popularity, ..."),
             mode: Optional[str] = typer.Option(None, "--mode", help="LLM inference: rank (likelihood / listwise scores), generate (greedy + exact match) or both."),
             max_users: Optional[int] = typer.Option(None, "--max-users", help="Evaluate a seeded random sample of this many users (--set eval.max_users=null: all)."),
             split: Optional[str] = typer.Option(None, "--split", help="test (default) or valid."),
             dataset: Dataset = None, path: DataPath = None, run: Run = None, config: ConfigFile = None, set_: Sets = None) -> None:
    """Score methods on the stored candidates (overall and per scenario); write JSON + Markdown."""
    from allmrec.pipeline import steps

    flags = {"eval.methods": methods.split(",") if methods else None, "eval.mode": mode, "eval.max_users": max_users, "eval.split": split}
    res = resources(run, config, set_, dataset, path, **flags)
    results = guard(lambda: steps.evaluate(res))
    console.print(Path(results["files"]["markdown"]).read_text())
    console.print(f"results: {results['files']['json']} and {results['files']['markdown']}")


def recommend(history: str = typer.Option(..., "--history", help="Comma-separated item ids (original ids), oldest first."),
              candidates: Optional[str] = typer.Option(None, "--candidates", help="Comma-separated item ids to rank (default: 19 random unseen items)."),
              top: int = typer.Option(10, "--top", help="How many to print."),
              method: str = typer.Option("allmrec", "--method", help="Which method ranks (see `allmrec evaluate --methods`)."),
              run: Run = None, config: ConfigFile = None, set_: Sets = None) -> None:
    """Rank candidate items for a history with a trained method; print titles."""
    from allmrec.pipeline import steps

    res = resources(run, config, set_)
    hist = [h.strip() for h in history.split(",") if h.strip()]
    cands = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else None
    for pos, row in enumerate(guard(lambda: steps.recommend(res, hist, cands, top=top, method=method)), 1):
        console.print(f"{pos:2d}. {row['item_id']}  {row['title']}  (score {row['score']:.2f})", highlight=False)


def demo(run: Run = Path("runs/demo"), config: ConfigFile = None, set_: Sets = None) -> None:
    """The whole pipeline on MovieLens-100K with the bundled models, on CPU: SASRec, stage 1,
    stage 2 (best mode), then SASRec vs LLM-Only vs A-LLMRec Hit@1 on the same users and candidates."""
    from allmrec.pipeline import steps
    from allmrec.pipeline.config import demo_config_file

    res = resources(run, config or demo_config_file(), set_)
    results, timings = guard(lambda: steps.demo(res))
    console.print(Path(results["files"]["markdown"]).read_text())
    console.rule("[bold]summary")
    for name, entry in results["methods"].items():
        ov = entry["overall"]
        extra = f", generation exact match {ov['gen_hit@1']:.3f}" if "gen_hit@1" in ov else ""
        hit = f"Hit@1 {ov['hit@1']:.3f} [{ov['hit@1_ci95'][0]:.3f}, {ov['hit@1_ci95'][1]:.3f}]" if "hit@1" in ov else ""
        console.print(f"{results['labels'].get(name, name):>42}: {hit}{extra}")
    total = sum(timings.values())
    console.print(f"{int(results['users'])} test users, same candidates for every method. Step times (s): {timings}; total {total / 60:.1f} min")


def register(app: typer.Typer) -> None:
    for fn, name in ((prepare, "prepare"), (train_cf, "train-cf"), (align, "align"), (fuse, "fuse"), (train, "train"), (evaluate, "evaluate"),
                     (recommend, "recommend"), (demo, "demo")):
        app.command(name)(fn)
