"""``allmrec predict DIR``: top-k recommendations for every user, to Parquet, sharded across
processes (``accelerate launch --num_processes N -m allmrec predict ...``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from allmrec.cli.options import console, guard


def predict(artifact: Path = typer.Argument(..., help="Artifact folder written by `allmrec export`."),
            users: str = typer.Option("all", "--users", help="'all', or a file with one user id per line."),
            out: Path = typer.Option(Path("recs"), "--out", help="Folder for part-*.parquet and the merged recommendations.parquet."),
            top_k: int = typer.Option(10, "--top-k", min=1, help="Recommendations per user."),
            n_candidates: int = typer.Option(20, "--n-candidates", min=1, help="Candidates the CF model retrieves per user for A-LLMRec to re-rank."),
            cold_slots: int = typer.Option(2, "--cold-slots", min=0, help="Of those, slots kept for added items closest in text."),
            shard_size: int = typer.Option(64, "--shard-size", min=1, help="Users per shard (the unit a rerun skips)."),
            batch_size: int = typer.Option(1, "--batch-size", min=1, help="Users per LLM forward (1 is fastest on CPU)."),
            threads: int = typer.Option(1, "--threads", min=0, help="Torch threads per process."),
            llm: Optional[str] = typer.Option(None, "--llm", help="Where the recorded LLM is now (its hash must match)."),
            device: str = typer.Option("cpu", "--device")) -> None:
    """Write top-k recommendations (user, rank, item_id, score) for many users to Parquet."""
    from allmrec.serving.predict import predict as run

    summary = guard(lambda: run(artifact, users, out, top_k, n_candidates, cold_slots, shard_size, batch_size, threads, llm, device))
    console.print(f"process {summary['written_by_this_process']} shard(s) written, {summary['skipped_by_this_process']} already done; "
                  f"{summary['users']} users in {summary['shards']} shards on {summary['processes']} process(es); "
                  f"{summary['seconds_this_process']} s; {Path(out) / 'recommendations.parquet'}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
