"""``allmrec export RUN DIR``: one folder with everything inference needs (:mod:`allmrec.serving.artifact`)."""

from __future__ import annotations

from pathlib import Path

import typer

from allmrec.cli.options import Sets, console, guard


def export(run: Path = typer.Argument(..., help="Trained run folder (holds config.yaml, cf/, stage1/, stage2/)."),
           out: Path = typer.Argument(..., help="Artifact folder to write (replaced atomically)."),
           method: str = typer.Option("allmrec", "--method", help="What the artifact ranks with: allmrec (default), allmrec-sbert or cf."),
           set_: Sets = None) -> None:
    """Write a trained run as one artifact: CF model, stage 1, stage 2, catalogue, configs, manifest.json."""
    from allmrec.serving.artifact import export_run

    manifest = guard(lambda: export_run(run, out, method, set_ or []))
    metrics = (manifest.get("metrics") or {}).get("overall", {}).get(method, {})
    hit = f"; test Hit@1 {metrics['hit@1']:.3f} ({manifest['metrics']['users']} users)" if "hit@1" in metrics else "; no test metrics (run `allmrec evaluate` first)"
    console.print(f"exported {manifest['id']} ({manifest['label']}, LLM {manifest['llm']['identity']}){hit}", highlight=False, soft_wrap=True)
    console.print(f"artifact: {Path(out).resolve()}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
