"""Crash-resume harness: run a long step in a child process, SIGKILL it at seeded random moments,
resume it, and check that every file it leaves is the uninterrupted run's (bit for bit, timings
and timestamps aside).

How a step runs
    The parent imports torch, transformers, sentence-transformers, peft and the package once and
    forks a child per run (a fresh interpreter would spend ~10 s importing on the CI machine); the
    child runs the command in-process (``allmrec <command> ...`` through the CLI's ``app``, or a
    Python function for TALLRec), with its output in a log file, and exits with the command's exit
    code. The parent only forks and waits: it never runs a torch operation, so the child inherits
    no thread pool.

Where a kill lands
    A reference run lists its fault points (:mod:`allmrec.utils.faults`: every training step,
    every epoch end, each moment of a checkpoint write, every atomic write before its rename, the
    gap between the final model and ``done.json``), by kind: ``checkpoint-write`` (a file inside a
    checkpoint's temporary folder), ``checkpoint`` (written, renamed, pointed, pruned), ``step``,
    ``write`` (any atomic write), ``finish``. A *chain* trial kills a fresh copy of the step's
    inputs once per kind in a seeded order (``finish`` last), each resumed run being killed
    again, at a seeded ordinal among that kind's points; a *targeted* trial kills at a named
    point (where a bug was found); a *single* trial at a uniform point; a *timed* trial after a
    seeded random delay (anywhere, mid-``write()`` or mid-``rmtree`` included). Atomic writes are
    torn (cut to half) at random. The last run of a trial goes uninterrupted, and its files are
    compared with the reference's: the same set of files, JSON equal with clocks and timings
    masked, everything else byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# torch._dynamo: the first optimizer a process builds imports it (~10 s on the CI machine).
PRELOAD = ("torch", "torch._dynamo", "transformers", "sentence_transformers", "peft", "safetensors.torch", "pandas", "pyarrow", "matplotlib.pyplot",
           "allmrec.cli", "allmrec.pipeline.steps", "allmrec.align.stage1", "allmrec.align.stage2", "allmrec.baselines.tallrec",
           "allmrec.experiment")
# JSON keys whose values are clocks or timings (differ between any two runs), masked before comparing.
VOLATILE_KEY = re.compile(r"seconds|_per_s$|^(finished|written|started|updated|machine|invocations|checksum)$")
# Names a crash may leave behind that nothing reads: atomic writes' and checkpoints' temporary files.
GARBAGE = re.compile(r"^\..*\.tmp$|^\.step-|\.tmp-|^\..*\.old")


def preload() -> None:
    """Import what every step needs once, in the parent, before any fork."""
    import importlib

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in PRELOAD:
        importlib.import_module(name)


# ---- children ------------------------------------------------------------------------------------
@dataclass
class ChildRun:
    rc: int  # exit code; -9 = killed by SIGKILL
    seconds: float
    points: list[str]  # the fault points it reached, in order


def run_child(fn: Callable[[], Any], log: Path, faults: str = "", timeout: float = 600.0, kill_after: float | None = None,
              points_log: Path | None = None) -> ChildRun:
    """Fork, run ``fn`` in the child (stdout/stderr to ``log``), wait; SIGKILL it after
    ``kill_after`` seconds when given. ``faults`` is the child's ``ALLMREC_FAULTS`` (without ``log=``)."""
    points_log = points_log or log.with_suffix(".points")
    points_log.unlink(missing_ok=True)
    spec = ";".join(p for p in (f"log={points_log}", faults) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _child(fn, log, spec)
    deadline = t0 + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.perf_counter()
        if (kill_after is not None and now - t0 >= kill_after) or now >= deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            if now >= deadline and kill_after is None:
                raise TimeoutError(f"{log}: the child ran over {timeout} s")
            break
        time.sleep(0.005)
    points = [line.split("\t")[1] for line in points_log.read_text().splitlines()] if points_log.exists() else []
    return ChildRun(os.waitstatus_to_exitcode(status), time.perf_counter() - t0, points)


def _child(fn: Callable[[], Any], log: Path, spec: str) -> None:
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)
        os.environ["ALLMREC_FAULTS"] = spec
        from allmrec.utils import faults

        faults.reset()
        try:
            fn()
            code = 0
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported in the log, exit code 1
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
    finally:
        os._exit(code)


