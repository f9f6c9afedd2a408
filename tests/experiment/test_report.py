"""The report and the plots are built from a results JSON alone: a hand-made one here."""

from __future__ import annotations

from allmrec.experiment.plots import write_plots
from allmrec.experiment.report import build_report, paper_reference, paper_value


def _eval(table, variant, method, row, label, hit, users=50, **extra):
    return {"kind": "eval", "status": "done", "table": table, "variant": variant, "actual_variant": extra.pop("actual", variant), "alias_of": extra.pop("alias_of", None),
            "method": method, "row": row, "label": label, "seconds": 1.0,
            "metrics": {"users": float(users), "hit@1": hit, "hit@1_ci95": [hit - 0.1, hit + 0.1], "ndcg@10": hit + 0.2, "mrr": hit + 0.1, **extra}}


def results() -> dict:
    units = {
        "train/main": {"kind": "train", "status": "done", "variant": "main", "group": "main", "seconds": 30.0,
                       "cf": {"backbone": "sasrec", "best_epoch": 3, "best_valid_ndcg@10": 0.5},
                       "stage2": {"objective": "listwise", "residual": True, "item_table": "joint", "steps": 20, "batch_size": 4, "seconds": 80.0,
                                  "seconds_per_step": 4.0, "curve": [[0, 0.2, 0.4], [10, 0.3, 0.5], [20, 0.35, 0.55]],
                                  "llm_path": {"checked": True, "adopted": False, "loglik_gain": {"diff": 0.0009, "low": -0.011, "high": 0.013}}}},
        "eval/overall/main/cf": _eval("overall", "main", "cf", "sasrec", "SASRec", 0.3125),
        "eval/overall/main/allmrec": _eval("overall", "main", "allmrec", "allmrec", "A-LLMRec (best mode: listwise residual)", 0.4375),
        "eval/overall/paper/allmrec": _eval("overall", "paper", "allmrec", "allmrec", "A-LLMRec (paper: LM loss)", 0.1875, **{"gen_hit@1": 0.0625, "gen_no_match": 0.5}),
        "eval/cold_items/main/cf": _eval("cold_items", "main", "cf", "sasrec", "SASRec", 0.1111, users=9),
        "eval/warm_items/main/cf": _eval("warm_items", "main", "cf", "sasrec", "SASRec", 0.6667, users=9),
        "eval/few_shot_256/few-shot-256/allmrec": _eval("few_shot_256", "few-shot-256", "allmrec", "allmrec", "A-LLMRec (best mode: listwise residual)", 0.25),
        "eval/few_shot_128/few-shot-128/allmrec": _eval("few_shot_128", "few-shot-128", "allmrec", "allmrec", "A-LLMRec (best mode: listwise residual)", 0.2),
        "eval/ablation_stage1/ablation-reference/allmrec": _eval("ablation_stage1", "ablation-reference", "allmrec", "allmrec", "A-LLMRec (best mode: listwise residual)", 0.4,
                                                                 alias_of="main", actual="main"),
        "eval/ablation_stage1/ablation-no_rec/allmrec": _eval("ablation_stage1", "ablation-no_rec", "allmrec", "no_rec", "w/o L_rec (best mode: listwise residual)", 0.35),
        "efficiency": {"kind": "efficiency", "status": "done", "batch_size": 4, "train_steps": 5, "users": 10, "device": "cpu", "llm": "smollm@x",
                       "train": {"allmrec-paper": {"steps": 5, "seconds": 20.0, "seconds_per_step": 4.0}, "tallrec": {"steps": 5, "seconds": 50.0, "seconds_per_step": 10.0}},
                       "inference": {"allmrec-paper": {"users": 10, "seconds": 10.0, "seconds_per_user": 1.0}, "tallrec": {"users": 10, "seconds": 17.0, "seconds_per_user": 1.7}},
                       "ratios": {"train: TALLRec / allmrec-paper": 2.5, "inference: TALLRec / allmrec-paper": 1.7}, "notes": []},
        "genres/llm-only": {"kind": "genres", "status": "done", "method": "llm-only", "label": "LLM-Only",
                            "genres": {"precision@k": 0.2, "coverage": 0.9, "popularity_precision@k": 0.3, "copied_list@k": 0.1, "users": 20, "k": 3,
                                       "examples": [{"user": 4, "truth": ["Drama"], "parsed": ["Drama"], "generated": "Drama, Comedy"}]}},
        "eval/overall/tallrec/tallrec": {"kind": "eval", "status": "unavailable", "table": "overall", "variant": "tallrec", "method": "tallrec",
                                         "reason": "module allmrec.baselines.tallrec is not available"},
    }
    return {"format": "allmrec-experiment/1", "experiment": "hand", "dataset": "amazon-beauty", "paper_dataset": "Beauty", "paper_nearest_only": False,
            "base_backbone": "sasrec", "variant_mode": "best", "machine": "test machine", "updated": "now", "units_seconds": 120.0,
            "this_run_seconds": 60.0, "plan": list(units) + ["eval/overall/morec/cf"], "config": {"base": {"llm": {}}, "eval": {}}, "units": units}


