"""The steps the crash harness interrupts (:mod:`crash_harness`), on tiny inputs: a synthetic
dataset, a random 2-layer GPT-2 (width 32) as the LLM, the bundled text encoder (frozen), tiny
CF dims. ``scale`` multiplies every step's length (epochs, optimiser steps).

Steps: ``cf`` (``allmrec train-cf``: prepare + SASRec with validation and early-stopping
bookkeeping, a checkpoint per epoch), ``stage1`` (``allmrec align``), ``stage2-best`` and
``stage2-paper`` (``allmrec train`` in each mode, a checkpoint every step, a learning curve every
2 steps), ``tallrec`` (:func:`allmrec.baselines.tallrec.train_tallrec`, a checkpoint every step),
``experiment`` (a small ``allmrec experiment``: the main variant's training and evaluations,
LLM-only; TALLRec too from ``scale`` 2) and
``predict`` (``allmrec predict`` of the exported model: its shards and merged file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from crash_harness import Case, CrashRunner, cli, run_child

THINGS = ["apple", "car", "house", "river"]
COLOURS = ["red", "blue", "green", "black", "white", "yellow"]


def write_dataset(folder: Path, n_users: int = 48, seed: int = 0) -> None:
    """Users walking through 4 groups of 6 items in order (the sequences format)."""
    gen = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = [f"I{i:02d}" for i in range(24)]
    with open(folder / "items.jsonl", "w") as f:
        for i, iid in enumerate(items):
            f.write(json.dumps({"item_id": iid, "title": f"{COLOURS[i % 6]} {THINGS[i // 6]}", "categories": [["Toys", THINGS[i // 6]]]}) + "\n")
    with open(folder / "sequences.txt", "w") as f:
        for u in range(n_users):
            start = int(gen.integers(0, 24))
            f.write(f"U{u} " + " ".join(items[(start + k) % 24] for k in range(int(gen.integers(6, 10)))) + "\n")


def write_tiny_gpt2(folder: Path) -> None:
    """A random 2-layer GPT-2 with the bundled LLM's tokenizer (from the converted cache if there)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from allmrec.llm.loading import LLMConfig, llm_source_identity, load_llm
    from allmrec.utils.paths import home

    converted = home() / "llm" / llm_source_identity(LLMConfig()).replace("@", "-")
    tok = AutoTokenizer.from_pretrained(converted) if (converted / "tokenizer.json").exists() else load_llm()[1]
    config = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)


def pipeline_config(root: Path, scale: int = 1) -> dict[str, Any]:
    return {
        "dataset": "amazon-beauty",
        "data": {"path": str(root / "raw"), "k_core": 0, "n_candidates": 6, "name": "tiny"},
        "cf": {"epochs": 3 * scale, "patience": 0, "batch_size": 4, "backbone_options": {"dim": 8, "max_len": 10}},
        "stage1": {"epochs": 2 * scale, "freeze_text_encoder": True, "batch_size": 8, "max_text_len": 16, "threads": 1},
        "llm": {"name_or_path": str(root / "gpt2"), "dtype": "float32", "device": "cpu"},
        "stage2": {"model": {"history_len": 3, "max_title_tokens": 4},
                   "train": {"max_steps": 7 * scale, "batch_size": 8, "n_candidates": 6, "valid_users": 3, "eval_every": 2, "checkpoint_every": 1}},
        "eval": {"max_users": 6, "mode": "rank"},
    }


def tallrec_options(scale: int = 1) -> dict[str, Any]:
    return {"max_steps": 4 * scale, "batch_size": 4, "lora_r": 2, "target_modules": ["c_attn"], "n_candidates": 6, "history_len": 3,
            "max_title_tokens": 4, "checkpoint_every": 1}


def experiment_config(root: Path, scale: int = 1) -> dict[str, Any]:
    base = pipeline_config(root, 1)
    base["cf"]["epochs"] = 2
    base["stage2"]["train"].update(max_steps=3 * scale, eval_every=0, valid_users=0)
    return {"name": "crash", "out_dir": str(root / "unused"), "paper_dataset": "Beauty", "base": base,
            "eval": {"max_users": 6, "mode": "rank"}, "allmrec": {"paper_mode": False},
            "baselines": {"cf": [], "morec": False, "ctrl": False, "recformer": False, "mlp_llm": False, "tallrec": scale > 1, "tallrec_options": tallrec_options(1) | {"max_steps": 2 * scale}},
            "scenarios": {"enabled": False}, "ablations": {"enabled": False}, "efficiency": {"enabled": False}, "genres": {"enabled": False}}


