"""Crash-resume sweep: the CI harness (tests/crash_harness.py, tests/crash_cases.py) at a larger
size, more kills per step, and kills at random times; writes benchmarks/results/crash_resume.json.

Per step (``cf``, ``stage1``, ``stage2-best``, ``stage2-paper``, ``tallrec``, ``experiment``;
``predict`` once that command exists): one uninterrupted reference run; a *control* (a second
uninterrupted run, which must match the reference: what the comparison masks is only clocks);
``--chains`` chains (one kill per kind of fault point, each resumed run killed again); the
targeted kills (where bugs were found); ``--single`` kills at a uniform fault point; ``--timed``
kills after a uniform random delay (anywhere, mid-``write()`` included). Every trial ends with an
uninterrupted run whose files are compared with the reference's.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/crash_resume.py --scale 2 --chains 2 --single 6 --timed 4
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import crash_cases  # noqa: E402
import crash_harness as harness  # noqa: E402

STEPS = ["cf", "stage1", "stage2-best", "stage2-paper", "tallrec", "experiment", "predict"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=2, help="multiplies every step's epochs / optimiser steps (CI: 1)")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--single", type=int, default=6)
    ap.add_argument("--timed", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--steps", default=",".join(STEPS), help="comma list of steps")
    ap.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "crash_resume.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    harness.preload()
    root = args.root or Path(tempfile.mkdtemp(prefix="crash-resume-"))
    runner = crash_cases.runner(root, args.scale)
    cases = crash_cases.cases(root)
    out = {"command": "PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/crash_resume.py " + " ".join(sys.argv[1:]),
           "scale": args.scale, "seed": args.seed, "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "steps": {}}
    for name in args.steps.split(","):
        case = cases[name]
        if case.skip:
            out["steps"][name] = {"skipped": case.skip}
            print(f"{name}: skipped ({case.skip})", flush=True)
            continue
        t = time.perf_counter()
        control = runner.trial(case, [], "control")
        result = harness.run_case(runner, case, seed=args.seed, chains=args.chains, single=args.single, timed=args.timed)
        summary = result.summary()
        details = summary.pop("details")
        summary["control_mismatches"] = control["mismatches"]
        summary["trials_detail"] = [{"trial": d["trial"], "final_rc": d["final_rc"], "mismatches": d["mismatches"],
                                     "kills": [f"{k['kind']}: {k['point']}" + (" (torn)" if k["tear"] else "") + (f" at {k['delay']} s" if k["delay"] else "")
                                               for k in d["landed"]]} for d in details]
        summary["seconds"] = round(time.perf_counter() - t, 1)
        out["steps"][name] = summary
        print(f"{name}: {summary['trials']} trials, {summary['kills']} kills {summary['kills_by_kind']}, "
              f"{len(summary['mismatches'])} mismatches, {len(summary['failed_resumes'])} failed resumes, control "
              f"{len(control['mismatches'])} mismatches, {summary['seconds']} s", flush=True)
    ran = [s for s in out["steps"].values() if "kills" in s]
    out["total"] = {"steps": len(ran), "trials": sum(s["trials"] for s in ran), "kills": sum(s["kills"] for s in ran),
                    "mismatches": sum(len(s["mismatches"]) for s in ran), "failed_resumes": sum(len(s["failed_resumes"]) for s in ran),
                    "control_mismatches": sum(len(s["control_mismatches"]) for s in ran),
                    "leftover_tmp_files": sum(len(s["leftover_tmp"]) for s in ran), "seconds": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["total"]), f"-> {args.out}")


if __name__ == "__main__":
    main()
