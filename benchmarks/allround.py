"""The all-round comparison on one dataset: SASRec, MoRec, text similarity, the no-LLM control
(SASRec + text), the fusion and A-LLMRec's best mode, on the same seeded test users.

    python benchmarks/allround.py --data ../shared/data/amazon-beauty \\
        [--name beauty] [--run runs/allround-beauty] [--users 2000] [--llm-users 300] \\
        [--set dataset=my_data.yaml] [--set section.key=value]

Any folder in the ``sequences`` format of ../shared/data/amazon-beauty works with ``--data``;
any other reader through ``--set dataset=<data YAML>`` (``allmrec.data``), with ``--data`` naming
its files (it overrides the YAML's ``path``). Every model trains
through ``allmrec.pipeline`` (each step resumes): SASRec, stage 1, the fusions (``allmrec fuse``:
every choice on validation items of training users) and stage 2 in ``--run``; MoRec in
``--run``-morec, in a second process beside SASRec (both CF trainers use one thread: their ops
are too small to gain from two). All are scored on the stored 1 + 19 test candidates of
``--users`` seeded test users (the ``allmrec evaluate`` sample, seed 2024). Reported: Hit@1 with
Wilson intervals overall and for cold / warm test items (bottom / top 35% of items by training
count), paired-bootstrap differences of Hit@1 against SASRec, MoRec and the control, the stage-2
LLM-path check, A-LLMRec with its LLM path forced on the first ``--llm-users`` of the users,
full-catalogue Recall/NDCG@10/20 (SASRec retrieves 100, each method re-ranks them) and every
step's wall time. Writes ``benchmarks/results/allround_<name>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from allmrec.data import get_scenario
from allmrec.data.queries import Queries
from allmrec.eval.metrics import catalogue_metrics, hit_interval, metrics_from_columns, paired_bootstrap, target_ranks
from allmrec.eval.report import machine_description, markdown_table
from allmrec.pipeline import steps
from allmrec.pipeline.config import RunConfig
from allmrec.pipeline.resources import Resources, RunFolder
from allmrec.utils.io import write_json

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("overall", "cold_items", "warm_items")
RETRIEVED = 100  # items SASRec retrieves from the whole catalogue for the re-rankers


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none of avx2/avx512/amx"


def timed(seconds: dict[str, float], name: str, fn):
    t0 = time.perf_counter()
    out = fn()
    seconds[name] = round(time.perf_counter() - t0, 1)
    print(f"{time.strftime('%H:%M:%S')} {name}: {seconds[name]:.0f} s", flush=True)
    return out


def forced_llm_recommender(res: Resources):
    """A-LLMRec with its LLM path on, whatever the stage-2 check decided."""
    from allmrec.align.stage2.scoring import Stage2Scorer
    from allmrec.llm.reader import PromptReader
    from allmrec.recommend.llm import LLMRecommender

    stage2, (llm, tok), ds = res.stage2, res.llm, res.dataset
    scorer = Stage2Scorer(stage2, res.trained_item_table(), res.cf, prior=res.fusion)
    return LLMRecommender(PromptReader(llm, tok, ds.titles, ds.wording, stage2.prompt_config(), scorer, seed=res.config.eval().seed, progress=True))


def catalogue(res: Resources, users: np.ndarray, recommenders: dict[str, object]) -> dict[str, dict[str, float]]:
    """Full-catalogue metrics: SASRec's top ``RETRIEVED`` items re-ranked by each recommender."""
    from allmrec.cf.evaluate import top_items

    queries = Queries.from_split(res.dataset, "test", users)
    k = min(RETRIEVED, res.dataset.n_items - max(len(h) for h in queries.histories))
    items, _ = top_items(res.cf, queries.users, queries.histories, k)
    truths = np.array([res.dataset.target(int(u), "test") for u in users])
    retrieved = Queries(queries.users, queries.histories, items, queries.keys)
    out = {}
    for label, rec in recommenders.items():
        order = rec.rank(retrieved)
        out[label] = catalogue_metrics(np.take_along_axis(items, order, 1), truths)
    out[f"retrieval: SASRec's top {k}"] = catalogue_metrics(items, truths, ks=(k,))
    return out


# The config sections the paper-mode row depends on: its data, users, CF model, stage 1 and LLM.
PAPER_ROW_SECTIONS = ("dataset", "data", "cf", "text_encoder", "stage1", "llm", "eval")


def carry_paper_subset(path: Path, out: dict, sasrec_ranks: np.ndarray) -> None:
    """Keep the paper-mode row (``allround_paper_subset.py``, 35 min) of an earlier run made with
    the same data, users, CF model, stage 1 and LLM, with SASRec's Hit@1 on its users in this run:
    equal to its own when the runs agree."""
    if not path.exists() or "paper_mode_subset" not in (old := json.loads(path.read_text())):
        return
    changed = [k for k in PAPER_ROW_SECTIONS if old.get("config", {}).get(k) != out["config"].get(k)]
    if changed:
        print(f"the paper-mode row of {path} is not carried over: it was made with other {', '.join(changed)}; "
              "run benchmarks/allround_paper_subset.py on this run", flush=True)
        return
    subset = dict(old["paper_mode_subset"])
    n = int(subset["users"])
    subset["carried over"] = {"from": "an earlier run of this benchmark", "SASRec hit@1 on its users in this run": float((sasrec_ranks[:n] == 0).mean())}
    out["paper_mode_subset"] = subset


