"""A trained CF model's files: ``model.safetensors`` (weights) and ``model.json`` (backbone name,
its config, the dataset it was trained on and training information). The model's identity is
read from these files, never from the current configuration."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from allmrec.cf.base import CFBackbone
from allmrec.cf.registry import get_backbone_class
from allmrec.config import from_dict
from allmrec.data.dataset import SequenceDataset
from allmrec.utils.fingerprint import dataset_fingerprint
from allmrec.utils.io import check_weights_counter, load_tensors, read_json, save_tensors, write_json

MODEL_FORMAT = "allmrec-cf/1"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=list))


def saved_backbone(path: str | Path) -> str:
    """The backbone name recorded in a CF model folder's ``model.json``."""
    meta_path = Path(path) / "model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found; a CF model folder holds model.json and model.safetensors (written by train_cf)")
    meta = read_json(meta_path)
    if "backbone" not in meta:
        raise ValueError(f"{meta_path}: missing field 'backbone'")
    return str(meta["backbone"])


def save_cf(model: CFBackbone, out_dir: str | Path, dataset: SequenceDataset | None = None, **info: Any) -> Path:
    """Write ``model.safetensors`` + ``model.json`` (backbone name, config, dataset, ``info``)."""
    out_dir = Path(out_dir)
    epoch = int(info.get("epoch", 0))
    save_tensors(out_dir / "model.safetensors", model.state_dict(), metadata={"format": MODEL_FORMAT, "epoch": str(epoch)})
    meta: dict[str, Any] = {"format": MODEL_FORMAT, "backbone": model.name, "config": dataclasses.asdict(model.config)}
    if dataset is not None:
        meta["dataset"] = {"name": dataset.name, "fingerprint": dataset_fingerprint(dataset), "n_users": dataset.n_users, "n_items": dataset.n_items}
    meta.update(info)
    meta["epoch"] = epoch
    write_json(out_dir / "model.json", _jsonable(meta))
    return out_dir


def load_cf(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    dataset: SequenceDataset | None = None,
    item_features: torch.Tensor | None = None,
) -> CFBackbone:
    """Load a backbone saved by :func:`train_cf` / :func:`save_cf`.

    ``path`` is the run folder or its ``model.json`` / ``model.safetensors``. The backbone must
    be registered (import the module defining a user-made backbone first). Returns the model in
    eval mode on ``device``.

    Backbones that read item features not stored in the checkpoint (``needs_item_text``, e.g.
    MoRec's text table) need ``dataset`` (the features are recomputed, normally from a cache) or
    ``item_features``; the backbone checks they are the ones it was trained with.
    """
    path = Path(path)
    folder = path.parent if path.suffix in (".json", ".safetensors") else path
    meta_path, weights_path = folder / "model.json", folder / "model.safetensors"
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found; a CF model folder holds model.json and model.safetensors (written by train_cf)")
    meta = read_json(meta_path)
    for key in ("backbone", "config"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing field {key!r}")
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{meta_path}: field 'format' is {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    try:
        cls = get_backbone_class(meta["backbone"])
    except KeyError as err:
        raise ValueError(f"{meta_path}: field 'backbone': {err.args[0]} (import the module that registers it)") from None
    config = from_dict(cls.config_class, meta["config"], where=f"{meta_path}: config")
    model = cls(config)
    try:
        tensors = load_tensors(weights_path)
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{weights_path}: unreadable safetensors file ({err})") from err
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights_path}: weights do not match the {meta['backbone']!r} config in {meta_path}: {err}") from err
    if getattr(cls, "needs_item_text", False):
        if dataset is None and item_features is None:
            raise ValueError(f"{meta_path}: backbone {meta['backbone']!r} reads item text features that are not saved; pass dataset= (to recompute them) or item_features=")
        try:
            features, _ = cls.prepare_item_features(dataset, dataclasses.asdict(config), item_features)
            model.set_item_features(features)
        except ValueError as err:
            raise ValueError(f"{meta_path}: {err}") from None
    elif item_features is not None:
        raise ValueError(f"{meta_path}: backbone {meta['backbone']!r} takes no item features")
    check_weights_counter(weights_path, "epoch", meta.get("epoch"))
    return model.to(device).eval()
