"""A tiny end-to-end run through the command line: prepare -> train-cf -> align -> train ->
evaluate -> recommend, with the real bundled LLM and text encoder on a synthetic dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from allmrec.cli import app

runner = CliRunner()


def _write_dataset(folder):
    """40 users walking through 4 groups of 6 items in order: an easy sequential pattern."""
    gen = np.random.default_rng(0)
    folder.mkdir()
    items = [f"I{i:02d}" for i in range(24)]
    colours = ["red", "blue", "green", "black", "white", "yellow"]
    things = ["apple", "car", "house", "river"]
    with open(folder / "items.jsonl", "w") as f:
        for i, iid in enumerate(items):
            f.write(json.dumps({"item_id": iid, "title": f"{colours[i % 6]} {things[i // 6]}", "categories": [["Toys", things[i // 6]]]}) + "\n")
    with open(folder / "sequences.txt", "w") as f:
        for u in range(40):
            start = int(gen.integers(0, 24))
            seq = [items[(start + k) % 24] for k in range(int(gen.integers(6, 10)))]
            f.write(f"U{u} " + " ".join(seq) + "\n")


@pytest.fixture(scope="module")
def run_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    _write_dataset(root / "raw")
    config = {
        "dataset": "amazon-beauty",  # the preset: sequences format, "bought"/"item" wording
        "data": {"path": str(root / "raw"), "k_core": 0, "n_candidates": 6, "name": "tiny"},
        "cf": {"epochs": 3, "patience": 0, "backbone_options": {"dim": 16, "max_len": 10}},
        "stage1": {"epochs": 1, "freeze_text_encoder": True, "batch_size": 16},
        "llm": {"device": "cpu"},
        "stage2": {"mode": "paper", "model": {"history_len": 3, "max_title_tokens": 4}, "train": {"max_steps": 2, "batch_size": 2, "n_candidates": 6}},
        "eval": {"methods": ["cf", "llm-only", "allmrec"], "max_users": 4, "mode": "both"},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return root, path


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_end_to_end(run_setup):
    root, config = run_setup
    run = root / "run"
    out = _ok(runner.invoke(app, ["prepare", "--config", str(config), "--run", str(run)]))
    assert "users" in out and "40" in out
    _ok(runner.invoke(app, ["train-cf", "--config", str(config), "--run", str(run)]))
    assert (run / "cf" / "model.safetensors").exists()
    assert (run / "config.yaml").exists()
    # Later steps read the run's saved config: no --config needed.
    _ok(runner.invoke(app, ["align", "--run", str(run)]))
    _ok(runner.invoke(app, ["train", "--run", str(run)]))
    assert (run / "stage2" / "model.safetensors").exists()
    out = _ok(runner.invoke(app, ["evaluate", "--run", str(run)]))
    results = json.loads((run / "results" / "test.json").read_text())
    assert set(results["methods"]) == {"cf", "llm-only", "allmrec"}
    for method, entry in results["methods"].items():
        overall = entry["overall"]
        assert overall["users"] == 4
        assert 0.0 <= overall["hit@1"] <= overall["hit@5"] <= 1.0
        if method != "cf":
            assert 0.0 <= overall["gen_hit@1"] <= 1.0
    assert (run / "results" / "test.md").exists() and "SASRec / overall" in out and "A-LLMRec (paper: LM loss) / overall" in out
    out = _ok(runner.invoke(app, ["recommend", "--run", str(run), "--history", "I01,I02,I03", "--candidates", "I04,I10,I20", "--top", "3"]))
    assert out.count("\n") >= 3 and "I04" in out


def test_same_command_twice_same_numbers(run_setup):
    root, config = run_setup
    run = root / "run"
    first = json.loads((run / "results" / "test.json").read_text())
    _ok(runner.invoke(app, ["evaluate", "--run", str(run), "--methods", "cf,allmrec", "--mode", "rank"]))
    second = json.loads((run / "results" / "test.json").read_text())
    for method in ("cf", "allmrec"):
        assert second["methods"][method]["overall"]["mrr"] == first["methods"][method]["overall"]["mrr"]


def test_bad_inputs_give_clear_errors(run_setup, tmp_path):
    root, config = run_setup
    result = runner.invoke(app, ["prepare", "--config", str(config), "--set", "nosuch.key=1"])
    assert result.exit_code == 2 and "unknown section 'nosuch'" in result.output
    result = runner.invoke(app, ["prepare", "--config", str(config), "--set", "data.no_such_option=1", "--run", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no_such_option" in result.output
    # A finished CF run is not silently reused for other options.
    result = runner.invoke(app, ["train-cf", "--run", str(root / "run"), "--backbone", "ncf"])
    assert result.exit_code == 2 and "cf.backbone='sasrec'" in result.output.replace("\n", "")
    result = runner.invoke(app, ["recommend", "--run", str(root / "run"), "--history", "NOT_AN_ITEM"])
    assert result.exit_code == 2 and "NOT_AN_ITEM" in result.output
    # Evaluating an untrained run says which step is missing instead of training silently.
    result = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "empty"), "--config", str(config), "--methods", "allmrec"])
    assert result.exit_code == 2 and "allmrec train-cf" in result.output
    assert not (tmp_path / "empty" / "cf").exists()


@pytest.fixture(scope="module")
def tiny_llm_folder(tmp_path_factory):
    """A randomly initialised 2-layer GPT-2 saved as a plain Hugging Face folder: any causal LM
    folder must work by configuration alone (the paper used OPT-6.7B)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from allmrec.llm import load_llm

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    _, tok = load_llm()  # reuse the bundled tokenizer's vocabulary
    config = GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    import torch

    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_backbone_and_llm_swap_by_configuration(run_setup, tiny_llm_folder):
    root, config = run_setup
    run = root / "run-swap"
    sets = ["--set", "cf.backbone=gru4rec", "--set", f"llm.name_or_path={tiny_llm_folder}", "--set", "llm.dtype=float32",
            "--set", "eval.methods=[cf,allmrec]", "--set", "eval.mode=rank"]
    _ok(runner.invoke(app, ["train-cf", "--config", str(config), "--run", str(run), *sets]))
    _ok(runner.invoke(app, ["align", "--run", str(run)]))
    _ok(runner.invoke(app, ["train", "--run", str(run)]))
    _ok(runner.invoke(app, ["evaluate", "--run", str(run)]))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["cf"]["backbone"] == "gru4rec" and saved["llm"]["name_or_path"] == str(tiny_llm_folder)
    meta = json.loads((run / "stage2" / "model.json").read_text())
    assert meta["dims"]["hidden"] == 64  # projected into the swapped LLM's width
    results = json.loads((run / "results" / "test.json").read_text())
    assert results["methods"]["allmrec"]["overall"]["users"] == 4
    # A stage-2 model trained for one LLM is refused for another.
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--set", "llm.name_or_path=default", "--set", "llm.dtype=auto"])
    assert result.exit_code == 2 and "llm" in result.output.lower()


