"""Experiment YAML parsing: defaults, overrides, resolved paths, and errors that name the file,
the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from allmrec.config import merge
from allmrec.experiment.config import ExperimentConfigError, load_experiment

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, data) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _minimal(tmp_path) -> dict:
    return {"base": {"dataset": "amazon-beauty", "data": {"path": str(tmp_path / "raw")}, "stage2": {"train": {"max_steps": 3}}}}


def test_defaults_and_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _minimal(tmp_path)
    data["base"]["data"]["path"] = "relative/raw"
    data["scenarios"] = {"cold_users": 7}
    cfg = load_experiment(_write(tmp_path, data))
    assert cfg.name == "exp" and cfg.out_dir == "runs"
    assert cfg.eval.mode == "rank" and cfg.eval.max_users == 100
    assert cfg.allmrec.paper_mode and cfg.allmrec.variant_mode == "best" and cfg.stage2_mode("paper") == {"stage2": {"mode": "paper"}}["stage2"]
    # Relative data paths are taken from the current folder and stored absolute.
    assert cfg.base["data"]["path"] == str(tmp_path / "relative" / "raw")
    # The cold-user scenario holds users out of the base dataset; pipeline defaults are filled in.
    assert cfg.base["data"]["cold_users"] == 7
    assert cfg.base["text_encoder"] == "default" and "llm" in cfg.base
    assert cfg.resolved_paper_dataset() == "Beauty"


def test_set_overrides_any_key(tmp_path):
    cfg = load_experiment(_write(tmp_path, _minimal(tmp_path)), ["ablations.enabled=false", "base.stage2.train.max_steps=9", "eval.max_users=null"])
    assert cfg.ablations.enabled is False
    assert cfg.base["stage2"]["train"]["max_steps"] == 9
    assert cfg.eval.max_users is None


def test_merge_is_deep_and_copies():
    base = {"stage2": {"max_steps": 3, "lr": 1e-4}, "cf": {"backbone": "sasrec"}}
    out = merge(base, {"stage2": {"max_steps": 5}}, {"cf.backbone": "ncf"})
    assert out == {"stage2": {"max_steps": 5, "lr": 1e-4}, "cf": {"backbone": "ncf"}}
    assert base["stage2"]["max_steps"] == 3
    assert merge(base, {"stage2.max_steps": None})["stage2"]["max_steps"] is None  # an explicit null sets None


@pytest.mark.parametrize(
    "patch, line, needle",
    [
        ({"ablation": {}}, 1, "ablation: unknown option"),
        ({"ablations": {"stage1": ["no_such"]}}, 2, "ablations.stage1: unknown ablation 'no_such'"),
        ({"ablations": {"sizes": 3}}, 2, "ablations.sizes: unknown option"),
        ({"eval": {"mode": "generate"}}, 2, "eval.mode: expected rank or both"),
        ({"scenarios": {"cross_domain": {"enabled": True}}}, 2, "scenarios.cross_domain.dataset: required"),
        ({"scenarios": {"max_users": {"cold": 3}}}, 3, "scenarios.max_users.cold: unknown sample"),
        ({"baselines": {"cf": ["sasrec", "bert4rec"]}}, 2, "baselines.cf: unknown CF baseline 'bert4rec'"),
        ({"overrides": {"ablation": {"stage2": {}}}}, 2, "overrides.ablation: unknown group"),
        ({"overrides": {"ablations": {"stage3": {}}}}, 3, "overrides.ablations.stage3: unknown pipeline section"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, patch, line, needle):
    data = {**patch, **_minimal(tmp_path)}  # the patch first: its lines are known
    path = _write(tmp_path, data)
    with pytest.raises(ExperimentConfigError) as err:
        load_experiment(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert needle in msg, msg


def test_bad_pipeline_option_fails_at_load_time(tmp_path):
    data = _minimal(tmp_path)
    data["base"]["stage2"]["model"] = {"objective": "contrastive"}
    path = _write(tmp_path, data)
    with pytest.raises(ExperimentConfigError) as err:
        load_experiment(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:") and "stage2" in msg and "contrastive" in msg
    # An unknown option inside an override group names the group.
    data = _minimal(tmp_path)
    data["overrides"] = {"few_shot": {"stage2": {"train": {"max_stepz": 3}}}}
    with pytest.raises(ExperimentConfigError) as err:
        load_experiment(_write(tmp_path, data))
    assert "overrides.few_shot.stage2" in str(err.value) and "max_stepz" in str(err.value)


def test_base_is_required_and_yaml_errors_have_lines(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("eval:\n  mode: rank\n")
    with pytest.raises(ExperimentConfigError, match=r"bad\.yaml: base: required"):
        load_experiment(path)
    path.write_text("base:\n  dataset: [unclosed\n")
    with pytest.raises(ExperimentConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_experiment(path)


@pytest.mark.parametrize("name", ["beauty_cpu", "ml100k_cpu", "beauty_gpu", "ml100k_gpu"])
def test_shipped_configs_parse(name, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_experiment(REPO / "experiments" / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.scenarios.few_shot == [256, 128]
    assert cfg.resolved_paper_dataset() in ("Beauty", "Movies and TV")
