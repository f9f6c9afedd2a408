"""``allmrec export`` and ``TrainedRecommender.from_pretrained`` / ``save_pretrained``: one folder
of safetensors + JSON that scores exactly as the pipeline does, without the run folder or the
dataset cache; another LLM or an altered file is refused."""

from __future__ import annotations

import datetime
import json
import shutil

import numpy as np
import pytest
import torch

from allmrec.data.queries import Queries
from allmrec.llm import LLMConfig, llm_source_identity
from allmrec.serving import ArtifactError, TrainedRecommender


def test_one_folder_of_safetensors_and_json_with_a_manifest(walkthrough, tiny_gpt2_folder):
    _, run, artifact = walkthrough
    files = sorted(p.relative_to(artifact).as_posix() for p in artifact.rglob("*") if p.is_file())
    assert all(f.endswith((".json", ".safetensors")) for f in files), files
    assert {"cf/model.safetensors", "stage1/model.safetensors", "stage2/model.safetensors", "catalogue/items.json", "config.json", "manifest.json"} <= set(files)
    assert not (artifact / "stage1" / "text_encoder").exists()  # frozen encoder: referenced, not copied
    m = json.loads((artifact / "manifest.json").read_text())
    results = json.loads((run / "results" / "test.json").read_text())
    assert m["dataset"]["fingerprint"] == results["fingerprint"] and m["dataset"]["n_items"] == 24
    assert m["llm"]["identity"] == llm_source_identity(LLMConfig(name_or_path=str(tiny_gpt2_folder)))
    assert m["llm"]["config"]["name_or_path"] == str(tiny_gpt2_folder)  # referenced by source + hash, not copied
    assert m["text_encoder"] == {"source": "bundled:all-minilm-l6-v2", "fingerprint": m["text_encoder"]["fingerprint"], "saved": False}
    assert m["metrics"]["overall"]["allmrec"]["hit@1"] == results["methods"]["allmrec"]["overall"]["hit@1"] and m["metrics"]["split"] == "test"
    assert m["versions"]["torch"] == torch.__version__ and m["label"].startswith("A-LLMRec")
    assert datetime.datetime.strptime(m["created"], "%Y-%m-%dT%H:%M:%S%z")
    assert set(m["files"]) == set(files) - {"manifest.json"}


def test_loads_without_run_or_cache_and_scores_as_the_pipeline(walkthrough, tmp_path, monkeypatch):
    from allmrec.methods import get_method
    from allmrec.pipeline import Resources, RunConfig, RunFolder

    _, run, artifact = walkthrough
    config, _ = RunConfig.layered(run)
    res = Resources(config, RunFolder(run))
    queries = Queries.from_split(res.dataset, "test")
    expected = get_method("allmrec").build(res, config.eval().seed).score(queries)
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(artifact, copy)
    monkeypatch.setenv("ALLMREC_HOME", str(tmp_path / "empty-home"))  # no prepared dataset, no caches
    model = TrainedRecommender.from_pretrained(copy)
    np.testing.assert_allclose(model.score(queries), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.cf_score(queries), get_method("cf").build(res, 0).score(queries), rtol=1e-6)
    assert not (tmp_path / "empty-home").exists()


def test_another_llm_is_refused(walkthrough, tiny_gpt2_folder, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_folder)
    other = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=48, n_layer=2, n_head=2)).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(ArtifactError, match="has hash .*give that LLM"):
        TrainedRecommender.from_pretrained(walkthrough[2], llm=str(other))


def test_an_altered_file_is_refused(walkthrough, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(walkthrough[2], copy)
    weights = copy / "stage2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"stage2/model.safetensors: sha256 differs"):
        TrainedRecommender.from_pretrained(copy)
    (copy / "catalogue" / "items.json").unlink()
    with pytest.raises(ArtifactError, match=r"items.json: listed in .* but missing"):
        TrainedRecommender.from_pretrained(copy, verify=True)


def test_save_pretrained_round_trip_keeps_added_items(walkthrough, tmp_path):
    model = TrainedRecommender.from_pretrained(walkthrough[2])
    [new] = model.add_items([{"item_id": "N1", "title": "golden apple", "text": "Title: golden apple, Description: a golden thing from the apple family"}], persist=False)
    assert not (walkthrough[2] / "added_items.json").exists()  # persist=False writes nothing
    out = model.save_pretrained(tmp_path / "saved")
    again = TrainedRecommender.from_pretrained(out)
    assert again.catalogue.lookup(["N1"])[0] == [new] and again.catalogue.titles[new] == "golden apple"
    hist, cands = again.catalogue.lookup(["I01", "I02"])[0], again.catalogue.lookup(["N1", "I03", "I20"])[0]
    q = again.queries([hist], [cands], ["k"])
    np.testing.assert_allclose(again.score(q), model.score(q), rtol=1e-5, atol=1e-6)
    assert json.loads((out / "manifest.json").read_text())["id"] == model.manifest["id"]
