"""Trains the CF model, stage 1 and stage 2 (paper mode: token-mean LM loss; best mode: listwise
head) on a tiny dataset, in however many processes it was launched with (``torchrun
--nproc_per_node N``), and has rank 0 write the losses and final weights to ``OUT/result*``.

Run by tests/test_distributed.py once with one process and once with two (gloo); the same
global batches must give the same losses and weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import tiny_dataset  # noqa: E402

from allmrec import distributed  # noqa: E402
from allmrec.align.stage1 import Stage1Config, joint_item_table, train_stage1  # noqa: E402
from allmrec.align.stage2 import stage2_config, train_stage2  # noqa: E402
from allmrec.cf import TrainCFConfig, train_cf  # noqa: E402
from allmrec.llm import LLMConfig, load_llm  # noqa: E402
from allmrec.utils.io import save_tensors  # noqa: E402


def main(out: Path, llm_folder: str) -> None:
    torch.set_num_threads(1)
    ds = tiny_dataset(n_users=14, n_items=40, seq_len=7, n_candidates=6)
    cf, cf_history = train_cf(ds, TrainCFConfig(epochs=2, batch_size=6, patience=0, backbone_options={"dim": 16, "max_len": 10, "dropout": 0.0}),
                              out / "cf", progress=False)  # 14 users in batches of 6: shares of 3/3 and 1/1 rows
    s1 = train_stage1(ds, cf, "default", Stage1Config(epochs=2, batch_size=5, freeze_text_encoder=True, max_text_len=16, d_latent=16), out / "stage1",
                      progress=False)
    joint = joint_item_table(s1.model, cf.item_embeddings().detach().float())
    llm, tok = load_llm(LLMConfig(name_or_path=llm_folder, dtype="float32", device="cpu"))
    result = {"world_size": distributed.world_size(), "cf": [h["loss"] for h in cf_history], "stage1": [h["loss"] for h in s1.history]}
    weights = {f"cf.{k}": v for k, v in cf.state_dict().items()} | {f"stage1.{k}": v for k, v in s1.model.state_dict().items()}
    for mode in ("paper", "cf-residual"):  # the listwise path (best mode adds a fusion prior, fitted in one process)
        cfg = stage2_config({"mode": mode, "model": {"history_len": 3, "max_title_tokens": 4},
                             "train": {"batch_size": 3, "max_steps": 3, "n_candidates": 6, "log_every": 1, "lr": 1e-3}})
        model, state = train_stage2(ds, cf, joint, llm, tok, cfg, out / f"stage2-{mode}", progress=False)
        result[f"stage2-{mode}"] = [loss for _, loss in state["loss_log"]]
        weights |= {f"stage2-{mode}.{k}": v for k, v in model.state_dict().items()}
    if distributed.is_main():
        (out / "result.json").write_text(json.dumps(result))
        save_tensors(out / "result.safetensors", weights)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
