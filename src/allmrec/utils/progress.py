"""Progress bars that stay readable in a log file.

On a terminal a bar redraws in place; written to a file or a pipe every redraw is a new line,
so a long run would print one line per step. Without a terminal the bar refreshes at most every
``ALLMREC_PROGRESS_SECONDS`` seconds (default 30).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def progress_bar(**kwargs: Any):
    """``tqdm(**kwargs)``, rate-limited when stderr is not a terminal."""
    from tqdm.auto import tqdm

    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", float(os.environ.get("ALLMREC_PROGRESS_SECONDS", "30")))
        kwargs.setdefault("maxinterval", kwargs["mininterval"])
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)
