"""``allmrec serve DIR``: the HTTP server and web page over an artifact (:mod:`allmrec.serving.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from allmrec.cli.options import console, guard


def serve(artifact: Path = typer.Argument(..., help="Artifact folder written by `allmrec export`."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
          port: int = typer.Option(8000, "--port"),
          llm: Optional[str] = typer.Option(None, "--llm", help="Where the recorded LLM is now (its hash must match the manifest)."),
          device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
          threads: int = typer.Option(0, "--threads", help="Torch threads for the model (0: torch's default)."),
          max_batch: int = typer.Option(8, "--max-batch", min=1, help="Rows of concurrent requests per model forward."),
          max_delay_ms: float = typer.Option(5.0, "--max-delay-ms", min=0, help="How long a request waits for others to share its forward."),
          max_concurrency: int = typer.Option(64, "--max-concurrency", min=1, help="Ranking requests in flight; more are answered 429."),
          n_candidates: int = typer.Option(20, "--n-candidates", min=1, help="Candidates the CF model retrieves when a request gives none."),
          cold_slots: int = typer.Option(2, "--cold-slots", min=0, help="Of those, slots kept for added items closest in text."),
          max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1, help="Larger request bodies are answered 413."),
          allow_writes: bool = typer.Option(False, "--allow-writes", help="Enable POST /v1/items (adds items to the artifact's added_items.json)."),
          log_level: str = typer.Option("info", "--log-level")) -> None:
    """Serve an exported model: /v1/rank, /v1/rank:batch, /v1/items, /health, /ready, /metrics and a web page at /."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        console.print(f"[red]error:[/red] allmrec serve needs {' and '.join(missing)}: pip install 'allmrec[serve]'")
        raise typer.Exit(2)
    from allmrec.serving.app import ServeOptions, serve as run_server
    from allmrec.serving.artifact import read_manifest
    from allmrec.serving.requests import Limits

    manifest = guard(lambda: read_manifest(artifact.resolve(), verify=False))
    limits = Limits(max_candidates=max(100, n_candidates), max_body_bytes=max_body_bytes)
    options = ServeOptions(llm=llm, device=device, threads=threads, max_batch=max_batch, max_delay_ms=max_delay_ms, max_concurrency=max_concurrency,
                           n_candidates=n_candidates, cold_slots=cold_slots, allow_writes=allow_writes, limits=limits)
    console.print(f"serving {manifest['id']} on http://{host}:{port}/ ({'writes allowed' if allow_writes else 'read-only'})", highlight=False, soft_wrap=True)
    run_server(artifact, host, port, options, log_level)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
