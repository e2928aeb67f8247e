"""Fault injection: the real CLI killed with SIGKILL at chosen points of its work, then the
same command again with `--resume`; the output must be byte-identical to a run that was
never interrupted.

`run_killed` runs a command in its own process group and steps it: it lets it run for a
moment, stops the whole group (SIGSTOP), checks the kill condition on what is on disk,
and either lets it go on (SIGCONT) or kills the group (SIGKILL). So the state a test sees
after the kill is exactly the state the condition saw, and a condition that is never met
(the command finished first) fails the test instead of passing it unkilled. To add a
command: a reference run, a condition on its output folder, and a check that the kill
really happened mid-run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from _data_helpers import AMANITA, MORUS, PICA, save, scene
from treeclip.errors import TreeclipError

pytestmark = [pytest.mark.faults, pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="POSIX signals")]

STEP_S = 0.002
"""How long the command runs between two checks of the kill condition."""


# -- the helper -------------------------------------------------------------------------


def treeclip(*args: str) -> list[str]:
    """The command line of `treeclip ARGS` as a user runs it (this checkout's code)."""
    return [sys.executable, "-m", "treeclip", *args]


def run(args: list[str], log: Path) -> int:
    """Run a command to its end; its exit status (stdout and stderr go to `log`)."""
    with open(log, "ab") as f:
        return subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, timeout=600).returncode


def run_killed(args: list[str], kill_when: Callable[[], bool], log: Path, *, timeout_s: float = 600) -> None:
    """Run `args`, stepping it, and SIGKILL its process group (workers too) the first time
    `kill_when()` holds while it is stopped. Fails the test if the command ends first."""
    with open(log, "ab") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s  # a guard against a hung command, not a timing assert
    try:
        while time.monotonic() < deadline:
            time.sleep(STEP_S)
            os.killpg(proc.pid, signal.SIGSTOP)
            status = _stopped(proc.pid)
            if status is not None and not os.WIFSTOPPED(status):
                proc.returncode = os.waitstatus_to_exitcode(status)
                pytest.fail(f"{' '.join(args[2:])} finished (exit {proc.returncode}) before the kill "
                            f"condition held:\n{log.read_text(errors='replace')[-2000:]}")
            if status is not None and kill_when():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                assert proc.returncode == -signal.SIGKILL
                return
            os.killpg(proc.pid, signal.SIGCONT)
        pytest.fail(f"{' '.join(args[2:])} still running after {timeout_s} s")
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _stopped(pid: int, patience_s: float = 0.2) -> int | None:
    """The wait status once `pid` has stopped (or ended), or None if it does not stop in
    time: a process inside vfork() (Python starts helpers that way) cannot stop until its
    child has exec'd, and that child may be the one stopped. Then it goes on a step."""
    give_up = time.monotonic() + patience_s
    while True:
        got, status = os.waitpid(pid, os.WUNTRACED | os.WNOHANG)
        if got:
            return status
        if time.monotonic() > give_up:
            return None
        time.sleep(0.0005)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (hidden ones too) by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- data build ---------------------------------------------------------------------------

