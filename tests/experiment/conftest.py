"""Tiny inputs for the experiment tests: two synthetic raw datasets (the second one is the
cross-domain target), a randomly initialised 2-layer GPT-2 and an experiment YAML that turns
every part on at the smallest sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

COLOURS = ["red", "blue", "green", "black", "white", "yellow"]
GENRES = ["Action", "Comedy", "Drama", "Horror"]


def write_dataset(folder, things, n_users=40, seed=0):
    """``n_users`` users walking through 4 groups of 6 items in order; items carry genres."""
    gen = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    items = [f"I{i:02d}" for i in range(24)]
    with open(folder / "items.jsonl", "w") as f:
        for i, iid in enumerate(items):
            f.write(json.dumps({"item_id": iid, "title": f"{COLOURS[i % 6]} {things[i // 6]}", "categories": [["Toys", things[i // 6]]],
                                "genres": f"{GENRES[i // 6]}, {GENRES[(i + 1) % 4]}"}) + "\n")
    with open(folder / "sequences.txt", "w") as f:
        for u in range(n_users):
            start = int(gen.integers(0, 24))
            seq = [items[(start + k) % 24] for k in range(int(gen.integers(6, 10)))]
            f.write(f"U{u} " + " ".join(seq) + "\n")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """A random 2-layer GPT-2 (width 32) with the bundled tokenizer's vocabulary."""
    from helpers import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def tiny_config(root, llm_folder, bert_folder=None) -> dict:
    """Every part of the suite on, at the smallest sizes that still exercise it."""
    return {
        "name": "tiny",
        "out_dir": str(root / "runs"),
        "paper_dataset": "Beauty",
        "base": {
            "dataset": "amazon-beauty",
            "data": {"path": str(root / "raw"), "k_core": 0, "n_candidates": 6, "name": "tiny"},
            "cf": {"epochs": 2, "patience": 0, "backbone_options": {"dim": 8, "max_len": 10}},
            "stage1": {"epochs": 1, "freeze_text_encoder": True, "batch_size": 16, "max_text_len": 16},
            "llm": {"name_or_path": str(llm_folder), "dtype": "float32", "device": "cpu"},
            "stage2": {"model": {"history_len": 3, "max_title_tokens": 4},
                       "train": {"max_steps": 2, "batch_size": 2, "n_candidates": 6, "valid_users": 3, "eval_every": 1}},
        },
        "eval": {"max_users": 6, "mode": "rank"},
        "baselines": {"cf": ["sasrec", "gru4rec"], "morec": False, "ctrl": bert_folder is not None, "recformer": bert_folder is not None,
                      "tallrec_options": {"max_steps": 2, "lora_r": 2, "target_modules": ["c_attn"]}},
        "scenarios": {"cold_users": 3, "few_shot": [8], "model_agnostic": ["sasrec", "gru4rec"],
                      "cross_domain": {"enabled": True, "dataset": "amazon-beauty", "data": {"path": str(root / "raw2"), "k_core": 0, "n_candidates": 6, "name": "tiny2"}},
                      "max_users": {"cold_items": 4, "warm_items": 4}},
        "ablations": {"stage1": ["no_matching", "frozen_encoder"], "stage2": ["no_joint"], "max_users": 4},
        "overrides": {"ctrl": {"cf": {"backbone_options": {"pretrain_epochs": 1, "pretrain_batch_size": 16, "prompt_max_tokens": 32}}},
                      "recformer": {"cf": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "max_train_users": 16, "max_valid_users": 8,
                                           "backbone_options": {"dim": 0, "encoder": str(bert_folder), "max_tokens": 32, "attr_tokens": 8,
                                                                "pretrain_epochs": 1, "pretrain_users": 8, "pretrain_batch_size": 8}}}},
        "efficiency": {"batch_size": 2, "train_steps": 2, "users": 2},
        "genres": {"users": 3, "options": {"max_new_tokens": 4}},
    }


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tiny_gpt2):
    """A random 2-layer BERT (width 32) with the bundled MiniLM's tokenizer: RECFORMER's encoder here."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from allmrec.text.encoder import bundled_model_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(bundled_model_path()), local_files_only=True)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=128)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory, tiny_gpt2, tiny_bert):
    """``(root, path of the YAML)`` of the tiny experiment."""
    root = tmp_path_factory.mktemp("experiment")
    write_dataset(root / "raw", ["apple", "car", "house", "river"])
    write_dataset(root / "raw2", ["lamp", "boat", "shoe", "cloud"], n_users=20, seed=1)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(root, tiny_gpt2, tiny_bert), sort_keys=False))
    return root, path