def _row(md: str, unit: str) -> list[str]:
    line = next(line for line in md.splitlines() if f"`{unit}`" in line)
    return [c.strip() for c in line.strip("|").split("|")]


def test_paper_reference_file():
    ref = paper_reference()
    assert paper_value("overall", "allmrec", "Beauty") == 0.5809
    assert paper_value("cold_items", "sasrec", "Beauty") == 0.1190
    assert paper_value("few_shot_128", "allmrec_sbert", "Movies and TV") == 0.2722
    assert paper_value("overall", "allmrec", None) is None
    assert ref["tables"]["efficiency"]["table"] == "Table 8"


def test_report_cells_come_from_the_json():
    md = build_report(results())
    # Overall: our numbers next to the paper's, with the unit that made them.
    row = _row(md, "eval/overall/main/allmrec")
    assert row[0] == "A-LLMRec (best mode: listwise residual)" and row[1] == "0.4375" and row[-2] == "0.5809"
    row = _row(md, "eval/overall/paper/allmrec")
    assert "0.0625" in row and row[0] == "A-LLMRec (paper: LM loss)"
    assert "paper (Table 1, Beauty)" in md
    # Cold / warm side by side with the paper's Table 2.
    row = _row(md, "eval/cold_items/main/cf")
    assert row[:2] == ["SASRec", "0.1111"] and "0.6667" in row and "0.1190" in row and "0.6312" in row
    # Few-shot rows ordered by K, paper column from Table 4.
    assert md.index("few_shot_256/") < md.index("few_shot_128/")
    assert _row(md, "eval/few_shot_128/few-shot-128/allmrec")[-2] == "0.3099"
    # Alias rows are marked and explained; ablation paper numbers from Table 6.
    assert "A-LLMRec (best mode: listwise residual) †" in md and "`ablation-reference` = `main`" in md
    assert _row(md, "eval/ablation_stage1/ablation-no_rec/allmrec")[-2] == "0.5523"
    # Efficiency ratios and the paper's, genres, training runs, and what did not run.
    assert "| train: TALLRec / A-LLMRec (paper: LM loss) (this run) | 2.50x |" in md
    assert "2.53x" in md and "1.70x" in md
    assert "| LLM-Only | 0.2000 | 0.9000 | 0.3000 |" in md
    assert _row(md, "train/main")[:2] == ["main", "20"] and _row(md, "train/main")[-2] == "not kept: gain +0.0009 [-0.0110, +0.0130]"
    assert "`eval/overall/tallrec/tallrec`: unavailable: module allmrec.baselines.tallrec is not available" in md
    assert "`eval/overall/morec/cf`: not reached yet" in md
    assert "CTRL and RECFORMER" in md and "Machine: test machine" in md


def test_no_paper_column_without_a_paper_dataset():
    res = results()
    res["paper_dataset"] = None
    md = build_report(res)
    assert "paper (Table 1" not in md
    assert _row(md, "eval/overall/main/allmrec")[-2] == "50"


def test_plots_written(tmp_path):
    paths = write_plots(results(), tmp_path / "plots")
    names = sorted(p.relative_to(tmp_path / "plots").as_posix() for p in paths)
    assert names == ["cold_warm.png", "curves/main.png", "efficiency.png", "few_shot.png", "overall.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
