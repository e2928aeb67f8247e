"""A run dir holds one run: fresh runs into a used dir and resumes with other settings are
refused, a damaged latest checkpoint is passed over, a cut-off metrics line is dropped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from train_helpers import make_dataset
from treeclip.cli import cli

FLAGS = ["--model", "micro-vit-32", "--batch-size", "16", "--lr", "2e-3", "--warmup", "2", "--workers", "0",
         "--threads", "1", "--val-every", "0", "--val-samples", "8", "--log-every", "1", "--no-progress",
         "--no-label-set"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("runs") / "ds", per_class=4, val_per_class=1)


def train(dataset: Path, out: Path, *extra: str, code: int = 0):
    result = CliRunner().invoke(cli, ["train", str(dataset), "--out", str(out), *FLAGS, *extra])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def summary_of(result) -> dict:
    """The summary line `treeclip train` prints last (stderr notes may be mixed in)."""
    return json.loads([line for line in result.output.splitlines() if line.startswith("{")][-1])


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "open_clip_model.safetensors"))


def test_a_fresh_run_into_a_used_dir_is_refused(dataset, tmp_path):
    """The issue's case: a 2-step run into a 6-step run's dir mixed their checkpoints and
    then resumed the old run at step 6 with a NaN loss."""
    run = tmp_path / "run"
    train(dataset, run, "--steps", "6", "--save-every", "1")
    result = train(dataset, run, "--steps", "2", code=2)
    assert "holds another run" in result.output and "--overwrite" in result.output
    assert (run / "checkpoints" / "step-00000006").is_dir()  # nothing of the old run was touched
    train(dataset, run, "--steps", "2", "--save-every", "1", "--overwrite")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    result = train(dataset, run, "--steps", "2", "--resume", "latest")
    assert "nothing to do" in result.output
    summary = summary_of(result)
    assert summary["steps"] == 2 and not math.isnan(summary["final_loss"])


def test_resume_with_other_settings_is_refused_unless_allowed(dataset, tmp_path):
    run = tmp_path / "run"
    train(dataset, run, "--steps", "4", "--save-every", "2")
    result = train(dataset, run, "--steps", "4", "--lr", "1e-2", "--resume", "latest", code=2)
    assert "other lr" in result.output and "--allow-changed-settings" in result.output
    # settings that cannot change the weights may differ
    train(dataset, run, "--steps", "4", "--log-every", "2", "--resume", "latest")
    # more steps, knowingly
    result = train(dataset, run, "--steps", "6", "--resume", "latest", "--allow-changed-settings")
    assert summary_of(result)["steps"] == 6


def test_a_damaged_latest_checkpoint_is_passed_over(dataset, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(dataset, whole, "--steps", "4", "--save-every", "1")
    train(dataset, resumed, "--steps", "4", "--save-every", "1")
    # the newest checkpoint damaged (a torn file), the final model not written yet
    for name in ("model", "best", "summary.json"):
        path = resumed / name
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    latest = resumed / "checkpoints" / "step-00000004"
    (latest / "state.pt").write_bytes((latest / "state.pt").read_bytes()[:100])  # torn file
    # a cut-off last metrics line, as a kill during a write leaves it
    metrics = resumed / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"type": "train", "step": 4, "lo')
    result = train(dataset, resumed, "--steps", "4", "--save-every", "1", "--resume", "latest")
    assert "unreadable checkpoint" in result.output and "step-00000003" in result.output
    assert "not a whole metrics record" in result.output and "Traceback" not in result.output
    a, b = weights(whole / "model"), weights(resumed / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    def lines(run: Path) -> list[tuple]:
        return [(r["type"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert lines(resumed) == lines(whole) == [("train", 1), ("train", 2), ("train", 3), ("train", 4), ("val", 4)]


def test_no_readable_checkpoint_is_one_line(dataset, tmp_path):
    run = tmp_path / "run"
    train(dataset, run, "--steps", "2", "--save-every", "1")
    for checkpoint in (run / "checkpoints").iterdir():
        (checkpoint / "model.safetensors").write_bytes(b"garbage")
    result = train(dataset, run, "--steps", "2", "--resume", "latest", code=2)
    assert "no checkpoint reads back (2 tried)" in result.output
