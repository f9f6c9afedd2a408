"""The ``allmrec`` command line. Every command reads options layered as built-in defaults < the
run folder's saved config < ``--config FILE`` < flags and ``--set key=value``
(:mod:`allmrec.pipeline.config`); a run folder (``--run``) holds everything one pipeline
produces, and each step reuses or resumes what is already there."""

from __future__ import annotations

import logging

import typer

from allmrec import __version__
from allmrec.cli import experiment as _experiment
from allmrec.cli import export as _export
from allmrec.cli import pipeline as _pipeline
from allmrec.cli import predict as _predict
from allmrec.cli import serve as _serve
from allmrec.cli.options import console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="A-LLMRec: LLMs meet collaborative filtering.")


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


_pipeline.register(app)
_experiment.register(app)
_export.register(app)
_serve.register(app)
_predict.register(app)

__all__ = ["app"]
