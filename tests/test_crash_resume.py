"""Crash-resume at any point (issue 14, item 2): every long step, run as a child process, is
SIGKILLed at seeded moments (one per kind of fault point in a chain: inside a checkpoint's
temporary folder, the checkpoint's renames and pointer, a training step, any atomic write, the
end of training; plus the moments where bugs were found), resumed, and its files compared with
an uninterrupted run's, bit for bit (timings aside). The toy task is killed at *every* fault
point. See ``tests/crash_harness.py`` and docs/robustness.md; ``benchmarks/crash_resume.py`` is
the larger sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import crash_cases
import crash_harness as harness

CASES = ["cf", "stage1", "stage2-best", "stage2-paper", "tallrec", "experiment", "predict"]


@pytest.fixture(scope="module")
def crash_runner(tmp_path_factory):
    harness.preload()
    return crash_cases.runner(tmp_path_factory.mktemp("crash"))


@pytest.mark.parametrize("name", CASES)
def test_a_step_killed_anywhere_resumes_to_the_same_files(crash_runner, name):
    case = crash_cases.cases(crash_runner.root)[name]
    if case.skip:
        pytest.skip(case.skip)
    result = harness.run_case(crash_runner, case, seed=2024, chains=1, min_kills=5)
    summary = result.summary()
    assert result.kills >= 5, summary
    assert not summary["failed_resumes"] and not result.mismatches and not summary["leftover_tmp"], json.dumps(summary, indent=1)
    assert set(case.kinds) <= set(summary["kills_by_kind"]), summary["kills_by_kind"]


def test_the_harness_sees_a_broken_resume(crash_runner, monkeypatch):
    """The check can fail: a resume that forgets the optimizer's moments (patched in the parent,
    so the forked children inherit it) gives other weights, and the harness names them."""
    import allmrec.training as training

    case = crash_cases.cases(crash_runner.root)["cf"]
    crash_runner.reference(case)  # the uninterrupted run, before the patch
    original = training._resume

    def forgetful(task, out, state):
        state = original(task, out, state)
        task.optimizer.state.clear()
        return state

    monkeypatch.setattr(training, "_resume", forgetful)
    trial = crash_runner.trial(case, [harness.Kill(20, kind="step")], "broken")
    assert trial["kills"] == 1 and any("cf/model.safetensors" in m for m in trial["mismatches"]), trial


# ---- the toy task of tests/test_training.py, killed at every fault point ------------------------------
def _toy_run(out: Path):
    def run() -> None:
        import torch
        from test_training import Regression

        from allmrec.training import LoopOptions, run_training

        class Validated(Regression):
            def validate(self):  # a function of the weights, as a real validation is
                with torch.no_grad():
                    return {"score": -float(((self.w(self.x) - self.y) ** 2).mean())}

        task = Validated()
        state = run_training(task, LoopOptions(epochs=2, checkpoint_every=4, keep_checkpoints=2, validate_every_epochs=1, select="score",
                                               progress=False), out)
        from allmrec.utils.io import save_tensors, write_json

        save_tensors(out / "final.safetensors", task.w.state_dict())
        write_json(out / "final.json", {k: state[k] for k in ("step", "epoch", "history", "loss_log", "epoch_loss", "best", "bad_evals")})

    return run


def test_the_toy_task_killed_at_every_fault_point(tmp_path):
    """2 epochs of 8 steps, a checkpoint every 4 steps and at epoch ends, 2 kept, validation per
    epoch: killed at each of its fault points in turn (atomic writes torn at every other one)."""
    import test_training  # noqa: F401 - imported once here, not in every child

    harness.preload()
    ref = tmp_path / "ref"
    r = harness.run_child(_toy_run(ref), tmp_path / "ref.log")
    assert r.rc == 0, (tmp_path / "ref.log").read_text()
    reference, _ = harness.snapshot(tmp_path, ("ref",))
    reference = {k.replace("ref/", "", 1): v for k, v in reference.items()}
    assert {"checkpoint-write", "checkpoint", "step", "write", "finish"} <= {harness.kind(p) for p in r.points}
    for index in range(1, len(r.points) + 1):
        work = tmp_path / f"kill-{index}"
        killed = harness.run_child(_toy_run(work), tmp_path / f"kill-{index}.log", faults=f"kill={index};tear={index % 2}")
        assert killed.rc == -9, (index, r.points[index - 1], (tmp_path / f"kill-{index}.log").read_text())
        resumed = harness.run_child(_toy_run(work), tmp_path / f"resume-{index}.log")
        assert resumed.rc == 0, (index, r.points[index - 1], (tmp_path / f"resume-{index}.log").read_text())
        got, garbage = harness.snapshot(tmp_path, (work.name,))
        got = {k.replace(f"{work.name}/", "", 1): v for k, v in got.items()}
        assert not garbage and harness.differences(reference, got, work) == [], (index, r.points[index - 1])


def test_tensor_files_are_the_same_bytes_in_every_process(tmp_path):
    """safetensors keeps metadata in a per-process seeded hash map; the header is written sorted."""

    def write(path):
        def run():
            import torch

            from allmrec.utils.io import save_tensors

            save_tensors(path, {"b": torch.arange(3.0), "a": torch.ones(2, 2)}, metadata={"step": "7", "format": "f", "key": "k"})

        return run

    for k in range(4):
        assert harness.run_child(write(tmp_path / f"{k}.safetensors"), tmp_path / f"{k}.log").rc == 0
    assert len({(tmp_path / f"{k}.safetensors").read_bytes() for k in range(4)}) == 1