def cli(*args: str) -> Callable[[], None]:
    """A child function running ``allmrec <args>``."""

    def run() -> None:
        from allmrec.cli import app

        app(list(args), prog_name="allmrec")

    return run


# ---- outputs ---------------------------------------------------------------------------------------
def _mask(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: ("<volatile>" if VOLATILE_KEY.search(str(k)) else _mask(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mask(v) for v in obj]
    return obj


def _normalised(path: Path, work: Path) -> bytes:
    """A file's content as compared: JSON with clocks masked and the work folder's path replaced;
    other text with the path replaced; anything else as bytes."""
    data = path.read_bytes()
    if path.suffix not in (".json", ".jsonl", ".yaml", ".yml", ".md", ".txt"):
        return data
    text = data.decode().replace(str(work.resolve()), "<WORK>").replace(str(work), "<WORK>")
    if path.suffix == ".json":
        return json.dumps(_mask(json.loads(text)), sort_keys=True).encode()
    if path.suffix == ".md":
        text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", "<time>", text)  # clocks, wall times, invocations in reports
        text = re.sub(r"\d+(\.\d+)?( ?(s|min|h|ms)\b| invocation)", r"<t>\2", text)
    return text.encode()


def snapshot(work: Path, roots: tuple[str, ...]) -> tuple[dict[str, bytes], list[str]]:
    """``({relative path: normalised content}, [leftover temporary files])`` under ``roots``."""
    files: dict[str, bytes] = {}
    garbage: list[str] = []
    for root in roots:
        base = work / root
        if base.is_file():
            files[root] = _normalised(base, work)
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            here = Path(dirpath)
            for d in list(dirnames):
                if (here / d).is_symlink():
                    files[str((here / d).relative_to(work))] = f"-> {os.readlink(here / d)}".encode()
                    dirnames.remove(d)
                elif GARBAGE.search(d):
                    garbage.append(str((here / d).relative_to(work)) + "/")
                    dirnames.remove(d)
            for name in filenames:
                rel = str((here / name).relative_to(work))
                if GARBAGE.search(name):
                    garbage.append(rel)
                else:
                    files[rel] = _normalised(here / name, work)
    return files, sorted(garbage)


def differences(reference: dict[str, bytes], got: dict[str, bytes], work: Path) -> list[str]:
    """What differs between two snapshots, one line per file."""
    out = [f"missing {k}" for k in sorted(set(reference) - set(got))] + [f"extra {k}" for k in sorted(set(got) - set(reference))]
    for key in sorted(set(reference) & set(got)):
        if reference[key] != got[key]:
            out.append(f"differs {key}" + _tensor_detail(work / key, reference[key]))
    return out


def _tensor_detail(path: Path, reference: bytes) -> str:
    if path.suffix != ".safetensors":
        return ""
    from safetensors.torch import load

    mine, ref = load(path.read_bytes()), load(reference)
    names = sorted(k for k in set(mine) | set(ref) if k not in mine or k not in ref or not bool((mine[k] == ref[k]).all()))
    return f" (tensors {', '.join(names[:4])}{'...' if len(names) > 4 else ''})" if names else " (metadata only)"


# ---- kill plans ---------------------------------------------------------------------------------------
# Kinds of fault points, by name prefix (a point's kind is the first that matches).
KINDS = {"checkpoint-write": ("write:.step-",), "checkpoint": ("checkpoint:",), "step": ("step:", "epoch:"), "write": ("write:",),
         "finish": ("training:",)}


def kind(point: str) -> str:
    return next((k for k, prefixes in KINDS.items() if point.startswith(prefixes)), "other")


@dataclass
class Kill:
    """Where to kill a run: at its ``index``-th fault point (of kind ``kind`` when given), or
    ``delay`` seconds after it starts; ``tear`` cuts an atomic write's temporary file first."""

    index: int = 0
    kind: str = ""
    tear: bool = False
    delay: float = 0.0

    def faults(self) -> str:
        if not self.index:
            return ""
        match = f";match={'|'.join(KINDS[self.kind])}" if self.kind else ""
        return f"kill={self.index}{match}" + (";tear=1" if self.tear else "")


def uniform_kills(points: list[str], n: int, gen: np.random.Generator) -> list[Kill]:
    """``n`` kills of a fresh run at fault points drawn uniformly (writes torn at random)."""
    picks = gen.integers(1, len(points) + 1, size=n)
    return [Kill(int(i), tear=points[i - 1].startswith("write:") and bool(gen.integers(2))) for i in picks]


def chain_kills(points: list[str], gen: np.random.Generator) -> list[Kill]:
    """One kill of each kind in a chain (each resumed run killed again): the kinds in a seeded
    order with the end of training last, each at a seeded ordinal among the first half of that
    kind's points in the uninterrupted run, so a resumed run usually still reaches it."""
    counts = {k: sum(kind(p) == k for p in points) for k in KINDS}
    middle = [k for k in KINDS if k != "finish" and counts[k]]
    order = [middle[i] for i in gen.permutation(len(middle))] + (["finish"] if counts["finish"] else [])
    return [Kill(int(gen.integers(1, max(1, counts[k] // 2) + 1)), kind=k, tear=k in ("checkpoint-write", "write") and bool(gen.integers(2)))
            for k in order]


# ---- cases ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """A long step: its prerequisites (run once into a base folder), the command, what it writes."""

    name: str
    command: Callable[[Path], Callable[[], Any]]  # work folder -> the child's function
    outputs: tuple[str, ...]  # files / folders of the work folder that are compared
    base: str = ""  # name of the base folder holding its inputs ("" = empty)
    targets: tuple[str, ...] = ()  # fault points always killed at (see :func:`targeted_kills`)
    skip: str = ""  # reason to skip (e.g. a command that does not exist yet)
    kinds: tuple[str, ...] = ("checkpoint-write", "checkpoint", "step")  # kinds of fault point a test must have killed at


@dataclass
class CaseResult:
    case: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    reference_seconds: float = 0.0
    reference_points: int = 0

    @property
    def kills(self) -> int:
        return sum(t["kills"] for t in self.trials)

    @property
    def mismatches(self) -> list[str]:
        return [f"trial {t['trial']}: {m}" for t in self.trials for m in t["mismatches"]]

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for t in self.trials:
            for landed in t["landed"]:
                kinds[landed["kind"]] = kinds.get(landed["kind"], 0) + 1
        return {"case": self.case, "trials": len(self.trials), "kills": self.kills, "kills_by_kind": kinds, "mismatches": self.mismatches,
                "failed_resumes": [t["trial"] for t in self.trials if t["final_rc"] != 0], "leftover_tmp": sorted({g for t in self.trials for g in t["garbage"]}),
                "reference_seconds": round(self.reference_seconds, 2), "reference_fault_points": self.reference_points, "details": self.trials}


class CrashRunner:
    """Runs cases in ``root``: bases (a case's inputs, built once), references, trials.

    ``bases`` maps a base name to ``(parent base or "", [commands])``: the commands run, in order
    and uninterrupted, in a copy of the parent base. ``env`` is every child's extra environment;
    ``ALLMREC_HOME`` is the work folder's ``home/`` (caches belong to the copy).
    """

    def __init__(self, root: Path, bases: dict[str, tuple[str, list[Callable[[Path], Callable[[], Any]]]]], timeout: float = 600.0) -> None:
        self.root, self.bases, self.timeout = Path(root), bases, timeout
        self._built: dict[str, Path] = {}
        self.references: dict[str, tuple[dict[str, bytes], list[str], float]] = {}

    def run(self, fn: Callable[[], Any], work: Path, log: Path, kill: Kill | None = None) -> ChildRun:
        def with_home() -> Any:
            os.environ["ALLMREC_HOME"] = str(work / "home")
            os.environ.setdefault("ALLMREC_PROGRESS_SECONDS", "3600")
            return fn()

        return run_child(with_home, log, kill.faults() if kill else "", self.timeout, kill_after=(kill.delay or None) if kill else None)

    def base(self, name: str) -> Path:
        if not name:
            return Path()
        if name not in self._built:
            parent, commands = self.bases[name]
            folder = self.root / "bases" / name
            shutil.rmtree(folder, ignore_errors=True)
            self._copy(self.base(parent) if parent else None, folder)
            for k, command in enumerate(commands):
                r = self.run(command(folder), folder, self.root / "bases" / f"{name}-{k}.log")
                if r.rc != 0:
                    raise RuntimeError(f"base {name}: command {k} exited {r.rc}; see {self.root / 'bases' / f'{name}-{k}.log'}")
            self._built[name] = folder
        return self._built[name]

    @staticmethod
    def _copy(source: Path | None, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            target.mkdir()
        else:
            shutil.copytree(source, target, symlinks=True)

    def fresh(self, case: Case, label: str) -> Path:
        work = self.root / "trials" / case.name / label
        shutil.rmtree(work, ignore_errors=True)
        self._copy(self.base(case.base) if case.base else None, work)
        return work

    def reference(self, case: Case) -> tuple[dict[str, bytes], list[str], float]:
        """The uninterrupted run's snapshot, fault points and seconds (run once per case)."""
        if case.name not in self.references:
            work = self.fresh(case, "reference")
            r = self.run(case.command(work), work, work.with_suffix(".log"))
            if r.rc != 0:
                raise RuntimeError(f"{case.name}: the uninterrupted run exited {r.rc}; see {work.with_suffix('.log')}")
            files, garbage = snapshot(work, case.outputs)
            if garbage:
                raise RuntimeError(f"{case.name}: the uninterrupted run left temporary files {garbage}")
            self.references[case.name] = (files, r.points, r.seconds)
        return self.references[case.name]

    def trial(self, case: Case, kills: list[Kill], label: str) -> dict[str, Any]:
        """Kill the step at each of ``kills`` in turn (the first on a fresh copy, the next on the
        resumed run, ...), then run it uninterrupted and compare with the reference."""
        reference = self.reference(case)[0]
        work = self.fresh(case, label)
        landed, problems = [], []
        for j, kill in enumerate(kills):
            r = self.run(case.command(work), work, work.with_suffix(f".{j}.log"), kill)
            if r.rc == -signal.SIGKILL:
                point = r.points[-1] if r.points else "(before any fault point)"
                landed.append({"run": j, "kind": "timed" if kill.delay else kind(point), "point": point, "point_index": len(r.points),
                               "tear": kill.tear, "delay": round(kill.delay, 3) if kill.delay else None})
            elif r.rc == 0:
                continue  # it finished before the kill point (the next run re-opens a finished step)
            else:
                problems.append(f"run {j} exited {r.rc}: {_tail(work.with_suffix(f'.{j}.log'))}")
                break
        final = self.run(case.command(work), work, work.with_suffix(".final.log"))
        if final.rc != 0:
            problems.append(f"the resumed run exited {final.rc}: {_tail(work.with_suffix('.final.log'))}")
        got, garbage = snapshot(work, case.outputs)
        mismatches = problems + (differences(reference, got, work) if final.rc == 0 else [])
        return {"trial": label, "kills": len(landed), "landed": landed, "final_rc": final.rc, "mismatches": mismatches, "garbage": garbage,
                "work": str(work)}


def _tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(line.strip() for line in text[-lines:])


def targeted_kills(points: list[str], names: tuple[str, ...]) -> list[Kill]:
    """Kills at named fault points of the uninterrupted run (``PATTERN``: the first point matching
    the shell pattern, ``PATTERN@last``: the last): the moments where a bug was once found."""
    from fnmatch import fnmatchcase

    out = []
    for name in names:
        point, _, which = name.partition("@")
        hits = [i for i, p in enumerate(points, 1) if fnmatchcase(p, point)]
        if not hits:
            raise ValueError(f"no fault point {point!r} in the uninterrupted run")
        out.append(Kill(hits[-1] if which == "last" else hits[0]))
    return out


def run_case(runner: CrashRunner, case: Case, seed: int, chains: int = 1, single: int = 0, timed: int = 0, min_kills: int = 0) -> CaseResult:
    """``chains`` trials killed once per kind in a row (:func:`chain_kills`), the case's targeted
    kills, ``single`` trials killed once at a uniform fault point (more until ``min_kills`` kills
    landed), ``timed`` trials killed after a uniform delay."""
    _, points, seconds = runner.reference(case)
    gen = np.random.default_rng([seed, sum(map(ord, case.name))])
    result = CaseResult(case.name, reference_seconds=seconds, reference_points=len(points))
    for k in range(chains):
        result.trials.append(runner.trial(case, chain_kills(points, gen), f"chain-{k}"))
    for kill, name in zip(targeted_kills(points, case.targets), case.targets):
        result.trials.append(runner.trial(case, [kill], f"at-{name.replace('/', '_')}"))
    k = 0
    while k < single or result.kills < min_kills:
        result.trials.append(runner.trial(case, uniform_kills(points, 1, gen), f"single-{k}"))
        k += 1
    for k in range(timed):
        result.trials.append(runner.trial(case, [Kill(delay=float(gen.uniform(0.02, 1.0)) * seconds)], f"timed-{k}"))
    return result
