"""The one training loop on a toy task: checkpoint layout, exact resume at any checkpoint (mid-
epoch too), the finished marker, early stopping, refusals with clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from allmrec.training import DONE, LoopOptions, TrainingTask, is_finished, latest_checkpoint, run_training
from allmrec.utils.seed import rng, torch_seed


class Regression(TrainingTask):
    """Linear regression with dropout on seeded random batches (8 steps per epoch)."""

    name = "toy"
    format = "toy/1"

    def __init__(self, lr: float = 0.05, crash_at: int | None = None, valid: list[float] | None = None) -> None:
        torch.manual_seed(0)
        self.w = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.Adam(self.w.parameters(), lr=lr)
        self.lr, self.crash_at, self.valid, self.calls = lr, crash_at, list(valid or []), 0
        gen = np.random.default_rng(0)
        self.x = torch.tensor(gen.normal(size=(64, 4)), dtype=torch.float32)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.kept: list[int] = []

    def steps_per_epoch(self) -> int:
        return 8

    def identity(self):
        return {"lr": self.lr}

    def trained_state(self):
        return self.w.state_dict()

    def load_trained_state(self, tensors):
        self.w.load_state_dict(tensors)

    def start_epoch(self, epoch):
        self.order = rng(1, "toy", epoch).permutation(64)

    def step(self, epoch, index):
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise KeyboardInterrupt
        torch.manual_seed(torch_seed(1, "toy-dropout", epoch, index))
        rows = torch.as_tensor(self.order[index * 8 : (index + 1) * 8])
        pred = self.w(torch.nn.functional.dropout(self.x[rows], 0.1))
        loss = ((pred - self.y[rows]) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss)

    def validate(self):
        return {"score": self.valid.pop(0) if self.valid else 0.0}

    def keep_best(self, epoch, metrics):
        self.kept.append(epoch)


def _weights(task):
    return [p.detach().clone() for p in task.w.parameters()]


def test_layout_and_finished_marker(tmp_path):
    task = Regression()
    state = run_training(task, LoopOptions(epochs=3, checkpoint_every=5, log_every=4, progress=False), tmp_path)
    assert state["step"] == 24 and state["epoch"] == 3 and len(state["history"]) == 3
    assert state["loss_log"][-1][0] == 24 and state["history"][-1]["loss"] < state["history"][0]["loss"]
    assert is_finished(tmp_path) and json.loads((tmp_path / DONE).read_text())["step"] == 24
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step-00000024" and sorted(p.name for p in ckpt.iterdir()) == ["optimizer.safetensors", "trainer_state.json", "weights.safetensors"]
    assert len(list((tmp_path / "checkpoints").iterdir())) == 1  # keep_checkpoints=1
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".step-*"))


@pytest.mark.parametrize("crash_at", [3, 8, 13, 17])
def test_resume_from_any_checkpoint_is_bit_identical(tmp_path, crash_at):
    opts = LoopOptions(epochs=3, checkpoint_every=3, progress=False)
    full = Regression()
    full_state = run_training(full, opts, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run_training(Regression(crash_at=crash_at), opts, tmp_path / "part")
    assert not is_finished(tmp_path / "part")
    resumed = Regression()
    state = run_training(resumed, opts, tmp_path / "part")
    assert all(torch.equal(a, b) for a, b in zip(_weights(full), _weights(resumed)))
    assert state["loss_log"] == full_state["loss_log"] and state["epoch_loss"] == full_state["epoch_loss"]


def test_a_finished_run_trains_no_further_and_more_epochs_continue(tmp_path):
    opts = LoopOptions(epochs=2, progress=False)
    first = Regression()
    run_training(first, opts, tmp_path)
    again = Regression()
    state = run_training(again, opts, tmp_path)
    assert again.calls == 0 and state["step"] == 16 and all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(again)))
    longer = Regression()
    assert run_training(longer, LoopOptions(epochs=3, progress=False), tmp_path)["step"] == 24 and longer.calls == 8
    with pytest.raises(ValueError, match=r"holds 24 steps \(3 epochs\) but only 16 steps \(2 epochs\)"):
        run_training(Regression(), opts, tmp_path)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    task = Regression(valid=[0.5, 0.7, 0.6, 0.6, 0.9])
    state = run_training(task, LoopOptions(epochs=10, validate_every_epochs=1, patience=2, select="score", progress=False), tmp_path)
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4] and task.kept == [1, 2]
    assert state["best"] == {"metric": 0.7, "epoch": 2} and state["bad_evals"] == 2
    assert all("valid" in h and "eval_seconds" in h for h in state["history"])


def test_refusals_name_what_differs(tmp_path):
    run_training(Regression(), LoopOptions(epochs=1, progress=False), tmp_path)
    with pytest.raises(ValueError, match="other lr"):
        run_training(Regression(lr=0.1), LoopOptions(epochs=2, progress=False), tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    (ckpt / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="weights.safetensors: corrupt checkpoint: SHA-256"):
        run_training(Regression(), LoopOptions(epochs=2, progress=False), tmp_path)
    # A half-written checkpoint folder (a crash mid-write) is never pointed at: the pointer is written last.
    (tmp_path / "checkpoints" / ".step-00000009.abc").mkdir()
    (tmp_path / "latest.json").write_text(json.dumps({"step": 9, "path": "checkpoints/step-00000009"}))
    with pytest.raises(ValueError, match="holds no checkpoint"):
        latest_checkpoint(tmp_path)
    state = run_training(Regression(), LoopOptions(epochs=1, progress=False), tmp_path, resume=False)  # start over
    assert state["step"] == 8


def test_non_finite_loss_stops_with_the_step(tmp_path):
    task = Regression()
    task.step = lambda epoch, index: float("nan")
    with pytest.raises(FloatingPointError, match="non-finite loss nan at step 0"):
        run_training(task, LoopOptions(epochs=1, progress=False), Path(tmp_path))


# ---- checkpoints after a crash (the crash harness, tests/test_crash_resume.py, kills real runs) ----------
def test_a_corrupt_checkpoint_is_refused_with_the_file_named(tmp_path):
    opts = LoopOptions(epochs=1, progress=False)
    run_training(Regression(), opts, tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    weights = ckpt / "weights.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one flipped bit, still a valid safetensors file
    with pytest.raises(ValueError, match=r"weights.safetensors: corrupt checkpoint: SHA-256 .* but trainer_state.json records"):
        run_training(Regression(), LoopOptions(epochs=2, progress=False), tmp_path)
    weights.write_bytes(good)
    (ckpt / "optimizer.safetensors").unlink()
    with pytest.raises(ValueError, match=r"optimizer.safetensors: corrupt checkpoint: SHA-256 missing"):
        run_training(Regression(), LoopOptions(epochs=2, progress=False), tmp_path)
    run_training(Regression(), opts, tmp_path, resume=False)
    state_file = latest_checkpoint(tmp_path) / "trainer_state.json"
    saved = json.loads(state_file.read_text())
    saved["loss_log"][0][1] += 1.0  # valid JSON, wrong content
    state_file.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="does not match its recorded checksum"):
        run_training(Regression(), LoopOptions(epochs=2, progress=False), tmp_path)
    state_file.write_text(state_file.read_text()[:40])  # cut short
    with pytest.raises(ValueError, match=r"corrupt checkpoint: .*trainer_state.json: line 1: invalid JSON"):
        run_training(Regression(), LoopOptions(epochs=2, progress=False), tmp_path)


def test_a_partial_checkpoint_and_stray_temporary_files_are_ignored_then_removed(tmp_path):
    opts = LoopOptions(epochs=2, progress=False)
    full = Regression()
    run_training(full, opts, tmp_path / "full")
    run_training(Regression(), LoopOptions(epochs=1, progress=False), tmp_path / "part")
    part = tmp_path / "part"
    # What a kill leaves: a half-written temporary checkpoint, torn atomic writes, and a complete
    # checkpoint folder of a later step whose pointer never moved (all with wrong content).
    (part / "checkpoints" / ".step-00000012.abc").mkdir()
    (part / "checkpoints" / ".step-00000012.abc" / "weights.safetensors").write_bytes(b"half")
    (part / ".latest.json.x1.tmp").write_text('{"step": 12, "path": "checkp')
    (part / ".model.json.x2.tmp").write_text("")
    stale = part / "checkpoints" / "step-00000012"
    (stale).mkdir()
    (stale / "trainer_state.json").write_text("{}")
    resumed = Regression()
    run_training(resumed, opts, part)
    assert all(torch.equal(a, b) for a, b in zip(_weights(full), _weights(resumed)))
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["step-00000016"]
    assert not list(part.rglob(".*"))


def test_saving_a_step_again_replaces_only_its_state_file(tmp_path, monkeypatch):
    """The last step is saved at its epoch's end and again when training ends (and when a finished
    run is re-opened): the folder latest.json points to is never deleted, not even for a moment."""
    import allmrec.checkpoint as checkpoint

    removed = []
    real_rmtree = checkpoint.shutil.rmtree
    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda path, *a, **k: (removed.append(Path(path).name), real_rmtree(path, *a, **k)))
    run_training(Regression(), LoopOptions(epochs=1, progress=False), tmp_path)
    run_training(Regression(), LoopOptions(epochs=1, progress=False), tmp_path)  # re-opened: saves step 8 again
    assert "step-00000008" not in removed and latest_checkpoint(tmp_path).name == "step-00000008"
    assert json.loads((latest_checkpoint(tmp_path) / "trainer_state.json").read_text())["files"].keys() == {"weights.safetensors", "optimizer.safetensors"}


def test_an_epochs_last_step_is_saved_once_after_its_bookkeeping(tmp_path, monkeypatch):
    """A step checkpoint at an epoch's last step, before the epoch's history record, let a crash
    between the two lose the record (found by the crash harness in stage 2's paper mode)."""
    import allmrec.training as training

    saved = []
    real = training.save_checkpoint
    monkeypatch.setattr(training, "save_checkpoint", lambda out, task, state, keep: (saved.append((state["step"], len(state["history"]))), real(out, task, state, keep))[1])
    run_training(Regression(), LoopOptions(epochs=2, checkpoint_every=4, progress=False), tmp_path)
    assert saved == [(4, 0), (8, 1), (12, 1), (16, 2), (16, 2)]  # 8 and 16 only with their epoch's record; 16 again at the end
