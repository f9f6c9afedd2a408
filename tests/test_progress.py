"""Progress bars in a log file: rate-limited when there is no terminal."""

import io
import time

from allmrec.utils import progress


def test_a_bar_without_a_terminal_redraws_at_most_every_interval(monkeypatch):
    monkeypatch.setenv("ALLMREC_PROGRESS_SECONDS", "30")
    out = io.StringIO()  # not a terminal
    monkeypatch.setattr(progress.sys, "stderr", out)
    bar = progress.progress_bar(total=2000, desc="steps", file=out)
    for _ in range(2000):
        bar.update(1)
        bar.set_postfix(loss="1.0", refresh=False)
    bar.close()
    lines = [line for line in out.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) <= 3, lines  # the start, the end (and at most one redraw in between)
    assert "2000/2000" in lines[-1]


def test_a_terminal_keeps_the_default_interval(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(progress.sys, "stderr", Tty())
    bar = progress.progress_bar(total=3, file=io.StringIO())
    assert bar.mininterval < 1
    bar.close()
