"""``python -m allmrec``: the command line (also what ``accelerate launch -m allmrec`` runs)."""

from allmrec.cli import app

app()
