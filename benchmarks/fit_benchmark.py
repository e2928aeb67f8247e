"""`treeclip fit` and `predict --head` on the synthetic tree, against the tree-of-life path.

Takes a trained model and the synthetic dataset it was trained on, splits the evaluation
photos of a task (default `synth-unseen`: species the model never saw in training) per
species into `--shots` labelled photos and the rest held out, and measures in one run:

- `fit`: seconds to embed the labelled photos and fit both heads with cross-validation;
- accuracy on the held-out photos: the fitted head, and zero-shot over the same species
  (the model's own text embeddings of their names; the paper's comparison: few-shot
  heads against zero-shot on species the text never named in training);
- img/s of `predict --head` and of the tree-of-life `predict` (zero-shot over the task's
  species) on the held-out photos, same precision (`fast`), same process.

    .venv/bin/python benchmarks/fit_benchmark.py runs/shot/model runs/quick/data --shots 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def split(task_images: Path, shots: int, labelled: Path) -> list[tuple[str, str]]:
    """Copy `shots` photos of each species into class folders; the rest, held out."""
    held_out = []
    for species in sorted(p for p in task_images.iterdir() if p.is_dir()):
        photos = sorted(species.glob("*.jpg"))
        (labelled / species.name).mkdir(parents=True)
        for p in photos[:shots]:
            shutil.copy(p, labelled / species.name / p.name)
        held_out += [(str(p), species.name.replace("_", " ")) for p in photos[shots:]]
    return held_out


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--task", default="synth-unseen")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    from click.testing import CliRunner

    from treeclip.cache import CachePaths
    from treeclip.cli import cli
    from treeclip.evaluate.tasks import load_task
    from treeclip.predict import HeadClassifier, TreeOfLifeClassifier
    from treeclip.runtime.options import InferenceOptions
    from treeclip.runtime.precision import cpu_features

    work = Path(tempfile.mkdtemp(prefix="treeclip-fit-bench-"))
    held_out = split(Path(args.data) / "tasks" / args.task / "images", args.shots, work / "labelled")
    paths, truth = [p for p, _ in held_out], [s for _, s in held_out]
    species = sorted(set(truth))
    caches = CachePaths.default(work / "cache")
    result, fit_s = timed(lambda: CliRunner().invoke(cli, ["fit", args.model, str(work / "labelled"), "-o",
                                                           str(work / "head"), "--cache", str(caches.root), "-q"]))
    assert result.exit_code == 0, result.output
    card = json.loads((work / "head" / "head.json").read_text())
    options = InferenceOptions(workers=0)
    head = HeadClassifier(args.model, str(work / "head"), options=options, caches=caches)
    task = load_task(str(Path(args.data) / "tasks" / args.task))
    taxa = list(dict.fromkeys(t for t in task.taxa if t is not None))  # zero-shot among the same species
    tree = TreeOfLifeClassifier(args.model, taxa, options=options, caches=caches)
    head.predict(paths[:2], k=1), tree.predict(paths[:2], k=1)  # warm-up
    head_rows, head_s = timed(lambda: head.predict(paths, k=1))
    tree_rows, tree_s = timed(lambda: tree.predict(paths, k=1))
    head_acc = sum(r["classification"] == s.replace(" ", "_") for r, s in zip(head_rows, truth)) / len(truth)
    tree_acc = sum(r["species"] == s for r, s in zip(tree_rows, truth)) / len(truth)
    out = {"model": args.model, "task": args.task, "species": len(species), "shots": args.shots,
           "held_out": len(paths), "fit_seconds": fit_s, "chosen_head": card.get("kind"),
           "cv_accuracy": card.get("metrics", card.get("cv")), "head_accuracy": head_acc,
           "zero_shot_accuracy_same_species": tree_acc, "head_img_per_s": len(paths) / head_s,
           "tree_img_per_s": len(paths) / tree_s, "precision": head.precision,
           "cpu_features": cpu_features().describe(), "load_average": os.getloadavg()[0]}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
