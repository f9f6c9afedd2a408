"""Issue 5's benchmark: the best stage-2 mode vs SASRec vs the paper-faithful mode on Amazon Beauty.

    python benchmarks/stage2_modes_beauty.py --best runs/s5/A --paper runs/bench-allmrec-beauty \
        [--users 2000] [--paper-users 300] [--curves runs/s5/A runs/s5/B ...]

* One seeded random sample of ``--users`` test users (training users with a test item, drawn
  with the pipeline's own ``eval_users``), their stored 1 + 19 candidates; SASRec and the best
  mode score all of them; the paper-faithful mode (title likelihood ranking, ~1.5 s per user on
  2 cores) a seeded subset of ``--paper-users`` of them. Cold / warm items: the bottom / top 35 %
  of items by training count (``allmrec.data.scenarios.item_groups``), by the test item.
* 95 % Wilson intervals per figure, and a paired bootstrap interval of the Hit@1 difference
  best mode - SASRec on the same users.
* Ranks are saved per chunk of users under ``<best run>/bench-stage2-modes/`` so an interrupted
  run resumes; outputs: ``benchmarks/results/stage2_modes_beauty.{json,md}`` and
  ``stage2_curves_beauty.png`` (validation Hit@1 against stage-2 steps for every ``--curves`` run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from allmrec.eval.metrics import hit_interval, ranking_metrics, target_ranks
from allmrec.eval.report import machine_description
from allmrec.pipeline import Pipeline
from allmrec.utils.io import read_json, write_json
from allmrec.utils.seed import rng

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 250


def llm_ranks(pipe: Pipeline, ds, users: np.ndarray, cache: Path, label: str) -> np.ndarray:
    """Ranks of the truth for ``users`` with the run's stage-2 model, resumable per chunk."""
    from allmrec.align import load_stage2
    from allmrec.recommend import InferenceConfig, evaluate_llm

    cache.mkdir(parents=True, exist_ok=True)
    llm, tok = pipe.load_llm()
    cf = pipe.load_cf()
    stage2 = load_stage2(pipe.stage2_dir, llm=llm, cf_model=cf)
    joint = pipe.item_table(cf)
    opts = pipe.eval_options()
    out = []
    for start in range(0, len(users), CHUNK):
        part = users[start : start + CHUNK]
        path = cache / f"{label}-{start:06d}.json"
        if path.exists() and read_json(path)["users"] == part.tolist():
            out.append(np.asarray(read_json(path)["ranks"], dtype=np.int64))
            continue
        t0 = time.perf_counter()
        _, rows = evaluate_llm(ds, llm, tok, "test", part, stage2=stage2, cf_model=cf, joint_items=joint,
                               config=InferenceConfig(mode="rank", seed=opts.seed, progress=True))
        ranks = np.array([r["rank"] for r in rows], dtype=np.int64)
        write_json(path, {"users": part.tolist(), "ranks": ranks.tolist(), "seconds": time.perf_counter() - t0})
        out.append(ranks)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def best_ranks(pipe: Pipeline, ds, users: np.ndarray, cache: Path, states_only: bool = False) -> np.ndarray | None:
    """Ranks with the listwise model with frozen projectors. Its LLM states do not depend on the
    trained head, so they are computed (and saved per chunk) before or while the head trains;
    ``states_only`` stops there. Prompts are built exactly as ``evaluate_llm`` builds them (a
    check against it on the first users runs once the model exists)."""
    import torch
    from safetensors.torch import load_file, save_file

    from allmrec.align import Stage2Model, load_stage2
    from allmrec.align.stage2 import cf_candidate_scores, user_representations
    from allmrec.llm import build_prompt, display_titles
    from allmrec.llm.loading import hidden_size
    from allmrec.recommend.inference import display_order

    cfg = pipe.stage2_config()
    if cfg.objective != "listwise" or cfg.train_projectors or cfg.soft_norm:
        raise ValueError("best_ranks expects a listwise run with frozen projectors and no soft_norm")
    llm, tok = pipe.load_llm()
    cf = pipe.load_cf()
    joint = pipe.item_table(cf)
    frozen = Stage2Model(cf.dim, joint.shape[1], hidden_size(llm), seed=cfg.seed, head_width=cfg.head_width)
    trained = load_stage2(pipe.stage2_dir, llm=llm, cf_model=cf) if (pipe.stage2_dir / "model.json").exists() else None
    if trained is not None:
        for name in ("user_proj", "item_proj"):
            for a, b in zip(getattr(frozen, name).state_dict().values(), getattr(trained, name).state_dict().values()):
                assert torch.equal(a, b), "the trained model's projectors differ from the seeded frozen ones"
    titles = display_titles(ds.titles, tok, cfg.max_title_tokens)
    pcfg = cfg.prompt_config()
    seed = pipe.eval_options().seed
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for start in range(0, len(users), CHUNK):
        part = users[start : start + CHUNK]
        path = cache / f"states-{start:06d}.safetensors"
        if not path.exists():
            t0 = time.perf_counter()
            hists = [ds.history(int(u), "test") for u in part]
            cands = ds.test_candidates[part]
            perms = np.stack([display_order(c, seed, f"test:{int(u)}") for u, c in zip(part, cands)])
            shown = np.stack([c[p] for c, p in zip(cands, perms)])
            x = user_representations(cf, part, hists)
            hc, hl = [], []
            with torch.no_grad():
                for k in range(len(part)):
                    a, b = frozen.listwise_states(llm, tok, [build_prompt(hists[k], shown[k], titles, ds.wording, pcfg)], x[k : k + 1], joint)
                    hc.append(a[0])
                    hl.append(b[0])
            save_file({"h_cand": torch.stack(hc).contiguous(), "h_last": torch.stack(hl).contiguous(), "perms": torch.as_tensor(perms),
                       "cf": cf_candidate_scores(cf, part, hists, shown), "users": torch.as_tensor(part)}, str(path))
            write_json(path.with_suffix(".json"), {"users": len(part), "seconds": time.perf_counter() - t0})
            print(f"states {start}..{start + len(part)}: {time.perf_counter() - t0:.0f} s", flush=True)
        if states_only:
            continue
        if trained is None:
            raise FileNotFoundError(f"no trained stage-2 model in {pipe.stage2_dir}")
        t = load_file(str(path))
        assert t["users"].tolist() == part.tolist()
        with torch.no_grad():
            sc = trained.score_states(t["h_cand"], t["h_last"], t["cf"] if trained.residual else None).float().numpy()
        perms = t["perms"].numpy()
        scores = np.empty_like(sc)
        for r in range(len(part)):
            scores[r, perms[r]] = sc[r]
        out.append(target_ranks(scores))
    if states_only:
        return None
    ranks = np.concatenate(out)
    # The same ranks as the library's own evaluation path on the first users.
    from allmrec.recommend import InferenceConfig, evaluate_llm

    _, rows = evaluate_llm(ds, llm, tok, "test", users[:10], stage2=trained, cf_model=cf, joint_items=joint, config=InferenceConfig(mode="rank", seed=seed))
    assert [r["rank"] for r in rows] == ranks[:10].tolist(), "cached-state ranks differ from evaluate_llm"
    return ranks


