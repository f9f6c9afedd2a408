"""`allmrec experiment` end to end on a tiny synthetic dataset with a tiny GPT-2: every part of
the suite runs, the report's numbers are the JSON's, a rerun skips finished units, and a changed
size redoes only the units it affects (reusing users already scored)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from allmrec.cli import app
from allmrec.eval.metrics import ranking_metrics

runner = CliRunner()
SECTIONS = ["## Overall", "## Cold and warm items", "## Cold users", "## Few-shot training", "## Cross-domain", "## Stage-1 ablations",
            "## Stage-2 ablations", "## Efficiency", "## Model-agnostic", "## Favourite genres", "## Training runs", "## Plots"]


def _invoke(*args):
    result = runner.invoke(app, ["experiment", *map(str, args)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _records(root):
    return {str(p.relative_to(root / "units"))[:-5]: json.loads(p.read_text()) for p in (root / "units").rglob("*.json")}


@pytest.fixture(scope="module")
def ran(tiny_experiment):
    root, path = tiny_experiment
    _invoke(path, "--set", "baselines.morec=true")
    return root / "runs" / "tiny", path


def test_every_part_runs_and_reports(ran):
    exp, _ = ran
    results = json.loads((exp / "results.json").read_text())
    statuses = {uid: u["status"] for uid, u in results["units"].items()}
    assert set(statuses.values()) == {"done"}, {k: v for k, v in statuses.items() if v != "done"}
    assert set(results["plan"]) == set(results["units"])
    for uid in ("train/main", "train/paper", "train/morec", "train/ctrl", "train/recformer", "train/mlp-llm", "train/tallrec", "train/few-shot-8",
                "train/few-shot-8-morec", "eval/overall/ctrl/cf", "eval/cold_users/recformer/cf", "eval/cross_domain/recformer/cf",
                "eval/cross_domain/main/allmrec", "eval/cross_domain/tallrec/tallrec", "genres/allmrec", "efficiency"):
        assert uid in results["units"], uid
    md = (exp / "report.md").read_text()
    for section in SECTIONS:
        assert section in md, section
    assert "A-LLMRec (best mode: fusion + LLM residual)" in md and "A-LLMRec (paper: LM loss)" in md
    assert "| CTRL |" in md and "| RECFORMER |" in md and "not implemented" not in md
    eff = results["units"]["efficiency"]
    assert set(eff["train"]) == {"allmrec-paper", "allmrec-best", "tallrec"} and eff["ratios"]
    for name in ("overall", "cold_warm", "few_shot", "efficiency"):
        assert (exp / "plots" / f"{name}.png").stat().st_size > 2000
    assert (exp / "plots" / "curves" / "main.png").exists()
    assert results["machine"] and all(u.get("machine") for u in results["units"].values())


def test_every_number_traces_back_to_the_json(ran):
    exp, _ = ran
    results = json.loads((exp / "results.json").read_text())
    md = (exp / "report.md").read_text()
    checked = 0
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        uids = [u.strip().strip("`") for u in cells[-1].split(",")]
        units = [results["units"].get(u) for u in uids]
        if not all(u and u.get("kind") in ("eval", "cross_domain") for u in units):
            continue
        if units[0]["table"] in ("cold_items", "warm_items"):  # cold Hit@1, CI, warm Hit@1
            positions = [1, 3]
        elif units[0]["table"].startswith("few_shot_"):  # K first
            positions = [2]
        else:
            positions = [1]
        for uid, unit, pos in zip(uids, units, positions):
            assert cells[pos] == f"{unit['metrics']['hit@1']:.4f}", line
            # ... and the JSON's metrics are those of the per-user ranks kept in the unit's file.
            full = json.loads((exp / "units" / f"{uid}.json").read_text())
            assert len(full["users"]) == len(full["rank"]) == unit["metrics"]["users"]
            assert ranking_metrics(np.array(full["rank"]))["hit@1"] == unit["metrics"]["hit@1"]
            checked += 1
    assert checked >= 40, checked


def test_variants_share_cf_and_stage1(ran):
    exp, _ = ran
    target = lambda link: os.path.realpath(exp / link)  # noqa: E731
    assert (exp / "main" / "cf").is_symlink()
    assert target("main/cf") == target("paper/cf") == target("mlp-llm/cf") == target("ablation-no_matching/cf")
    assert target("main/stage1") == target("paper/stage1")
    assert target("ablation-no_matching/stage1") != target("main/stage1")
    assert target("few-shot-8/cf") != target("main/cf")  # trained on the K users only
    results = json.loads((exp / "results.json").read_text())
    agnostic = results["variants"]["agnostic-gru4rec"]["alias_of"] or "agnostic-gru4rec"  # the same config as cf-gru4rec here: one run
    assert target("cf-gru4rec/cf") == target(f"{agnostic}/cf")
    # The frozen-encoder ablation is the main run here (the base config freezes it already).
    assert results["variants"]["ablation-frozen_encoder"]["alias_of"] == "main"
    assert not (exp / "ablation-frozen_encoder").exists()
    assert results["units"]["train/few-shot-8"]["restrict"] == "few_shot:8"


def test_rerun_skips_finished_units(ran):
    exp, path = ran
    before = _records(exp)
    runs_before = json.loads((exp / "results.json").read_text())["invocations"]
    _invoke(path, "--set", "baselines.morec=true", "--no-plots")
    after = _records(exp)
    assert {k: v["written"] for k, v in after.items()} == {k: v["written"] for k, v in before.items()}
    runs_after = json.loads((exp / "results.json").read_text())["invocations"]
    assert runs_after[:-1] == runs_before and len(runs_after) == len(runs_before) + 1  # each invocation's wall time is kept
    assert f"over {len(runs_after)} invocation(s)" in (exp / "report.md").read_text()


def test_a_changed_size_reruns_only_what_it_changes(ran):
    exp, path = ran
    before = _records(exp)
    _invoke(path, "--set", "baselines.morec=true", "--set", "ablations.max_users=2", "--no-plots")
    after = _records(exp)
    changed = sorted(k for k in after if after[k]["written"] != before.get(k, {}).get("written"))
    assert changed and all(k.startswith("eval/ablation_stage") for k in changed), changed
    for k in changed:  # the smaller sample is a prefix of the larger one: nothing scored again
        assert after[k]["scored_users"] == 0 and after[k]["metrics"]["users"] == 2


def test_sbert_rows_share_allmrec_scores_unless_an_untrained_item_is_shown(ran, monkeypatch):
    """A-LLMRec (SBERT) only changes the rows of items without training interactions: users
    whose prompt shows none get A-LLMRec's scores, the others are scored with the SBERT table."""
    import allmrec.align.stage1 as stage1
    import allmrec.experiment.scoring as scoring
    from allmrec.experiment import ExperimentRunner, load_experiment
    from allmrec.experiment.plan import eval_specs

    exp, path = ran
    run = ExperimentRunner(load_experiment(path, ["baselines.morec=true"]))
    run.steps()
    spec = next(s for s in eval_specs(run.cfg) if s.uid == "eval/warm_items/main/allmrec-sbert")
    res = run.shared.run("main")
    ds, users = res.dataset, run.shared.sample_users(res.dataset, "warm_items", 4)
    assert not stage1.untrained_item_mask(ds).any()  # every item of the tiny data is trained on
    shown_item = int(ds.candidates("test")[users[0]][-1])  # a candidate of the first user only (if possible)
    marked = stage1.untrained_item_mask(ds)
    marked[shown_item] = True
    monkeypatch.setattr(stage1, "untrained_item_mask", lambda _ds: marked.copy())
    shows = np.array([bool(marked[ds.candidates("test")[u]].any() or marked[ds.history(int(u), "test")[-3:]].any()) for u in users])
    assert shows[0] and not shows.all()

    calls = []
    score = scoring.score_method
    monkeypatch.setattr(scoring, "score_method", lambda r, method, us, *a: calls.append((method, list(us))) or score(r, method, us, *a))
    got = run.scorer.score_sbert(spec, users)
    args = ("test", "rank", run.cfg.eval.seed)
    assert ("allmrec-sbert", [int(u) for u in users[shows]]) in calls  # the SBERT table only for those users
    plain = score(res, "allmrec", users, *args)["rank"]
    assert np.array_equal(got["rank"][~shows], plain[~shows])
    assert np.array_equal(got["rank"][shows], score(res, "allmrec-sbert", users[shows], *args)["rank"])


