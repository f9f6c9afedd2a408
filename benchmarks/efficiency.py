"""Efficiency against TALLRec (paper Table 8), in one process on one machine: training time *to
the same validation Hit@1*, and inference time per user.

    python benchmarks/efficiency.py [--config src/allmrec/configs/demo.yaml] [--name ml100k] \\
        [--tallrec-steps 400] [--tallrec-eval-every 50] [--test-users 50] [--set section.key=value]

Both methods use the same frozen LLM, dataset, stage-2 examples, batch size and held-out users
(``stage2.train.valid_users`` seeded training users, never trained on by either; their
validation items, 1 + 19 stored candidates, give each method's learning curve):

* A-LLMRec's best mode trains through ``allmrec.pipeline`` in a fresh run folder: the CF model
  (reported, and counted in a second ratio: the paper treats it as given), stage 1, the fusion
  (its prior) and stage 2 with a learning curve every ``stage2.train.eval_every`` steps. Its
  timeline: stage 1 + the fusion's fitting, then stage 2's training time at each curve point.
* TALLRec (LoRA on the text prompt, :mod:`allmrec.baselines.tallrec`) trains ``--tallrec-steps``
  steps with a learning curve every ``--tallrec-eval-every`` steps.

The target is the best validation Hit@1 TALLRec reaches; each method's time to it is the training
time (validations excluded) of its first curve point at or above it. Inference: seconds per user
on ``--test-users`` seeded test users, for the best mode as its LLM-path check left it, the best
mode with the LLM path forced on, and TALLRec (title likelihood of the 20 candidates).
Writes ``benchmarks/results/efficiency_<name>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from allround import cpu_flags, forced_llm_recommender, timed  # noqa: E402

from allmrec.experiment.efficiency import time_to_reach, timeline  # noqa: E402


# The best mode's training before stage 2, counted whole: the fusions step fits the control too and
# trains the prior's text tower (the fusion's own "seconds" leave the tower out), so this errs against it.
BEFORE_STAGE2 = ("stage 1", "fusions (the prior and the control)")
INFERENCE = ("A-LLMRec best mode (as its LLM-path check left it)", "A-LLMRec best mode, LLM path forced on", "TALLRec")


def tallrec_config(res, steps: int, eval_every: int):
    """TALLRec on stage 2's examples: the same batch size, prompt sizes, seed and held-out users,
    every training user (not stage 2's sample), ``steps`` steps."""
    from allmrec.baselines.tallrec import TallrecConfig, stage2_sizes

    s2 = res.config.stage2()
    return TallrecConfig(**{**stage2_sizes(s2), "epochs": 10**6, "max_steps": steps, "max_train_users": None}, seed=s2.train.seed,
                         valid_users=s2.train.valid_users, eval_every=eval_every, checkpoint_every=eval_every)


def inference(recommenders: dict, res, users: np.ndarray) -> dict[str, dict[str, float]]:
    from allmrec.eval.evaluate import evaluate_users
    from allmrec.experiment.efficiency import time_inference

    out = {}
    for label, rec in recommenders.items():
        columns = {}
        out[label] = time_inference(lambda: columns.update(evaluate_users(rec, res.dataset, "test", users, "rank")), len(users))  # noqa: B023
        out[label]["hit@1"] = float((columns["rank"] == 0).mean())
        print(f"{time.strftime('%H:%M:%S')} inference {label}: {out[label]['seconds_per_user']:.4f} s per user", flush=True)
    return out


def ratio(slow: float | None, fast: float | None) -> float | None:
    return slow / fast if slow is not None and fast else None


def plot(path: Path, curves: dict[str, list[tuple[float, float]]], target: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for label, points in curves.items():
        ax.plot([t / 60 for t, _ in points], [h for _, h in points], marker="o", label=label)
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target: TALLRec's best ({target:.2f})")
    ax.set_xlabel("training minutes (validations excluded)")
    ax.set_ylabel("validation Hit@1 (held-out users)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "src" / "allmrec" / "configs" / "demo.yaml"))
    ap.add_argument("--data", default=None, help="a `sequences` folder (sets data.path); default: the config's dataset")
    ap.add_argument("--name", default="ml100k", help="names the results and the run folder")
    ap.add_argument("--run", default=None, help="run folder, emptied first (default runs/efficiency-<name>)")
    ap.add_argument("--tallrec-steps", type=int, default=400)
    ap.add_argument("--tallrec-eval-every", type=int, default=50)
    ap.add_argument("--test-users", type=int, default=50)
    ap.add_argument("--set", action="append", default=[], help="section.key=value overrides")
    ap.add_argument("--report-only", action="store_true", help="rewrite the summary, Markdown and plot of an earlier run's JSON")
    ap.add_argument("--warm-caches", action="store_true", help="keep $ALLMREC_HOME (a cached text tower or item encoding is then not training time)")
    args = ap.parse_args()
    if args.report_only:
        return report(ROOT / "benchmarks" / "results" / f"efficiency_{args.name}")
    run = Path(args.run or ROOT / "runs" / f"efficiency-{args.name}")
    shutil.rmtree(run, ignore_errors=True)  # every training time below is measured from nothing
    if not args.warm_caches:  # nor from what earlier runs cached (text towers, item encodings); the dataset and LLM conversion are timed apart
        os.environ["ALLMREC_HOME"] = str(run / "cache")

    import torch

    from allmrec.baselines.tallrec import tallrec_prompt_config, train_tallrec
    from allmrec.eval.report import machine_description
    from allmrec.llm.reader import PromptReader
    from allmrec.methods import get_method
    from allmrec.pipeline import steps
    from allmrec.pipeline.config import RunConfig
    from allmrec.pipeline.resources import Resources, RunFolder
    from allmrec.recommend.llm import LLMRecommender
    from allmrec.utils.io import read_json, write_json

    flags = {"data.path": str(Path(args.data).resolve())} if args.data else {}
    config, run_dir = RunConfig.layered(run, Path(args.config), flags, args.set)
    res = Resources(config, RunFolder(run_dir))
    s2 = config.stage2()
    if not (s2.train.valid_users and s2.train.eval_every):
        raise SystemExit("stage2.train.valid_users and stage2.train.eval_every must be set: they give the learning curves")
    seconds: dict[str, float] = {}
    load_at_start = os.getloadavg()
    timed(seconds, "prepare the dataset and load the LLM (not training)", lambda: (res.dataset, res.llm))
    timed(seconds, "CF model", lambda: steps.train_cf(res))
    timed(seconds, "stage 1", lambda: steps.align(res))
    timed(seconds, "fusions (the prior and the control)", lambda: steps.fuse(res))
    _, s2_state = timed(seconds, "stage 2", lambda: steps.train_stage2(res))

    llm, tok = res.llm
    tcfg = tallrec_config(res, args.tallrec_steps, args.tallrec_eval_every)
    tallrec_model, t_state = timed(seconds, "TALLRec (validations included)", lambda: train_tallrec(res.dataset, llm, tok, tcfg, run / "tallrec", progress=True))
    tallrec = timeline(t_state)

    users = steps.evaluation_users(res, "test", args.test_users)
    seed = config.eval().seed
    recs = {INFERENCE[0]: get_method("allmrec").build(res, seed), INFERENCE[1]: forced_llm_recommender(res),
            INFERENCE[2]: LLMRecommender(PromptReader(tallrec_model, tok, res.dataset.titles, res.dataset.wording, tallrec_prompt_config(tallrec_model), seed=seed))}
    infer = inference(recs, res, users)
    stage2_meta = read_json(res.folder.stage2 / "model.json")
    out = {
        "benchmark": f"efficiency_{args.name}", "data": f"{res.dataset.name} ({res.dataset.n_users} users, {res.dataset.n_items} items)",
        "caches": "warm ($ALLMREC_HOME kept)" if args.warm_caches else "empty (ALLMREC_HOME in the run folder)",
        "machine": machine_description(), "cpu_flags": cpu_flags(), "load_average_at_start": [round(x, 2) for x in load_at_start],
        "threads": f"torch default ({torch.get_num_threads()}), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
        "held_out_users": int(s2.train.valid_users), "batch_size": int(s2.train.batch_size),
        "stage2_llm_path": stage2_meta.get("llm_path"),
        "curves": {"TALLRec": tallrec, "A-LLMRec stage 2": timeline(s2_state)},
        "before_stage2_seconds": {k: seconds[k] for k in BEFORE_STAGE2},
        "tallrec": {"steps": int(t_state["step"]), "seconds": float(t_state["seconds"]), "seconds_per_step": float(t_state["seconds"]) / max(int(t_state["step"]), 1),
                    "config": dataclasses.asdict(tcfg)},
        "stage2": {"steps": int(s2_state["step"]), "seconds": float(s2_state["seconds"])},
        "inference": infer, "seconds": seconds, "config": config.values,
    }
    dest = ROOT / "benchmarks" / "results" / f"efficiency_{args.name}"
    write_json(dest.with_suffix(".json"), out)
    report(dest)


def best_mode_timeline(out: dict) -> list[tuple[float, float]]:
    """Stage 2's curve shifted by the best mode's training before it (stage 1 and the fusions)."""
    offset = sum(out["before_stage2_seconds"].values())
    return [(t + offset, hit) for t, hit in out["curves"]["A-LLMRec stage 2"]]


def summarize(out: dict) -> dict:
    """The target (TALLRec's best validation Hit@1), each method's training time to it and the
    ratios, from the measured curves, step times and inference times."""
    tallrec, best = out["curves"]["TALLRec"], best_mode_timeline(out)
    cf = out["seconds"]["CF model"]
    target = max(h for _, h in tallrec)
    t_tallrec, t_best = time_to_reach(tallrec, target), time_to_reach(best, target)
    whole = best[-1][0] if best[-1][1] >= target else None  # the shipped model exists once stage 2 ends
    shipped, forced, lora = (out["inference"][k]["seconds_per_user"] for k in INFERENCE)
    return {
        "target": {"what": "the best validation Hit@1 TALLRec reached", "hit@1": target, "TALLRec improved on its base LLM": target > tallrec[0][1]},
        "time_to_target_seconds": {"TALLRec": t_tallrec, "A-LLMRec best mode (stage 1 + fusion + stage 2 to the first point at the target)": t_best,
                                   "A-LLMRec best mode, its whole training (stage 2 to its end)": whole,
                                   "A-LLMRec best mode, its whole training and the CF model's": None if whole is None else whole + cf},
        "ratios": {
            "training to the target: TALLRec / best mode": ratio(t_tallrec, t_best),
            "training to the target: TALLRec / best mode's whole training": ratio(t_tallrec, whole),
            "training to the target: TALLRec / best mode's whole training and its CF model's": ratio(t_tallrec, None if whole is None else whole + cf),
            "inference: TALLRec / best mode as left by its check": ratio(lora, shipped),
            "inference: TALLRec / best mode with the LLM path forced on": ratio(lora, forced),
        },
    }


def report(dest: Path) -> None:
    """Add the summary to the results JSON and write its Markdown table and plot."""
    from allmrec.utils.io import read_json, write_json

    out = read_json(dest.with_suffix(".json"))
    out.update(summarize(out))
    write_json(dest.with_suffix(".json"), out)
    tallrec, best = out["curves"]["TALLRec"], best_mode_timeline(out)
    target, t = out["target"]["hit@1"], list(out["time_to_target_seconds"].values())
    r = list(out["ratios"].values())
    shipped, forced, lora = (out["inference"][k]["seconds_per_user"] for k in INFERENCE)
    fmt = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    minutes = lambda x: None if x is None else x / 60  # noqa: E731
    md = [f"# Efficiency against TALLRec: {out['data']}, one process", "",
          f"Target: TALLRec's best validation Hit@1 on {out['held_out_users']} held-out users, {target:.3f} "
          f"({'above' if out['target']['TALLRec improved on its base LLM'] else 'not above'} its base LLM's {tallrec[0][1]:.3f}).", "",
          "| | TALLRec | A-LLMRec best mode | TALLRec / best mode |", "|---|---|---|---|",
          f"| training minutes to the target | {fmt(minutes(t[0]))} | {fmt(minutes(t[1]))} | {fmt(r[0], 1)}x |",
          f"| the same, counting the best mode's whole training | | {fmt(minutes(t[2]))} (+{out['seconds']['CF model'] / 60:.1f} for the CF model) "
          f"| {fmt(r[1], 1)}x ({fmt(r[2], 1)}x with the CF model) |",
          f"| final validation Hit@1 (training minutes) | {tallrec[-1][1]:.3f} ({tallrec[-1][0] / 60:.1f}) | {best[-1][1]:.3f} ({best[-1][0] / 60:.1f}) | |",
          f"| inference, s per user, as shipped | {lora:.3f} | {shipped:.4f} | {fmt(r[3], 0)}x |",
          f"| inference, s per user, LLM path forced on | {lora:.3f} | {forced:.3f} | {fmt(r[4], 2)}x |", "",
          f"Test Hit@1 on the {out['inference'][INFERENCE[2]]['users']} inference users: "
          + ", ".join(f"{k} {v['hit@1']:.2f}" for k, v in out["inference"].items()) + ".", "",
          f"Machine: {out['machine']}; CPU flags: {out['cpu_flags']}; {out['threads']}; caches {out.get('caches', '?')}. Step wall times (s): {out['seconds']}."]
    dest.with_suffix(".md").write_text("\n".join(md) + "\n")
    plot(dest.with_suffix(".png"), {"TALLRec": tallrec, "A-LLMRec best mode (stage 1, fusions, then stage 2)": best}, target, out["data"])
    print("\n".join(md))

if __name__ == "__main__":
    main()
