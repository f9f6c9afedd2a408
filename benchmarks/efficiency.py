"""Efficiency against TALLRec (paper Table 8), in one process on one machine: training time *to
the same validation Hit@1*, and inference time per user.

    python benchmarks/efficiency.py [--config src/allmrec/configs/demo.yaml] [--name ml100k] \\
        [--tallrec-steps 300] [--tallrec-eval-every 50] [--test-users 50] [--set section.key=value]

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


def tallrec_config(res, steps: int, eval_every: int):
    """TALLRec on stage 2's examples: the same batch size, prompt sizes, seed and held-out users."""
    from allmrec.baselines.tallrec import TallrecConfig

    s2 = res.config.stage2()
    return TallrecConfig(batch_size=s2.train.batch_size, epochs=10**6, max_steps=steps, history_len=s2.model.history_len, n_candidates=s2.train.n_candidates,
                         max_title_tokens=s2.model.max_title_tokens, seed=s2.train.seed, valid_users=s2.train.valid_users, eval_every=eval_every,
                         checkpoint_every=eval_every)


def inference(recommenders: dict, res, users: np.ndarray) -> dict[str, dict[str, float]]:
    from allmrec.eval.evaluate import evaluate_users

    out = {}
    for label, rec in recommenders.items():
        t0 = time.perf_counter()
        ranks = evaluate_users(rec, res.dataset, "test", users, "rank")["rank"]
        seconds = time.perf_counter() - t0
        out[label] = {"seconds_per_user": seconds / len(users), "users": int(len(users)), "hit@1": float((ranks == 0).mean())}
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
    ap.add_argument("--tallrec-steps", type=int, default=300)
    ap.add_argument("--tallrec-eval-every", type=int, default=50)
    ap.add_argument("--test-users", type=int, default=50)
    ap.add_argument("--set", action="append", default=[], help="section.key=value overrides")
    args = ap.parse_args()

    from allmrec.baselines.tallrec import tallrec_prompt_config, train_tallrec
    from allmrec.eval.report import machine_description
    from allmrec.llm.reader import PromptReader
    from allmrec.methods import get_method
    from allmrec.pipeline import steps
    from allmrec.pipeline.config import RunConfig
    from allmrec.pipeline.resources import Resources, RunFolder
    from allmrec.recommend.llm import LLMRecommender
    from allmrec.utils.io import read_json, write_json

    run = Path(args.run or ROOT / "runs" / f"efficiency-{args.name}")
    shutil.rmtree(run, ignore_errors=True)  # every training time below is measured from nothing (the dataset and text caches may be warm)
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
    fusion_seconds = float(read_json(res.folder.fusion / "fusion" / "model.json")["seconds"]["total"])
    _, s2_state = timed(seconds, "stage 2", lambda: steps.train_stage2(res))
    best = timeline(s2_state, offset=seconds["stage 1"] + fusion_seconds)

    llm, tok = res.llm
    tcfg = tallrec_config(res, args.tallrec_steps, args.tallrec_eval_every)
    tallrec_model, t_state = timed(seconds, "TALLRec (validations included)", lambda: train_tallrec(res.dataset, llm, tok, tcfg, run / "tallrec", progress=True))
    tallrec = timeline(t_state)

    target = max(h for _, h in tallrec)
    t_tallrec, t_best = time_to_reach(tallrec, target), time_to_reach(best, target)
    improved = target > tallrec[0][1]  # the first point is the base LLM, before any step
    best_final = best[-1][1]

    users = steps.evaluation_users(res, "test", args.test_users)
    seed = config.eval().seed
    recs = {"A-LLMRec best mode (as its LLM-path check left it)": get_method("allmrec").build(res, seed),
            "A-LLMRec best mode, LLM path forced on": forced_llm_recommender(res),
            "TALLRec": LLMRecommender(PromptReader(tallrec_model, tok, res.dataset.titles, res.dataset.wording, tallrec_prompt_config(tallrec_model), seed=seed))}
    infer = inference(recs, res, users)
    t_user = {k: v["seconds_per_user"] for k, v in infer.items()}
    labels = list(recs)

    stage2_meta = read_json(res.folder.stage2 / "model.json")
    out = {
        "benchmark": f"efficiency_{args.name}", "data": f"{res.dataset.name} ({res.dataset.n_users} users, {res.dataset.n_items} items)",
        "machine": machine_description(), "cpu_flags": cpu_flags(), "load_average_at_start": [round(x, 2) for x in load_at_start],
        "threads": f"torch default ({__import__('torch').get_num_threads()}), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
        "held_out_users": int(s2.train.valid_users), "batch_size": int(s2.train.batch_size),
        "target": {"what": "the best validation Hit@1 TALLRec reached", "hit@1": target, "TALLRec improved on its base LLM": bool(improved)},
        "time_to_target_seconds": {"TALLRec": t_tallrec, "A-LLMRec best mode (stage 1 + fusion + stage 2)": t_best,
                                   "A-LLMRec best mode, the CF model's training counted too": None if t_best is None else t_best + seconds["CF model"]},
        "ratios": {
            "training to the target: TALLRec / best mode": ratio(t_tallrec, t_best),
            "training to the target: TALLRec / best mode with the CF model's training": ratio(t_tallrec, None if t_best is None else t_best + seconds["CF model"]),
            "whole training: TALLRec's steps / best mode's stage 1 + fusion + stage 2": ratio(tallrec[-1][0], best[-1][0]),
            "inference: TALLRec / best mode as left by its check": ratio(t_user["TALLRec"], t_user[labels[0]]),
            "inference: TALLRec / best mode with the LLM path forced on": ratio(t_user["TALLRec"], t_user[labels[1]]),
        },
        "final_validation_hit@1": {"TALLRec": tallrec[-1][1], "A-LLMRec best mode (curve, LLM path on)": best_final,
                                   "A-LLMRec LLM-path check": stage2_meta.get("llm_path")},
        "curves": {"TALLRec": tallrec, "A-LLMRec best mode": best},
        "tallrec": {"steps": int(t_state["step"]), "seconds": float(t_state["seconds"]), "seconds_per_step": float(t_state["seconds"]) / max(int(t_state["step"]), 1),
                    "config": dataclasses.asdict(tcfg)},
        "stage2": {"steps": int(s2_state["step"]), "seconds": float(s2_state["seconds"]), "fusion_fit_seconds": fusion_seconds},
        "inference": infer, "seconds": seconds, "config": config.values,
    }
    name = f"efficiency_{args.name}"
    dest = ROOT / "benchmarks" / "results" / name
    write_json(dest.with_suffix(".json"), out)
    r_target, r_target_cf, r_whole, r_infer, r_forced = out["ratios"].values()
    fmt = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    minutes = lambda t: None if t is None else t / 60  # noqa: E731
    md = [f"# Efficiency against TALLRec: {out['data']}, one process", "",
          f"Target: TALLRec's best validation Hit@1 on {s2.train.valid_users} held-out users, {target:.3f} "
          f"({'above' if improved else 'not above'} its base LLM's {tallrec[0][1]:.3f}).", "",
          "| | TALLRec | A-LLMRec best mode | TALLRec / best mode |", "|---|---|---|---|",
          f"| training minutes to the target | {fmt(minutes(t_tallrec))} | {fmt(minutes(t_best))} (+{seconds['CF model'] / 60:.1f} for the CF model) "
          f"| {fmt(r_target, 1)}x ({fmt(r_target_cf, 1)}x with the CF model) |",
          f"| whole training, minutes (final validation Hit@1) | {tallrec[-1][0] / 60:.1f} ({tallrec[-1][1]:.3f}) | {best[-1][0] / 60:.1f} ({best_final:.3f}) | {fmt(r_whole, 1)}x |",
          f"| inference, s per user, as shipped | {t_user['TALLRec']:.3f} | {t_user[labels[0]]:.4f} | {fmt(r_infer, 0)}x |",
          f"| inference, s per user, LLM path forced on | {t_user['TALLRec']:.3f} | {t_user[labels[1]]:.3f} | {fmt(r_forced, 2)}x |", "",
          f"Test Hit@1 on the {len(users)} inference users: " + ", ".join(f"{k} {v['hit@1']:.2f}" for k, v in infer.items()) + ".", "",
          f"Machine: {out['machine']}; CPU flags: {out['cpu_flags']}; {out['threads']}. Step wall times (s): {seconds}."]
    dest.with_suffix(".md").write_text("\n".join(md) + "\n")
    plot(dest.with_suffix(".png"), {"TALLRec": tallrec, "A-LLMRec best mode": best}, target, out["data"])
    print("\n".join(md))


if __name__ == "__main__":
    main()