def write_workspace(root: Path, scale: int = 1) -> None:
    """The shared inputs (outside every work folder, so paths and file times never differ)."""
    root.mkdir(parents=True, exist_ok=True)
    write_dataset(root / "raw")
    (root / "pipeline.yaml").write_text(yaml.safe_dump(pipeline_config(root, scale), sort_keys=False))
    (root / "experiment.yaml").write_text(yaml.safe_dump(experiment_config(root, scale), sort_keys=False))
    (root / "tallrec.json").write_text(json.dumps(tallrec_options(scale)))
    if not (root / "gpt2" / "config.json").exists():
        r = run_child(lambda: write_tiny_gpt2(root / "gpt2"), root / "gpt2.log")
        if r.rc != 0:
            raise RuntimeError(f"could not write the tiny GPT-2; see {root / 'gpt2.log'}")


def _tallrec(root: Path):
    def command(work: Path):
        def run() -> None:
            from allmrec.baselines.tallrec import TallrecConfig, train_tallrec
            from allmrec.pipeline.config import RunConfig
            from allmrec.pipeline.resources import Resources, RunFolder

            cfg, _ = RunConfig.layered(None, root / "pipeline.yaml", {}, [])
            res = Resources(cfg, RunFolder(work / "run"))
            llm, tok = res.llm
            config = TallrecConfig(**json.loads((root / "tallrec.json").read_text()))
            train_tallrec(res.dataset, llm, tok, config, work / "run" / "tallrec", progress=False)

        return run

    return command


def predict_case(root: Path) -> Case:
    """``allmrec predict`` of the exported model, in shards of 8 users (a rerun skips the shards
    already written; killed while writing one, it writes that one again)."""
    return Case("predict", lambda work: cli("predict", str(work / "artifact"), "--out", str(work / "recs"), "--shard-size", "8"), ("recs",),
                base="exported", kinds=("write",))


def cases(root: Path) -> dict[str, Case]:
    config = str(root / "pipeline.yaml")
    run = lambda work: str(work / "run")  # noqa: E731
    out = [
        # Targets: where bugs were found (docs/robustness.md): the last step saved a second time
        # (its folder was deleted before the new one was renamed in), a resume at an odd step
        # mid-epoch 0 (an extra learning-curve point; the LLM-state cache lost), the gap between
        # an epoch's last step and its bookkeeping (the epoch's history record lost).
        Case("cf", lambda work: cli("train-cf", "--config", config, "--run", run(work)), ("run", "home/datasets"),
             targets=("checkpoint:*:written@last",)),
        Case("stage1", lambda work: cli("align", "--run", run(work)), ("run", "home"), base="cf"),
        Case("stage2-best", lambda work: cli("train", "--run", run(work)), ("run",), base="aligned", targets=("step:4",)),
        Case("stage2-paper", lambda work: cli("train", "--run", run(work), "--mode", "paper"), ("run",), base="aligned", targets=("epoch:1",)),
        Case("tallrec", _tallrec(root), ("run",), base="prepared"),
        Case("experiment", lambda work: cli("experiment", str(root / "experiment.yaml"), "--out", str(work / "exp")), ("exp", "home")),
        predict_case(root),
    ]
    return {c.name: c for c in out}


def runner(root: Path, scale: int = 1) -> CrashRunner:
    """A :class:`CrashRunner` over a workspace written in ``root`` (kept if already there)."""
    write_workspace(root, scale)
    config = str(root / "pipeline.yaml")
    bases = {
        "prepared": ("", [lambda work: cli("prepare", "--config", config, "--run", str(work / "run"))]),
        "cf": ("", [lambda work: cli("train-cf", "--config", config, "--run", str(work / "run"))]),
        "aligned": ("cf", [lambda work: cli("align", "--run", str(work / "run"))]),
        "trained": ("aligned", [lambda work: cli("train", "--run", str(work / "run"))]),
        "exported": ("trained", [lambda work: cli("export", str(work / "run"), str(work / "artifact"))]),
    }
    return CrashRunner(root, bases)
