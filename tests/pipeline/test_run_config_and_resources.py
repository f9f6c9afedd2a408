"""A run's configuration layers, its folder, and the resources read from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from allmrec.cf import TrainCFConfig, train_cf
from allmrec.pipeline import steps
from allmrec.pipeline.config import RunConfig
from allmrec.pipeline.resources import Resources, RunFolder
from helpers import tiny_dataset


def test_layers_in_order_and_null_sets_none(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"cf": {"epochs": 7, "lr": 0.01}, "eval": {"max_users": 1000}}))
    file = tmp_path / "file.yaml"
    file.write_text(yaml.safe_dump({"cf": {"epochs": 8}, "stage2": {"mode": "paper"}}))
    cfg, folder = RunConfig.layered(run, file, {"cf.epochs": 9, "cf.batch_size": None}, ["eval.max_users=null", "stage2.train.lr=0.5"])
    assert folder == run.resolve()
    assert cfg.cf().epochs == 9 and cfg.cf().lr == 0.01 and cfg.cf().batch_size == 128  # a flag not given (None) is left out
    assert cfg.eval().max_users is None  # --set x=null overrides a saved value: "all users" can be asked for
    s2 = cfg.stage2()
    assert s2.mode == "paper" and s2.model.objective == "lm" and s2.train.lr == 0.5
    assert RunConfig.layered(None, None, {"dataset": "amazon-beauty"})[1].name == "amazon-beauty"


def test_bad_layers_name_the_place(tmp_path):
    with pytest.raises(ValueError, match="--set: unknown section 'nosuch'"):
        RunConfig.layered(tmp_path, None, {}, ["nosuch.key=1"])
    with pytest.raises(ValueError, match="cf: unknown option"):
        RunConfig({"cf": {"epochz": 1}}).cf()
    with pytest.raises(ValueError, match="eval.mode"):
        RunConfig({"eval": {"mode": "guess"}}).eval()


def _resources(tmp_path, backbone: str, ds) -> Resources:
    res = Resources(RunConfig({"cf": {"backbone": backbone}}), RunFolder(tmp_path / "run"), dataset=lambda: ds)
    return res


def test_a_trained_model_is_read_from_its_own_files(tmp_path):
    ds = tiny_dataset(n_users=10, n_items=30, seq_len=6)
    folder = RunFolder(tmp_path / "run")
    cfg = TrainCFConfig(backbone="gru4rec", epochs=1, patience=0, backbone_options={"dim": 8, "max_len": 10})
    train_cf(ds, cfg, folder.cf, progress=False)
    assert folder.finished("cf") and not folder.finished("stage2")
    res = Resources(RunConfig({"cf": {"backbone": "gru4rec", "epochs": 1, "patience": 0, "backbone_options": {"dim": 8, "max_len": 10}}}), folder,
                    dataset=lambda: ds)
    assert res.cf.name == "gru4rec"
    model, reused = steps.train_cf(res)
    assert reused and model.name == "gru4rec"
    # A config naming another backbone than the trained one is an error naming both.
    other = _resources(tmp_path, "sasrec", ds)
    with pytest.raises(ValueError, match=r"holds a 'gru4rec' CF model, but the configuration asks for cf.backbone='sasrec'"):
        other.cf
    # ... and so is asking a finished run for other training options.
    changed = Resources(res.config.with_values({"cf": {"lr": 0.5}}), folder, dataset=lambda: ds)
    with pytest.raises(ValueError, match=r"trained with cf.lr=0.001, but cf.lr=0.5 is asked for"):
        steps.train_cf(changed)
    with pytest.raises(FileNotFoundError, match="allmrec align"):
        res.stage1


def test_an_interrupted_training_is_not_read_as_a_model(tmp_path):
    """A CF run killed after its first epochs holds a model.safetensors (the best epoch so far),
    a checkpoint and no done.json: reading it as the run's model is refused, naming the command."""
    ds = tiny_dataset(n_users=10, n_items=30, seq_len=6)
    folder = RunFolder(tmp_path / "run")
    train_cf(ds, TrainCFConfig(backbone="gru4rec", epochs=1, patience=0, backbone_options={"dim": 8, "max_len": 10}), folder.cf, progress=False)
    (folder.cf / "done.json").unlink()
    res = Resources(RunConfig({"cf": {"backbone": "gru4rec"}}), folder, dataset=lambda: ds)
    with pytest.raises(ValueError, match=r"its training was interrupted .* run `allmrec train-cf --run .*` again"):
        res.cf


def test_evaluate_writes_per_user_columns_and_one_row_per_scenario(tmp_path):
    ds = tiny_dataset(n_users=12, n_items=30, seq_len=6)
    res = Resources(RunConfig({"eval": {"methods": ["popularity"], "scenarios": ["overall", "warm_items"], "max_users": 8}}), RunFolder(tmp_path / "run"),
                    dataset=lambda: ds)
    results = steps.evaluate(res)
    users = np.array(results["per_user"]["users"])
    assert len(users) == 8 and results["labels"] == {"popularity": "Popularity"}
    saved = json.loads((tmp_path / "run" / "results" / "test.json").read_text())
    assert saved["per_user"]["popularity"]["rank"] == results["per_user"]["popularity"]["rank"]
    assert saved["methods"]["popularity"]["overall"]["users"] == 8 and "warm_items" in saved["methods"]["popularity"]
    assert (tmp_path / "run" / "results" / "test.md").read_text().count("Popularity /") == 2
