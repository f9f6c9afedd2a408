"""A tiny trained model for the serving tests, made the way the README's "your own data"
walk-through makes one: a CSV of interactions and a CSV of items (the ``tabular`` reader), then
``prepare``, ``train-cf``, ``align``, ``train``, ``evaluate`` and ``export`` through the command
line, with a random 2-layer GPT-2 as the LLM (fast) and the bundled text encoder."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from allmrec.cli import app

COLOURS = ["red", "blue", "green", "black", "white", "yellow"]
GROUPS = ["apple", "car", "house", "river"]
runner = CliRunner()


def write_csvs(folder, n_users=40, seed=0):
    """``interactions.csv`` (user_id, item_id, timestamp) and ``items.csv`` (item_id, title,
    description): users walk through 4 groups of 6 items in order; one title is not ASCII."""
    gen = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    items = [f"I{i:02d}" for i in range(24)]
    with open(folder / "items.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "description"])
        for i, iid in enumerate(items):
            title = "Crème brûlée «apple» 東京" if i == 5 else f"{COLOURS[i % 6]} {GROUPS[i // 6]}"
            w.writerow([iid, title, f"a {COLOURS[i % 6]} thing from the {GROUPS[i // 6]} family"])
    with open(folder / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        for u in range(n_users):
            start = int(gen.integers(0, 24))
            for k in range(int(gen.integers(6, 10))):
                w.writerow([f"U{u}", items[(start + k) % 24], 1_000_000 + 100 * u + k])


def tiny_run_config(root, llm_folder) -> dict:
    data = {"name": "mycsv", "format": "tabular", "path": str(root / "raw"), "time_col": "timestamp", "k_core": 0, "n_candidates": 6,
            "template": "Title: {title}, Description: {description}"}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return {
        "dataset": str(root / "data.yaml"),
        "cf": {"epochs": 3, "patience": 0, "backbone_options": {"dim": 16, "max_len": 10}},
        "stage1": {"epochs": 1, "freeze_text_encoder": True, "batch_size": 16, "max_text_len": 16},
        "llm": {"name_or_path": str(llm_folder), "dtype": "float32", "device": "cpu"},
        "stage2": {"mode": "best", "model": {"history_len": 3, "max_title_tokens": 8},
                   "train": {"max_steps": 2, "batch_size": 2, "n_candidates": 6, "epochs": 1}},
        "eval": {"methods": ["cf", "allmrec"], "max_users": 6, "mode": "rank", "scenarios": ["overall"]},
    }


def ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="session")
def tiny_gpt2_folder(tmp_path_factory):
    from helpers import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def walkthrough(tmp_path_factory, tiny_gpt2_folder):
    """``(root, run folder, artifact folder)`` after the walk-through's steps (CLI)."""
    root = tmp_path_factory.mktemp("own-data")
    write_csvs(root / "raw")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(root, tiny_gpt2_folder)))
    run, artifact = root / "run", root / "artifact"
    ok(runner.invoke(app, ["prepare", "--config", str(config), "--run", str(run)]))
    ok(runner.invoke(app, ["train-cf", "--config", str(config), "--run", str(run)]))
    for step in ("align", "train", "evaluate"):
        ok(runner.invoke(app, [step, "--run", str(run)]))
    ok(runner.invoke(app, ["export", str(run), str(artifact)]))
    return root, run, artifact


@pytest.fixture(scope="session")
def loaded(walkthrough):
    """The walk-through's artifact loaded once (read-only servers share it)."""
    from allmrec.serving import TrainedRecommender

    return TrainedRecommender.from_pretrained(walkthrough[2])
