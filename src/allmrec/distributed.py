"""Data-parallel training on several processes, under ``torchrun`` or ``accelerate launch``
(the process group is started by Accelerate's ``PartialState``: gloo on CPU, NCCL on GPU).

Every process draws the same seeded global batch (the samplers are seeded per epoch, so they
agree without talking), computes the loss on its contiguous share of the rows
(:func:`local_rows`), and :func:`step` all-reduces the gradients weighted by each share's part
of the batch's loss normaliser (rows, or target tokens for a token-mean loss) before every
process takes the same optimizer step. The result is the gradient of the global batch, so a
run on N processes follows the single-process run up to float summation order. With one
process nothing here runs: :func:`step` is ``zero_grad, backward, step`` as before.

Only the main process (rank 0) writes checkpoints and models (:func:`is_main`); the others
wait at a :func:`barrier` and read what it wrote.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (dist.is_available() and dist.is_initialized()):
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def local_rows(n: int) -> slice:
    """This process's contiguous share of ``n`` rows (all of them on one process)."""
    w, r = world_size(), rank()
    return slice(n * r // w, n * (r + 1) // w)


def _device(optimizer: torch.optim.Optimizer) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def reduce_gradients(optimizer: torch.optim.Optimizer, weight: float) -> None:
    """``grad = sum over processes of weight_r * grad_r`` for every parameter of ``optimizer``
    (one all-reduce); a parameter no process has a gradient for keeps ``grad = None``."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    if not params:
        return
    device = _device(optimizer)
    had = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).to(device, torch.float32) * weight for p in params])
    dist.all_reduce(had)
    dist.all_reduce(flat)
    offset = 0
    for p, seen in zip(params, had.tolist()):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.device, p.dtype).clone() if seen else None
        offset += n


def step(optimizer: torch.optim.Optimizer, compute: Callable[[], tuple[torch.Tensor | None, float, Sequence[float]]], n_extra: int = 0) -> tuple[float, list[float]]:
    """One optimizer step on the global batch. ``compute()`` returns this process's loss (a
    mean over its share of the rows; ``None`` for an empty share), the share's normaliser count
    (rows or tokens) and ``n_extra`` more per-share means to average the same way (logged loss
    parts). Returns the global loss and the global extras."""
    optimizer.zero_grad(set_to_none=True)
    loss, count, extras = compute()
    if world_size() == 1:
        loss.backward()
        optimizer.step()
        return float(loss.detach()), [float(e) for e in extras]
    total = all_sum([count])[0]
    weight = count / total if total > 0 else 0.0
    if loss is not None:
        loss.backward()
    reduce_gradients(optimizer, weight)
    optimizer.step()
    local = [float(loss.detach()), *map(float, extras)] if loss is not None else [0.0] * (1 + n_extra)
    sums = all_sum([weight * v for v in local])
    return sums[0], sums[1:]
