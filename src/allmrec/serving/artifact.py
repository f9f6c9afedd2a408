"""One folder with everything inference needs (``allmrec export RUN DIR``), in safetensors and
JSON only. It mirrors a run folder's layout, so the pipeline's own loaders read it::

    manifest.json                    id, date, library versions, data fingerprint, LLM id + hash,
                                     text encoder, metrics on the test split, sha256 of every file
    config.json                      the run's resolved configuration
    cf/model.{json,safetensors}      the frozen CF model
    stage1/model.{json,safetensors}  the stage-1 autoencoders (+ text_encoder/ when fine-tuned;
                                     a frozen encoder is referenced by source + weight fingerprint)
    stage2/model.{json,safetensors}  the stage-2 projectors and listwise head
    fusion/<name>/model.{json,safetensors}  the fitted fusions (``fusion``: a best-mode stage 2's
                                     prior; ``control``), when the method reads them
    catalogue/items.json             item ids, titles, texts (+ extra text fields), row 0 = padding
    catalogue/text_embeddings.safetensors   Sentence-BERT embeddings Q of every item's text
    catalogue/text_table.safetensors        the frozen text encoder's embeddings (the fusions' text
                                     features; with the fusions)
    catalogue/users.json, users.safetensors user ids, their sequences, stored candidates
    catalogue/meta.json              dataset name, fingerprint, prompt wording, statistics
    added_items.json                 items added while serving (``POST /v1/items``), if any

The LLM is referenced, not copied: ``manifest.llm`` holds its source (``config``) and the hash
:func:`allmrec.llm.loading.llm_source_identity` gives it; loading refuses another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from allmrec.data.dataset import SequenceDataset
from allmrec.pipeline.config import RunConfig
from allmrec.pipeline.resources import Resources, RunFolder
from allmrec.utils.io import load_tensors, read_json, save_tensors, write_json

FORMAT = "allmrec-artifact/1"
MANIFEST = "manifest.json"
ADDED = "added_items.json"
_STEP_FILES = {"cf": ("model.json", "model.safetensors"), "stage1": ("model.json", "model.safetensors", "text_encoder"),
               "stage2": ("model.json", "model.safetensors")}
_FUSION_FILES = ("model.json", "model.safetensors", "done.json")
_VERSIONED = ("allmrec", "torch", "transformers", "sentence-transformers", "numpy", "safetensors", "accelerate")


class ArtifactError(ValueError):
    """An artifact folder that cannot be used (missing or altered file, another LLM)."""


# ---- the catalogue (the dataset without its raw files) ----------------------------------------
def write_catalogue(dataset: SequenceDataset, folder: Path, text_embeddings: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "items.json", {"item_ids": [str(i) for i in dataset.item_ids], "titles": list(dataset.titles), "texts": list(dataset.texts),
                                       "fields": {k: list(v) for k, v in dataset.item_fields.items()}})
    save_tensors(folder / "text_embeddings.safetensors", {"embeddings": text_embeddings.float()})
    lengths = torch.as_tensor([len(s) for s in dataset.sequences], dtype=torch.int64)
    flat = torch.as_tensor(np.concatenate(dataset.sequences) if dataset.sequences else np.zeros(0), dtype=torch.int64)
    save_tensors(folder / "users.safetensors", {"lengths": lengths, "items": flat, "train_users": torch.as_tensor(np.asarray(dataset.train_users, dtype=np.uint8)),
                                                "valid_candidates": torch.as_tensor(dataset.valid_candidates, dtype=torch.int64),
                                                "test_candidates": torch.as_tensor(dataset.test_candidates, dtype=torch.int64)})
    write_json(folder / "users.json", {"user_ids": [str(u) for u in dataset.user_ids]})
    write_json(folder / "meta.json", {"name": dataset.name, "fingerprint": dataset.fingerprint, "wording": dataset.wording, "stats": dataset.stats,
                                      "options": dataset.options})


def read_catalogue(folder: Path) -> tuple[SequenceDataset, torch.Tensor]:
    """``(dataset, text embeddings)`` of a catalogue folder written by :func:`write_catalogue`."""
    items, meta, users = read_json(folder / "items.json"), read_json(folder / "meta.json"), read_json(folder / "users.json")
    tensors = load_tensors(folder / "users.safetensors")
    lengths = tensors["lengths"].numpy()
    sequences = np.split(tensors["items"].numpy(), np.cumsum(lengths)[:-1]) if len(lengths) else []
    for key in ("item_ids", "titles", "texts"):
        if len(items.get(key, [])) != len(items["item_ids"]):
            raise ArtifactError(f"{folder / 'items.json'}: field {key!r} has {len(items.get(key, []))} entries, 'item_ids' {len(items['item_ids'])}")
    ds = SequenceDataset(name=meta["name"], item_ids=np.asarray(items["item_ids"], dtype=str), titles=list(items["titles"]), texts=list(items["texts"]),
                         user_ids=np.asarray(users["user_ids"], dtype=str), sequences=[np.asarray(s, dtype=np.int64) for s in sequences],
                         valid_candidates=tensors["valid_candidates"].numpy(), test_candidates=tensors["test_candidates"].numpy(),
                         train_users=tensors["train_users"].numpy().astype(bool), item_fields=items.get("fields", {}), stats=meta.get("stats", {}),
                         options=meta.get("options", {}), fingerprint=meta.get("fingerprint", ""), wording=meta.get("wording", {}))
    text = load_tensors(folder / "text_embeddings.safetensors")["embeddings"]
    if text.shape[0] != ds.n_items + 1:
        raise ArtifactError(f"{folder / 'text_embeddings.safetensors'}: {text.shape[0]} rows for {ds.n_items + 1} items")
    return ds, text


# ---- resources read from an artifact ---------------------------------------------------------
class ArtifactResources(Resources):
    """:class:`~allmrec.pipeline.resources.Resources` over an artifact folder: the same loaders
    (the folder has a run's layout), the dataset from its catalogue, the stored text embeddings
    (nothing is written to a cache)."""

    def __init__(self, config: RunConfig, root: Path, dataset: SequenceDataset, text_embeddings: torch.Tensor, llm: Any = None) -> None:
        super().__init__(config, RunFolder(root), dataset=lambda: dataset, llm=llm)
        self.text_embeddings = text_embeddings
        table = root / "catalogue" / "text_table.safetensors"
        if table.exists():  # else computed from the text encoder, as in a run folder
            self.__dict__["text_table"] = load_tensors(table)["embeddings"].numpy()

    def joint_items(self, use_text: str = "none") -> torch.Tensor:
        from allmrec.align.stage1 import joint_item_table, untrained_item_mask

        model, _, _ = self.stage1
        ds, mask = self.dataset, None
        if use_text != "none":
            mask = untrained_item_mask(ds) if use_text == "unknown" else np.ones(ds.n_items + 1, dtype=bool)
            mask[0] = False
        with torch.no_grad():
            return joint_item_table(model, self.cf.item_embeddings().detach().float(), self.text_embeddings, mask)


# ---- export ------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest and added items (relative paths)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in (MANIFEST, ADDED) and not p.name.startswith("."):
            out[rel] = file_sha256(p)
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _test_metrics(folder: RunFolder) -> dict[str, Any] | None:
    path = folder.results / "test.json"
    if not path.exists():
        return None
    results = read_json(path)
    return {"split": results.get("split"), "users": results.get("users"), "user_sample_seed": results.get("user_sample_seed"),
            "labels": results.get("labels", {}), "overall": {m: e.get("overall", {}) for m, e in results.get("methods", {}).items()}}


def _copy_steps(res: Resources, needs: tuple[str, ...], tmp: Path) -> None:
    for step in ("cf", "stage1", "stage2"):
        if step not in needs:
            continue
        src = getattr(res.folder, step)
        if not res.folder.finished(step):
            raise ArtifactError(f"{src}: the {step} step has not finished (no done.json); train it before exporting")
        (tmp / step).mkdir()
        for name in _STEP_FILES[step]:
            if (src / name).is_dir():
                shutil.copytree(src / name, tmp / step / name)
            elif (src / name).exists():
                shutil.copy2(src / name, tmp / step / name)
            elif name != "text_encoder":
                raise ArtifactError(f"{src / name}: missing; the {step} step's model is incomplete")


def uses_fusion(res: Resources, method: str) -> bool:
    """Whether ``method`` reads the run's fitted fusions (directly, or as its stage 2's prior)."""
    from allmrec.methods import get_method

    if "fusion" in get_method(method).needs:
        return True
    model = res.folder.stage2 / "model.json"
    if "stage2" not in get_method(method).needs or not model.exists():
        return False
    options = read_json(model)["stage2"]["model"]
    return bool(options.get("residual")) and options.get("prior") == "fusion"


def _copy_fusions(res: Resources, tmp: Path) -> None:
    from allmrec.training import is_finished

    for name in ("fusion", "control"):
        src = res.folder.fusion / name
        if not is_finished(src):
            raise ArtifactError(f"{src}: the fitted fusion {name!r} is missing or unfinished (no done.json); run `allmrec fuse --run {res.folder.root}`")
        (tmp / "fusion" / name).mkdir(parents=True)
        for file in _FUSION_FILES:
            shutil.copy2(src / file, tmp / "fusion" / name / file)


def build_manifest(res: Resources, method: str, root: Path, metrics: dict[str, Any] | None) -> dict[str, Any]:
    from allmrec.llm.loading import llm_source_identity
    from allmrec.methods import get_method

    ds = res.dataset
    stage1 = read_json(root / "stage1" / "model.json") if (root / "stage1" / "model.json").exists() else {}
    stage2 = read_json(root / "stage2" / "model.json") if (root / "stage2" / "model.json").exists() else {}
    llm_cfg = dataclasses.asdict(res.config.llm())
    llm_id = (stage2.get("identity") or {}).get("llm") or llm_source_identity(res.config.llm())
    files = tree_hashes(root)
    content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    enc = (stage1.get("identity") or {}).get("text_encoder", {})
    return {"format": FORMAT, "id": f"{ds.name}-{method}-{content[:12]}", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "method": method,
            "label": get_method(method).label(res), "dataset": {"name": ds.name, "fingerprint": ds.fingerprint, "n_items": ds.n_items, "n_users": ds.n_users},
            "llm": {"config": {k: llm_cfg[k] for k in ("name_or_path", "gguf_file", "dtype")}, "identity": llm_id},
            "text_encoder": {"source": enc.get("source"), "fingerprint": stage1.get("text_encoder_fingerprint"), "saved": (root / "stage1" / "text_encoder").exists()},
            "cf": {"backbone": read_json(root / "cf" / "model.json")["backbone"]}, "stage2": stage2.get("stage2", {}).get("mode"),
            "versions": versions(), "metrics": metrics, "files": files}


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, method: str = "allmrec", sets: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Write the artifact of run folder ``run_dir`` to ``out_dir`` (replaced atomically); returns
    its manifest."""
    from allmrec.methods import get_method
    from allmrec.text.embeddings import item_text_embeddings

    run, out = Path(run_dir).resolve(), Path(out_dir).resolve()
    if not (run / "config.yaml").exists():
        raise FileNotFoundError(f"{run}: not a run folder (no config.yaml)")
    config, _ = RunConfig.layered(run, None, {}, sets)
    res = Resources(config, RunFolder(run))
    needs = tuple(get_method(method).needs)
    if not set(needs) <= {"cf", "stage1", "stage2", "fusion"} or "cf" not in needs:
        raise ValueError(f"method {method!r}: only methods built from the CF model, stage 1, stage 2 and the fusions can be exported "
                         "(allmrec, allmrec-sbert, fusion, cf-text, cf)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        _copy_steps(res, needs, tmp)
        write_json(tmp / "config.json", config.values)
        if "stage1" in needs:
            text = item_text_embeddings(res.stage1[1], res.dataset, batch_size=config.stage1().text_batch_size)
        else:
            text = torch.zeros(res.dataset.n_items + 1, 1)
        write_catalogue(res.dataset, tmp / "catalogue", text)
        if uses_fusion(res, method):
            _copy_fusions(res, tmp)
            save_tensors(tmp / "catalogue" / "text_table.safetensors", {"embeddings": torch.as_tensor(res.text_table).float()})
        manifest = build_manifest(res, method, tmp, _test_metrics(res.folder))
        write_json(tmp / MANIFEST, manifest)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing ``dst`` (renames only: a complete version exists
    throughout); entries get the usual umask-based modes (temporary files are owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [src, *src.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def read_manifest(root: Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of artifact ``root``; with ``verify``, every listed file must hash as recorded."""
    path = root / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{root}: not an allmrec artifact (no {MANIFEST}); write one with `allmrec export RUN {root}`")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: field 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    for key in ("id", "llm", "files", "method"):
        if key not in manifest:
            raise ArtifactError(f"{path}: missing field {key!r}")
    if verify:
        for rel, digest in manifest["files"].items():
            f = root / rel
            if not f.is_file():
                raise ArtifactError(f"{f}: listed in {path} but missing")
            if file_sha256(f) != digest:
                raise ArtifactError(f"{f}: sha256 differs from {path} field 'files'[{rel!r}] (altered or corrupted file)")
    return manifest