def test_best_mode_fits_the_fusions_and_checks_the_llm_path(run_setup, tiny_llm_folder):
    """``allmrec train`` in the best mode fits the fusions first (``allmrec fuse``), adds the LLM
    path to the fusion and records whether it beat the fusion on held-out users; the no-LLM
    methods evaluate beside it."""
    root, config = run_setup
    run = root / "run-best"
    sets = ["--set", "stage2.mode=best", "--set", "stage2.train.valid_users=6", "--set", "stage2.train.max_steps=null", "--set", "stage2.train.epochs=1",
            "--set", f"llm.name_or_path={tiny_llm_folder}", "--set", "llm.dtype=float32", "--set", "fusion.seeds=1", "--set", "fusion.tower.epochs=2",
            "--set", "eval.methods=[cf,text-sim,cf-text,fusion,allmrec]", "--set", "eval.mode=rank", "--set", "eval.max_users=8"]
    _ok(runner.invoke(app, ["train-cf", "--config", str(config), "--run", str(run), *sets]))
    out = _ok(runner.invoke(app, ["fuse", "--run", str(run)]))
    assert "fusion/fusion: fitted on" in out and "fusion/control" in out
    fitted = (run / "fusion" / "fusion" / "model.safetensors").stat().st_mtime_ns
    _ok(runner.invoke(app, ["train", "--run", str(run)]))
    assert (run / "fusion" / "fusion" / "model.safetensors").stat().st_mtime_ns == fitted  # reused, not refitted
    meta = json.loads((run / "stage2" / "model.json").read_text())
    check = meta["llm_path"]
    assert check["checked"] and check["loglik_gain"]["users"] == 6 and meta["identity"]["prior"]
    _ok(runner.invoke(app, ["evaluate", "--run", str(run)]))
    results = json.loads((run / "results" / "test.json").read_text())
    labels = results["labels"]
    assert labels["text-sim"] == "Text similarity" and labels["cf-text"] == "SASRec + text (no LLM)" and labels["fusion"] == "Fusion (no LLM)"
    assert labels["allmrec"].startswith("A-LLMRec (best mode: fusion + LLM residual")
    assert ("LLM path not adopted" in labels["allmrec"]) == (not check["adopted"])
    if not check["adopted"]:  # the fusion answers alone
        assert results["per_user"]["allmrec"]["rank"] == results["per_user"]["fusion"]["rank"]


def test_fusion_leaves_out_stage2s_sample_unless_too_few_users_are_left(run_setup):
    """40 training users, 6 held out for the LLM-path check: a stage-2 sample of 10 is left out of
    the fusion's fitting users (24 left); one of 30 would leave 4, so the fusion fits on it too."""
    root, config = run_setup
    fitted = {}
    for n in (10, 30):
        run = root / f"run-fuse-{n}"
        sets = ["--set", "stage2.mode=best", "--set", "stage2.train.valid_users=6", "--set", f"stage2.train.max_train_users={n}",
                "--set", "fusion.seeds=1", "--set", "fusion.tower.epochs=1"]
        _ok(runner.invoke(app, ["train-cf", "--config", str(config), "--run", str(run), *sets]))
        _ok(runner.invoke(app, ["fuse", "--run", str(run)]))
        meta = json.loads((run / "fusion" / "fusion" / "model.json").read_text())
        fitted[n] = meta["fit_users"] + meta["es_users"]
    assert fitted == {10: 40 - 6 - 10, 30: 40 - 6}