def summary(ranks: np.ndarray) -> dict[str, float]:
    m = ranking_metrics(ranks)
    hits = ranks == 0
    m["hit@1_ci95"] = list(hit_interval(hits))
    m["users"] = int(len(ranks))
    return m


def paired_bootstrap(a_hits: np.ndarray, b_hits: np.ndarray, n: int = 10000, seed: int = 0) -> list[float]:
    """95 % interval of mean(a) - mean(b) over users resampled with replacement."""
    gen = np.random.default_rng(seed)
    idx = gen.integers(0, len(a_hits), size=(n, len(a_hits)))
    diffs = a_hits[idx].mean(1) - b_hits[idx].mean(1)
    return [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))]


def plot_curves(runs: list[str], out: Path, baseline: float | None = None) -> None:
    """Validation Hit@1 and NDCG@10 against steps; ``runs`` are run folders, optionally
    ``label=folder``. Step 0 of a residual run is the CF model itself (the head starts at zero)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for spec in runs:
        label, _, path = str(spec).rpartition("=")
        run = Path(path)
        meta = run / "stage2" / "model.json"
        if meta.exists():
            state = read_json(meta).get("trainer_state", {})
        else:
            latest = read_json(run / "stage2" / "latest.json")
            state = read_json(run / "stage2" / latest["path"] / "trainer_state.json")
        curve = state.get("curve") or []
        for ax, col in zip(axes, (1, 2)):
            if curve:
                ax.plot([c[0] for c in curve], [c[col] for c in curve], marker="o", ms=3, label=label or run.name)
                ax.axhline(curve[0][col], color="grey", ls="--", lw=1, label="step 0 = SASRec alone")
    for ax, name in zip(axes, ("Hit@1", "NDCG@10")):
        ax.set_xlabel("stage-2 steps (batch 4; 500 steps = 1 epoch of 2,000 users)")
        ax.set_ylabel(f"validation {name} (200 held-out users)")
        ax.legend(fontsize=8)
    fig.suptitle("Amazon Beauty: best-mode stage-2 learning curve")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--best", required=True, help="run folder of the best mode (listwise stage 2)")
    ap.add_argument("--paper", default=None, help="run folder of the paper-faithful mode (LM stage 2)")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--paper-users", type=int, default=300)
    ap.add_argument("--curves", nargs="*", default=[], help="run folders (or label=folder) whose stage-2 learning curves to plot")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--states-only", action="store_true", help="only compute and save the best mode's LLM states of the test users")
    ap.add_argument("--paper-only", action="store_true", help="only score the paper-faithful subset (resumable cache)")
    args = ap.parse_args()

    from allmrec.cf import score_candidates
    from allmrec.data.scenarios import item_groups

    t_start = time.perf_counter()
    best = Pipeline.from_sources(run=Path(args.best))
    ds = best.prepare()
    users = best.eval_users(ds, "test", args.users)
    cache = Path(args.best) / "bench-stage2-modes"
    if args.states_only:
        best_ranks(best, ds, users, cache, states_only=True)
        return
    sub = np.sort(rng(0, "paper-subset").choice(np.arange(len(users)), size=min(args.paper_users, len(users)), replace=False))
    if args.paper_only:
        llm_ranks(Pipeline.from_sources(run=Path(args.paper)), ds, users[sub], cache, "paper")
        return
    cf = best.load_cf()
    sas = target_ranks(score_candidates(cf, ds, "test", users))
    t0 = time.perf_counter()
    mode = best_ranks(best, ds, users, cache)
    # Inference time per user = the LLM forward (timed when the states were made) + the head.
    best_seconds = sum(read_json(p)["seconds"] for p in cache.glob("states-*.json")) + time.perf_counter() - t0
    cold, warm = item_groups(ds)
    targets = ds.test_candidates[users, 0]
    groups = {"overall": np.ones(len(users), bool), "cold_items": np.isin(targets, cold), "warm_items": np.isin(targets, warm)}
    methods = {"SASRec": sas, "A-LLMRec (best mode: listwise residual)": mode}
    results: dict = {"dataset": ds.name, "users": len(users), "machine": machine_description(), "methods": {}, "paper_subset": {}}
    for name, ranks in methods.items():
        results["methods"][name] = {g: summary(ranks[mask]) for g, mask in groups.items()}
    results["best_minus_sasrec_hit@1"] = {
        g: {"diff": float((mode[mask] == 0).mean() - (sas[mask] == 0).mean()), "ci95_paired_bootstrap": paired_bootstrap(mode[mask] == 0, sas[mask] == 0)}
        for g, mask in groups.items()
    }
    if args.paper:
        paper = Pipeline.from_sources(run=Path(args.paper))
        pr = llm_ranks(paper, ds, users[sub], cache, "paper")
        sub_groups = {g: mask[sub] for g, mask in groups.items()}
        results["paper_subset"] = {
            "users": int(len(sub)),
            "methods": {
                "SASRec": {g: summary(sas[sub][m]) for g, m in sub_groups.items()},
                "A-LLMRec (best mode: listwise residual)": {g: summary(mode[sub][m]) for g, m in sub_groups.items()},
                "A-LLMRec (paper: LM loss)": {g: summary(pr[m]) for g, m in sub_groups.items()},
            },
        }
    stage2_meta = read_json(best.stage2_dir / "model.json")
    results["best_mode"] = {"stage2": stage2_meta.get("stage2"), "train_seconds": stage2_meta.get("trainer_state", {}).get("seconds"),
                            "steps": stage2_meta.get("trainer_state", {}).get("step"), "inference_seconds_per_user": best_seconds / max(1, len(users))}
    results["wall_seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "stage2_modes_beauty.json", results)
    if args.curves:
        plot_curves(args.curves, out / "stage2_curves_beauty.png")
    lines = [f"# Stage-2 modes on Amazon Beauty ({len(users)} seeded test users, 1 + 19 stored candidates)", "",
             f"Machine: {results['machine']}.", "", "| method | scenario | users | Hit@1 [95% CI] | NDCG@10 |", "|---|---|---|---|---|"]
    for name, per in results["methods"].items():
        for g, m in per.items():
            lines.append(f"| {name} | {g} | {m['users']} | {m['hit@1']:.4f} [{m['hit@1_ci95'][0]:.3f}, {m['hit@1_ci95'][1]:.3f}] | {m['ndcg@10']:.4f} |")
    lines += ["", "Best mode - SASRec, Hit@1 (paired bootstrap 95% CI):", ""]
    for g, d in results["best_minus_sasrec_hit@1"].items():
        lines.append(f"- {g}: {d['diff']:+.4f} [{d['ci95_paired_bootstrap'][0]:+.4f}, {d['ci95_paired_bootstrap'][1]:+.4f}]")
    if results["paper_subset"]:
        ps = results["paper_subset"]
        lines += ["", f"Paper-faithful mode on a seeded subset of {ps['users']} of the same users:", "", "| method | scenario | users | Hit@1 [95% CI] |", "|---|---|---|---|"]
        for name, per in ps["methods"].items():
            for g, m in per.items():
                lines.append(f"| {name} | {g} | {m['users']} | {m['hit@1']:.4f} [{m['hit@1_ci95'][0]:.3f}, {m['hit@1_ci95'][1]:.3f}] |")
    if args.curves:
        lines += ["", "Learning curve (validation users only): ![stage-2 learning curve](stage2_curves_beauty.png)"]
    (out / "stage2_modes_beauty.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(results["best_mode"], indent=1))


if __name__ == "__main__":
    main()