N_IMAGES = 60
CHUNK = 2
N_CHUNKS = -(-(N_IMAGES + 1) // CHUNK)  # the good images and one broken file
BUILD = ("--no-resolve", "--size", "32", "--chunk-size", str(CHUNK), "--shard-size", "1", "--val-fraction", "0.05",
         "-q")


@pytest.fixture(scope="module")
def build_src(tmp_path_factory) -> dict[str, Path]:
    """Source images (one of them broken, so the report has a row), a reference build
    never interrupted, and another finished dataset (other seed) to rebuild over."""
    root = tmp_path_factory.mktemp("faults-build")
    src = root / "src"
    for i in range(N_IMAGES):
        save(scene(i, 320, 240), src / (PICA, MORUS, AMANITA)[i % 3] / f"p{i:03d}.jpg")
    (src / PICA / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    log = root / "log.txt"
    for name, seed in (("reference", "0"), ("other", "1")):
        code = run(treeclip("data", "build", str(root / name), "--folder", str(src), *BUILD, "--workers", "1",
                            "--seed", seed), log)
        assert code == 1, log.read_text()  # finished, one input failed
    return {"src": src, "reference": root / "reference", "other": root / "other"}


def _staged(out: Path) -> int:
    return len(list((out / ".build").glob("chunk-*.json")))


def _shards(out: Path) -> list[Path]:
    return list((out / "train").glob("shard-*.tar")) if (out / "train").is_dir() else []


def _shard_temporaries(out: Path) -> list[Path]:
    return list((out / "train").glob(".shard-*.tmp")) if (out / "train").is_dir() else []


def _refused_as_unfinished(out: Path) -> None:
    from treeclip.data.dataset import read_manifest, read_taxa

    for read in (read_manifest, read_taxa):
        with pytest.raises(TreeclipError, match="unfinished dataset .*--resume"):
            read(out)


def _check_early(out: Path) -> None:
    assert (out / ".build" / "plan.json").exists() and _staged(out) < N_CHUNKS
    assert _shards(out), "the old dataset's shards are still there ..."
    _refused_as_unfinished(out)  # ... but it no longer passes for a finished dataset


def _check_processing(out: Path) -> None:
    assert 5 <= _staged(out) < N_CHUNKS and not _shards(out)
    _refused_as_unfinished(out)


def _check_writing(out: Path) -> None:
    assert _staged(out) == N_CHUNKS and 10 <= len(_shards(out)) < N_IMAGES
    assert _shard_temporaries(out), "killed while a shard was being written"
    assert not (out / "catalog.parquet").exists()
    _refused_as_unfinished(out)


BUILD_KILLS = {
    # a rebuild over a finished dataset, killed once the plan is written
    "early-rebuild": (1, lambda out: (out / ".build" / "plan.json").exists(), _check_early),
    "processing": (1, lambda out: _staged(out) >= 5, _check_processing),
    "processing-parallel": (2, lambda out: _staged(out) >= 5, _check_processing),
    # in the final write: 10 shards renamed into place and the next one half-written
    "final-write": (1, lambda out: len(_shards(out)) >= 10 and bool(_shard_temporaries(out)), _check_writing),
}


@pytest.mark.parametrize("case", sorted(BUILD_KILLS))
def test_data_build_killed_then_resumed_is_byte_identical(build_src, tmp_path, case):
    workers, kill_when, check_killed = BUILD_KILLS[case]
    out = tmp_path / "out"
    if case == "early-rebuild":
        shutil.copytree(build_src["other"], out)
    args = treeclip("data", "build", str(out), "--folder", str(build_src["src"]), *BUILD, "--workers", str(workers))
    log = tmp_path / "log.txt"
    run_killed(args, lambda: kill_when(out), log)
    check_killed(out)
    assert run(args + ["--resume"], log) == 1, log.read_text()
    reference, resumed = tree(build_src["reference"]), tree(out)
    assert sorted(resumed) == sorted(reference)  # nothing missing, no temporaries or work files left
    assert resumed == reference


# -- predict and embed ------------------------------------------------------------------

N_PHOTOS = 40


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """A folder of photos (one broken), a tiny model dir with its taxa, and the reference
    outputs of uninterrupted runs."""
    from predict_helpers import save_model_dir

    root = tmp_path_factory.mktemp("faults-predict")
    for i in range(N_PHOTOS):
        save(scene(i, 96, 72), root / "photos" / f"p{i:03d}.jpg")
    (root / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 cut short")
    model = save_model_dir(root / "model")
    log = root / "log.txt"
    for verb, out in (("predict", root / "reference.csv"), ("embed", root / "reference.parquet")):
        assert run(_infer_args(verb, model, root / "photos", out), log) == 1, log.read_text()
    return {"root": root, "model": model, "photos": root / "photos"}


def _infer_args(verb: str, model: Path, photos: Path, out: Path) -> list[str]:
    """fp32 in batches of 3, so kills land between batches and a resumed run's batches
    hold other images: each image's answer does not depend on its batch mates (the
    encoder runs one image per call), so the resumed run writes the same bytes."""
    common = ["--precision", "fp32", "--batch-size", "3", "--workers", "0", "-q", "-o", str(out)]
    if verb == "predict":
        return treeclip("predict", str(model), str(photos), "--templates", "single", "--k", "2", *common)
    return treeclip("embed", str(model), str(photos), "--chunk-size", "4", *common)


def _rows(out: Path) -> int:
    return max(0, len(out.read_bytes().splitlines()) - 1) if out.exists() else 0


def _chunks(out: Path) -> int:
    parts = out.with_name(out.name + ".parts")
    return len(list(parts.glob("*.parquet"))) if parts.is_dir() else 0


INFER_KILLS = {
    # predict: killed after a few batches, and again later (the resumed run's own rows)
    "predict-early": ("predict", lambda out: _rows(out) >= 6),
    "predict-late": ("predict", lambda out: _rows(out) >= 2 * N_PHOTOS - 10),
    # embed: killed with a few chunks kept and the output not yet written
    "embed-chunks": ("embed", lambda out: _chunks(out) >= 3),
}


@pytest.mark.parametrize("case", sorted(INFER_KILLS))
def test_predict_and_embed_killed_then_rerun_are_byte_identical(photos, tmp_path, case):
    verb, kill_when = INFER_KILLS[case]
    out = tmp_path / ("out.csv" if verb == "predict" else "out.parquet")
    args = _infer_args(verb, photos["model"], photos["photos"], out)
    log = tmp_path / "log.txt"
    run_killed(args, lambda: kill_when(out), log)
    if verb == "predict":
        assert 0 < _rows(out) < 2 * (N_PHOTOS + 1) - 1  # killed mid-run, some rows written
    else:
        assert not out.exists() and _chunks(out) >= 3
    assert run(args, log) == 1, log.read_text()  # the same command resumes
    reference = photos["root"] / ("reference.csv" if verb == "predict" else "reference.parquet")
    assert out.read_bytes() == reference.read_bytes()
    assert not out.with_name(out.name + ".parts").exists()


# -- train --------------------------------------------------------------------------------

TRAIN = ("--model", "micro-vit-32", "--steps", "8", "--batch-size", "16", "--lr", "2e-3", "--warmup", "2",
         "--workers", "0", "--threads", "1", "--save-every", "1", "--val-every", "4", "--val-samples", "8",
         "--no-progress", "--no-label-set")


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory) -> dict[str, Path]:
    from train_helpers import make_dataset

    root = tmp_path_factory.mktemp("faults-train")
    data = make_dataset(root / "ds", per_class=4, val_per_class=1)
    assert run(treeclip("train", str(data), "--out", str(root / "reference"), *TRAIN), root / "log.txt") == 0
    return {"data": data, "reference": root / "reference"}


def _checkpoint_steps(run_dir: Path) -> list[str]:
    root = run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


TRAIN_KILLS = {
    "after-a-checkpoint": lambda run_dir: "step-00000003" in _checkpoint_steps(run_dir),
    # while a checkpoint is being written (its hidden temporary dir exists)
    "writing-a-checkpoint": lambda run_dir: any(s.startswith(".tmp-step-00000005") for s in _checkpoint_steps(run_dir)),
}


@pytest.mark.parametrize("case", sorted(TRAIN_KILLS))
def test_train_killed_then_resumed_has_bit_identical_weights(train_reference, tmp_path, case):
    run_dir = tmp_path / "run"
    args = treeclip("train", str(train_reference["data"]), "--out", str(run_dir), *TRAIN)
    log = tmp_path / "log.txt"
    run_killed(args, lambda: TRAIN_KILLS[case](run_dir), log)
    assert not (run_dir / "model").exists()
    assert run(args + ["--resume", "latest"], log) == 0, log.read_text()
    for name in ("open_clip_model.safetensors",):
        assert (run_dir / "model" / name).read_bytes() == (train_reference["reference"] / "model" / name).read_bytes()
    assert (run_dir / "best" / "open_clip_model.safetensors").read_bytes() == \
        (train_reference["reference"] / "best" / "open_clip_model.safetensors").read_bytes()
