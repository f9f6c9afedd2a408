"""Fault points: named places where a crash test may kill the process (off unless asked for).

The library calls :func:`fault_point` at the moments a crash is most likely to leave a broken
state: after each training step, inside every checkpoint write (each file of the temporary
folder, before and after the rename, before and after the ``latest.json`` pointer), after
every atomic write's body and before its rename, and between a task's final model and
``done.json``. With ``ALLMREC_FAULTS`` unset a fault point is one dictionary lookup.

``ALLMREC_FAULTS`` is a ``;``-separated list of settings (read at the first fault point of a
process; :func:`reset` re-reads it, e.g. in a forked child):

* ``log=PATH``: append ``<n>\\t<name>\\t<time.monotonic()>`` for every fault point reached (the n-th
  of this process);
* ``kill=N``: SIGKILL this process at its N-th fault point (nothing is flushed or cleaned up,
  as in a power cut or an out-of-memory kill);
* ``match=PREFIX|PREFIX...``: count only the fault points whose names start with one of these
  for ``kill`` (e.g. ``kill=2;match=checkpoint:`` dies at the second checkpoint moment);
* ``tear=1``: when that point is inside an atomic write, first cut the temporary file to half its
  size (a torn write).

The crash harness (``tests/crash_harness.py``) runs a step once with ``log=`` to list its fault
points, then again with ``kill=`` at seeded random ones, resumes, and compares the outputs with
the uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "ALLMREC_FAULTS"
_UNSET = object()
_plan: object = _UNSET


class _Plan:
    def __init__(self, spec: str) -> None:
        fields = dict(part.split("=", 1) for part in spec.split(";") if "=" in part)
        unknown = set(fields) - {"log", "kill", "match", "tear"}
        if unknown:
            raise ValueError(f"{ENV}={spec!r}: unknown setting(s) {', '.join(sorted(unknown))}; valid: log, kill, match, tear")
        self.log = fields.get("log")
        self.kill = int(fields["kill"]) if "kill" in fields else None
        self.match = tuple(p for p in fields.get("match", "").split("|") if p)
        self.tear = fields.get("tear", "0") not in ("", "0", "false")
        self.count = self.matched = 0


def reset() -> None:
    """Forget the settings read so far (the next fault point reads ``ALLMREC_FAULTS`` again)."""
    global _plan
    _plan = _UNSET


def _current() -> _Plan | None:
    global _plan
    if _plan is _UNSET:
        spec = os.environ.get(ENV, "")
        _plan = _Plan(spec) if spec else None
    return _plan  # type: ignore[return-value]


def fault_point(name: str, partial: Path | None = None) -> None:
    """A place where a crash test may kill the process; ``partial`` is a temporary file being
    written (cut to half its size first when ``tear=1``)."""
    plan = _current()
    if plan is None:
        return
    plan.count += 1
    if plan.log:
        fd = os.open(plan.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{plan.count}\t{name}\t{time.monotonic():.4f}\n".encode())  # in the kernel's hands before any kill
        finally:
            os.close(fd)
    if plan.match and not name.startswith(plan.match):
        return
    plan.matched += 1
    if plan.kill == plan.matched:
        if plan.tear and partial is not None and partial.is_file():
            os.truncate(partial, partial.stat().st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
