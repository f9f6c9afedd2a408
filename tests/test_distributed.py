"""Data-parallel training (allmrec.distributed): two gloo processes under torchrun train the CF
model, stage 1 and stage 2 to the same losses and weights as one process on the same global
batches; only rank 0 writes checkpoints and models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from allmrec import distributed
from allmrec.training import LoopOptions, run_training
from allmrec.utils.io import load_tensors

WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from allmrec.llm import load_llm

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    _, tok = load_llm()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=2)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def launch(n: int, out: Path, llm: Path) -> tuple[dict, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           str(WORKER), str(out), str(llm)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-5000:]
    return json.loads((out / "result.json").read_text()), load_tensors(out / "result.safetensors")


def without_float_noise(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` without the entries whose true gradient is exactly zero, so that Adam (which divides
    by the gradient's running RMS) moves them by float rounding noise, differently for any other
    summation order: the key bias of attention (softmax ignores a shift shared by all keys) and
    the listwise head's delta bias (the same shift for every candidate)."""
    t = t.clone()
    if name.endswith("in_proj.bias"):
        n = len(t) // 3
        t[n : 2 * n] = 0
    if name == "stage2-cf-residual.head.net.2.bias":
        t[0] = 0
    return t


def test_two_gloo_processes_train_as_one(tmp_path, gpt2_folder):
    one, w1 = launch(1, tmp_path / "one", gpt2_folder)
    two, w2 = launch(2, tmp_path / "two", gpt2_folder)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for part in ("cf", "stage1", "stage2-paper", "stage2-cf-residual"):
        assert len(one[part]) == len(two[part]) > 0
        assert two[part] == pytest.approx(one[part], rel=1e-4, abs=1e-5), part
    assert w1.keys() == w2.keys()
    for k in w1:
        a, b = without_float_noise(k, w1[k]), without_float_noise(k, w2[k])
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
    for step in ("cf", "stage1", "stage2-paper"):  # rank 0 wrote one complete run of each step
        assert (tmp_path / "two" / step / "done.json").exists() and (tmp_path / "two" / step / "latest.json").exists()
    assert sorted(p.name for p in (tmp_path / "two" / "cf").iterdir() if not p.name.startswith(".")) == \
           sorted(p.name for p in (tmp_path / "one" / "cf").iterdir() if not p.name.startswith("."))


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    from test_training import Regression

    monkeypatch.setattr(distributed, "rank", lambda: 1)  # what a second process sees
    run_training(Regression(), LoopOptions(epochs=1, checkpoint_every=2), tmp_path / "r1", resume=True)
    assert not (tmp_path / "r1" / "checkpoints").exists() and not (tmp_path / "r1" / "done.json").exists()
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    run_training(Regression(), LoopOptions(epochs=1, checkpoint_every=2), tmp_path / "r0", resume=True)
    assert (tmp_path / "r0" / "done.json").exists() and (tmp_path / "r0" / "latest.json").exists()


def test_local_rows_split_a_batch_into_contiguous_shares(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shares = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares.append(list(range(10))[distributed.local_rows(10)])
    assert shares == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert sum(shares, []) == list(range(10))
