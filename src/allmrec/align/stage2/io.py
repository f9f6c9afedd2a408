"""A trained stage 2's files and the identities it checks.

``model.safetensors`` holds the projectors (and the listwise head); ``model.json`` the stage-2
config (mode, model and training options), the identities of what it was trained with (LLM, CF
model, joint item table, dataset), the dims and the trainer state. Loading with the LLM / CF
model / joint table in hand refuses ones that differ from those recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from allmrec.align.stage2.config import Stage2ModelConfig
from allmrec.align.stage2.model import Stage2Model
from allmrec.config import from_dict
from allmrec.llm.loading import llm_identity
from allmrec.utils.fingerprint import cf_identity, dataset_fingerprint, tensor_fingerprint
from allmrec.utils.io import check_weights_counter, load_tensors, read_json, save_tensors, write_json

FORMAT = "allmrec-stage2/2"
_LABELS = {"llm": "LLM", "cf": "CF model", "joint_items": "joint item embeddings", "dataset": "dataset", "prior": "fitted fusion"}


def identities(dataset: Any, cf_model: nn.Module, joint_items: torch.Tensor, llm: nn.Module) -> dict[str, str]:
    return {"llm": llm_identity(llm), "cf": cf_identity(cf_model), "joint_items": tensor_fingerprint(joint_items), "dataset": dataset_fingerprint(dataset)}


def check_identities(saved: dict[str, str], current: dict[str, str], where: str | Path) -> None:
    """Refuse a model or checkpoint made for another LLM / CF model / joint table / dataset."""
    for key, label in _LABELS.items():
        if key in saved and key in current and saved[key] != current[key]:
            raise ValueError(f"{where}: this stage-2 model was made for {label} {saved[key]!r}, but {label} {current[key]!r} is given. "
                             "Use the same inputs, another out_dir, or resume=False to start over.")


def save_stage2(model: Stage2Model, out_dir: str | Path, step: int = 0) -> Path:
    """Write ``model.safetensors`` + ``model.json`` (``model.meta`` plus the dims)."""
    out = Path(out_dir)
    save_tensors(out / "model.safetensors", model.state_dict(), metadata={"format": FORMAT, "step": str(step)})
    write_json(out / "model.json", {**model.meta, "format": FORMAT, "dims": {"user": model.user_dim, "item": model.item_dim, "hidden": model.hidden}})
    return out


def load_stage2(path: str | Path, llm: nn.Module | None = None, cf_model: nn.Module | None = None, joint_items: torch.Tensor | None = None,
                device: str | torch.device | None = None, prior: Any = None) -> Stage2Model:
    """Load the stage-2 model of a run folder (``model.json`` + ``model.safetensors``). When
    ``llm``, ``cf_model`` or ``joint_items`` are given they must be the ones it was trained with."""
    path = Path(path)
    meta_path, weights = path / "model.json", path / "model.safetensors"
    if not meta_path.exists() or not weights.exists():
        raise FileNotFoundError(f"{path}: no stage-2 model here (expected model.json + model.safetensors); run `allmrec train` first")
    meta = read_json(meta_path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    tensors = load_tensors(weights)
    check_weights_counter(weights, "step", (meta.get("trainer_state") or {}).get("step"))
    current: dict[str, str] = {}
    if llm is not None:
        current["llm"] = llm_identity(llm)
    if cf_model is not None:
        current["cf"] = cf_identity(cf_model)
    if joint_items is not None:
        current["joint_items"] = tensor_fingerprint(joint_items)
    if prior is not None:
        current["prior"] = prior.identity()
    check_identities(meta.get("identity", {}), current, path)
    config = from_dict(Stage2ModelConfig, meta["stage2"]["model"], where=f"{meta_path}: stage2.model")
    dims = meta["dims"]
    soft_norm = float(tensors["soft_norm"]) if "soft_norm" in tensors else None
    model = Stage2Model(dims["user"], dims["item"], dims["hidden"], config, soft_norm=soft_norm)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise ValueError(f"{weights}: weights do not match the stage-2 config in {meta_path}: {err}") from None
    model.meta = meta
    if device is None and llm is not None:
        device = llm.get_input_embeddings().weight.device
    return model.to(device or "cpu").eval()