def plot(path: Path, table: dict[str, dict[str, dict]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        vals = [table[label][s].get("hit@1", 0.0) for s in SCENARIOS]  # a scenario with no users has none
        errs = np.array([[v - table[label][s]["hit@1_ci"][0], table[label][s]["hit@1_ci"][1] - v] for s, v in zip(SCENARIOS, vals)]).T
        ax.bar(np.arange(3) + k * width, vals, width, yerr=errs, capsize=2, label=label)
    ax.set_xticks(np.arange(3) + 0.4 - width / 2, ["all test users", "cold test items", "warm test items"])
    ax.set_ylabel("Hit@1 (1 + 19 candidates)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_config(args: argparse.Namespace, run: str) -> tuple[RunConfig, Path]:
    flags = {"data.path": str(Path(args.data).resolve()), "eval.max_users": args.users}
    return RunConfig.layered(Path(run), Path(args.config), flags, args.set)


def morec_resources(args: argparse.Namespace, dataset=None) -> Resources:
    config, run_dir = run_config(args, f"{args.run}-morec")
    config = config.with_values({"cf": {"backbone": "morec"}, "eval": {"methods": ["cf"]}})
    return Resources(config, RunFolder(run_dir), dataset=dataset)


def train_morec(args: argparse.Namespace, seconds) -> None:
    """MoRec's training, run in its own process beside SASRec's (one core each)."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    steps.train_cf(morec_resources(args))
    seconds.value = time.perf_counter() - t0


def train_cf_models(args: argparse.Namespace, res: Resources, seconds: dict[str, float]) -> None:
    """SASRec here and MoRec in a second process at once; stage 1 to 2 start when SASRec is done."""
    import multiprocessing

    res.dataset  # prepared once, before the second process reads the same cache
    ctx = multiprocessing.get_context("spawn")
    morec_seconds = ctx.Value("d", float("nan"))
    proc = ctx.Process(target=train_morec, args=(args, morec_seconds), name="train MoRec")
    proc.start()
    try:
        timed(seconds, "train SASRec", lambda: steps.train_cf(res))
        timed(seconds, "stage 1", lambda: steps.align(res))
        timed(seconds, "fusions", lambda: steps.fuse(res))
        timed(seconds, "stage 2", lambda: steps.train_stage2(res))
        timed(seconds, "waiting for MoRec", proc.join)
    finally:
        if proc.is_alive():
            proc.terminate()
    if proc.exitcode != 0:
        raise SystemExit(f"MoRec's training failed (exit code {proc.exitcode}); run again to resume it")
    seconds["train MoRec (beside the above)"] = round(morec_seconds.value, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-beauty"), help="the dataset folder")
    ap.add_argument("--name", default=None, help="names the results and the run folder (default: the folder's name without 'amazon-')")
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "configs" / "allround_cpu.yaml"))
    ap.add_argument("--run", default=None, help="run folder (default runs/allround-<name>)")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--llm-users", type=int, default=300, help="test users scored with the LLM path forced on (0: skip)")
    ap.add_argument("--set", action="append", default=[], help="section.key=value overrides")
    ap.add_argument("--out", default=None, help="results path without suffix (default benchmarks/results/allround_<name>)")
    args = ap.parse_args()
    name = args.name or Path(args.data).resolve().name.removeprefix("amazon-")
    args.run = args.run or str(ROOT / "runs" / f"allround-{name}")
    args.out = args.out or str(ROOT / "benchmarks" / "results" / f"allround_{name}")

    config, run_dir = run_config(args, args.run)
    res = Resources(config, RunFolder(run_dir))
    seconds: dict[str, float] = {}
    load_at_start = os.getloadavg()  # anything else on the machine slows every step below
    t_all = time.perf_counter()
    train_cf_models(args, res, seconds)
    morec = morec_resources(args, dataset=lambda: res.dataset)
    results = timed(seconds, "evaluate", lambda: steps.evaluate(res))
    morec_results = timed(seconds, "evaluate MoRec", lambda: steps.evaluate(morec))

    ds, users = res.dataset, np.asarray(results["per_user"]["users"])
    masks = {s: np.isin(users, get_scenario(ds, s).eval_users) for s in SCENARIOS}
    ranks = {results["labels"][m]: np.asarray(results["per_user"][m]["rank"]) for m in config.eval().methods}
    ranks["MoRec"] = np.asarray(morec_results["per_user"]["cf"]["rank"])
    assert morec_results["per_user"]["users"] == results["per_user"]["users"]
    table = {label: {s: {**metrics_from_columns({"rank": r[m]}), "hit@1_ci": list(hit_interval(r[m] == 0))} for s, m in masks.items()} for label, r in ranks.items()}
    refs = [results["labels"]["cf"], "MoRec", results["labels"]["cf-text"], results["labels"]["fusion"]]
    paired = {label: {f"vs {ref}": {s: paired_bootstrap(r[m] == 0, ranks[ref][m] == 0) for s, m in masks.items() if m.any()} for ref in refs if ref != label}
              for label, r in ranks.items()}

    stage2_meta = json.loads((res.folder.stage2 / "model.json").read_text())
    forced = {}
    if args.llm_users:
        from allmrec.eval.evaluate import evaluate_users

        sub = users[: args.llm_users]
        cols = timed(seconds, "A-LLMRec, LLM path forced", lambda: evaluate_users(forced_llm_recommender(res), ds, "test", sub))
        fusion_sub = ranks[results["labels"]["fusion"]][: args.llm_users]
        forced = {"users": int(len(sub)), "hit@1": float((cols["rank"] == 0).mean()), "hit@1_fusion_same_users": float((fusion_sub == 0).mean()),
                  "vs fusion": paired_bootstrap(cols["rank"] == 0, fusion_sub == 0), "seconds_per_user": round(seconds["A-LLMRec, LLM path forced"] / len(sub), 3)}

    from allmrec.methods import get_method
    from allmrec.recommend.cf import CFRecommender

    rerankers = {results["labels"]["cf"]: CFRecommender(res.cf), "MoRec": CFRecommender(morec.cf)}
    rerankers.update({results["labels"][m]: get_method(m).build(res, 0) for m in ("text-sim", "cf-text", "fusion")})
    full = timed(seconds, "full-catalogue re-ranking", lambda: catalogue(res, users, rerankers))
    seconds["total"] = round(time.perf_counter() - t_all, 1)

    out = {"benchmark": f"allround_{name}", "data": f"{ds.name} from {Path(args.data).resolve()} ({ds.n_users} users, {ds.n_items} items)", "split": "test",
           "users": int(len(users)), "user_seed": config.eval().seed, "scenario_users": {s: int(m.sum()) for s, m in masks.items()},
           "machine": machine_description(), "cpu_flags": cpu_flags(), "threads": "SASRec and MoRec 1 each, side by side; the rest torch's default (OMP_WAIT_POLICY=PASSIVE)",
           "methods": table, "paired_hit@1": paired, "stage2_llm_path": stage2_meta.get("llm_path"), "llm_path_forced": forced,
           "catalogue": full, "seconds": seconds,
           "seconds_per_user": {results["labels"][m]: results["methods"][m]["seconds_per_user"] for m in config.eval().methods},
           "config": config.values, "load_average_at_start": [round(x, 2) for x in load_at_start],
           "note": "wall times of this run on the 2 cores: MoRec trains in a second process beside SASRec, stage 1, the fusions and stage 2"}
    fusion_meta = json.loads((res.folder.fusion / "fusion" / "model.json").read_text())
    out["fusion"] = {k: fusion_meta[k] for k in ("beta", "beta_criterion", "fit_users", "es_users", "fits", "seconds") if k in fusion_meta}
    dest = Path(args.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    carry_paper_subset(dest.with_suffix(".json"), out, ranks[results["labels"]["cf"]])
    write_json(dest.with_suffix(".json"), out)
    rows = {f"{label} / {s}": {**table[label][s], **({"vs SASRec": "{diff:+.4f} [{low:+.4f}, {high:+.4f}]".format(**paired[label][f'vs {refs[0]}'][s])}
                                                       if s in paired[label].get(f"vs {refs[0]}", {}) else {})} for label in table for s in SCENARIOS}
    md = [f"# All-round comparison: {out['data']}, {len(users)} seeded test users, 1 + 19 candidates", "",
          markdown_table(rows, ["hit@1", "ndcg@10", "mrr", "vs SASRec", "users"]), "",
          f"Stage-2 LLM path: {json.dumps(stage2_meta.get('llm_path'))}", "", f"LLM path forced on {forced.get('users', 0)} users: {json.dumps(forced)}", "",
          "Full catalogue (SASRec retrieves 100, each method re-ranks):", "", markdown_table(full, ["recall@10", "ndcg@10", "recall@20", "ndcg@20", f"recall@{RETRIEVED}"]), "",
          f"Machine: {out['machine']}; CPU flags: {out['cpu_flags']}. Step wall times (s): {seconds}."]
    dest.with_suffix(".md").write_text("\n".join(md) + "\n")
    plot(dest.with_suffix(".png"), table, f"{ds.name}, {len(users)} seeded test users (95% Wilson intervals)")
    print("\n".join(md))


if __name__ == "__main__":
    main()