def test_publish_copies_the_report_with_its_evidence(ran, tmp_path):
    import re

    exp, path = ran
    dest = tmp_path / "published" / "tiny"
    _invoke(path, "--set", "baselines.morec=true", "--report-only", "--no-plots", "--publish", dest)
    md = (dest / "report.md").read_text()
    assert md == (exp / "report.md").read_text()
    cited = set(re.findall(r"`((?:eval|train|genres)/[^`]+|efficiency)`", md))
    assert len(cited) > 40 and all((dest / "units" / f"{uid}.json").is_file() for uid in cited)
    assert (dest / "plots" / "overall.png").is_file() and not any(dest.rglob("*.safetensors"))


def test_plan_lists_units_without_running(tiny_experiment, tmp_path):
    _, path = tiny_experiment
    out = _invoke(path, "--plan", "--out", tmp_path / "planned")
    assert "unit=train/main" in out and "LLM user evaluations" in out
    assert not (tmp_path / "planned" / "units").exists()


def test_bad_config_exits_with_the_field(tiny_experiment, tmp_path):
    _, path = tiny_experiment
    result = runner.invoke(app, ["experiment", str(path), "--set", "ablations.stage2=[no_such]"])
    assert result.exit_code == 2 and "ablations.stage2" in result.output and "no_such" in result.output


def test_transplant_keeps_weights_and_swaps_the_item_table():
    from allmrec.cf import build_backbone
    from allmrec.experiment.cross_domain import transplant_cf
    from allmrec.experiment.plan import Unavailable
    from helpers import tiny_dataset

    torch.manual_seed(0)
    src = build_backbone("sasrec", n_items=50, n_users=5, dim=8, max_len=6)
    target = tiny_dataset(n_users=4, n_items=30)
    table = torch.randn(31, 8)
    new = transplant_cf(src, target, table)
    assert new.config.n_items == 30 and new.config.n_users == 4 and torch.equal(new.item_embeddings().detach(), table)
    for name, value in src.state_dict().items():
        if name != "item_emb.weight":
            assert torch.equal(new.state_dict()[name], value), name
    with pytest.raises(Unavailable, match="ncf"):
        transplant_cf(build_backbone("ncf", n_items=50, n_users=5, dim=8), target, table)
