"""Learning curves of a demo run against samples seen.

    python benchmarks/demo_curves.py runs/demo            # seen species, from metrics.jsonl
    python benchmarks/demo_curves.py runs/demo --json     # the numbers
    python benchmarks/demo_curves.py runs/demo --unseen   # unseen species too, from checkpoints

Seen species: the validation split (new images of the seen species) that every training
run scores: CLIP models zero-shot against `a photo of {name}.` of their own query text
type, classifiers by their species head (`treeclip.train.validate`), mean over seeds.
`treeclip demo --long` validates ten times per run, the default profile four times.

`--unseen` trains each model of the run's profile once more (seed 0, a checkpoint every
`--every` steps, in RUN/curves/) and scores every checkpoint on the unseen-species task:
zero-shot with the model's own query for CLIP models, 5-shot SimpleShot for every model.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def curves(run_dir: Path) -> dict[str, dict[int, list[float]]]:
    """{model (label without seed): {samples seen: [top-1 per seed]}}."""
    out: dict[str, dict[int, list[float]]] = {}
    for metrics in sorted((run_dir / "train").glob("*/metrics.jsonl")):
        variant = metrics.parent.name.rsplit("-s", 1)[0]
        records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines()]
        batch = next(r["samples"] // r["step"] for r in records if r.get("type") == "train")
        for record in (r for r in records if r.get("type") == "val"):
            score = record.get("zeroshot_top1", record.get("top1"))
            out.setdefault(variant, {}).setdefault(record["step"] * batch, []).append(score)
    return out


def markdown(table: dict[str, dict[int, list[float]]]) -> str:
    samples = sorted({n for per in table.values() for n in per})
    lines = ["| model | " + " | ".join(f"{n / 1000:.0f}k" for n in samples) + " |",
             "|---|" + "---|" * len(samples)]
    for variant, per in table.items():
        cells = [f"{100 * statistics.fmean(per[n]):.1f}" if n in per else "-" for n in samples]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _train(job: tuple[dict, int]) -> str:
    """Train one model keeping every checkpoint (in a job process); its run dir."""
    from treeclip.train import make_config, train

    config, every = job
    train(make_config(**{**config, "save_every": every, "keep_checkpoints": 1000, "val_every": 0}),
          resume="latest")
    return config["out"]


def _checkpoint_model(model_name: str, checkpoint: Path):
    """The CLIP model of a training checkpoint (a classifier's image tower and text tower)."""
    from treeclip.model import create_model
    from treeclip.train.state import load_checkpoint

    weights, _ = load_checkpoint(checkpoint)
    if any(k.startswith("clip.") for k in weights):  # a classifier: its ImageClassifier's state
        weights = {k[len("clip."):]: v for k, v in weights.items() if k.startswith("clip.")}
    clip = create_model(model_name)
    clip.model.load_state_dict(weights)
    clip.model.eval()
    return clip


def unseen_curves(run_dir: Path, every: int) -> dict[str, dict[int, dict[str, float]]]:
    """{model: {samples seen: {"zero_shot", "five_shot"}}} on unseen species, seed 0."""
    import dataclasses

    from treeclip.demo import PROFILES, stages
    from treeclip.demo.parallel import job_slots, run_parallel
    from treeclip.demo.profiles import CLASSIFIERS, query_text
    from treeclip.evaluate import fewshot, zeroshot
    from treeclip.evaluate.features import image_features, text_embeddings
    from treeclip.evaluate.runner import class_names
    from treeclip.evaluate.tasks import load_task
    from treeclip.cache import CachePaths
    from treeclip.runtime.options import InferenceOptions
    from treeclip.taxonomy.templates import load_templates

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    profile = dataclasses.replace(PROFILES[summary["profile"]["name"]], **{
        k: tuple(v) if isinstance(v, list) else v for k, v in summary["profile"].items()})
    data = run_dir / "data"
    identity = stages._data_identity(json.loads((data / "synth.json").read_text(encoding="utf-8")))
    configs = [stages._training_job(profile, data, identity, run_dir / "curves" / v, v, profile.seeds[0],
                                    threads=1).config for v in profile.variants]
    procs, threads = job_slots(len(configs))
    run_parallel(_train, [(c, every) for c in configs], processes=procs, threads=threads,
                 names=[Path(c["out"]).name for c in configs], say=print)
    task = load_task(str(data / "tasks" / "synth-unseen"))
    templates, cache = load_templates(profile.templates), CachePaths.default(run_dir / "curves" / "cache")
    out: dict[str, dict[int, dict[str, float]]] = {}
    for config in configs:
        variant = Path(config["out"]).name
        for checkpoint in sorted(Path(config["out"], "checkpoints").glob("step-*")):
            clip = _checkpoint_model(config["model"], checkpoint)
            f = image_features(clip, task, options=InferenceOptions.for_verb("eval", batch_size=256, workers=0),
                               caches=cache, progress=False)
            x, y = f.features[f.ok], task.labels[f.ok]
            point = {"five_shot": fewshot.few_shot(x, y, 5)["mean"]}
            if variant not in CLASSIFIERS:
                query = query_text(variant)
                emb = text_embeddings(clip, class_names(task, query), templates, caches=cache)
                point["zero_shot"] = zeroshot.zero_shot_metrics(x, y, emb)["top1"]
            out.setdefault(variant, {})[int(checkpoint.name[5:]) * config["batch_size"]] = point
    return out


def unseen_markdown(table: dict[str, dict[int, dict[str, float]]]) -> str:
    samples = sorted({n for per in table.values() for n in per})
    lines = ["| model | measure | " + " | ".join(f"{n / 1000:.0f}k" for n in samples) + " |",
             "|---|---|" + "---|" * len(samples)]
    for variant, per in table.items():
        for measure in ("zero_shot", "five_shot"):
            cells = [f"{100 * per[n][measure]:.1f}" if measure in per.get(n, {}) else "-" for n in samples]
            if any(c != "-" for c in cells):
                lines.append(f"| {variant} | {measure.replace('_', '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a `treeclip demo --out` folder")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--unseen", action="store_true", help="retrain seed 0 and score each checkpoint on unseen species")
    parser.add_argument("--every", type=int, default=100, help="steps between checkpoints with --unseen")
    args = parser.parse_args()
    if args.unseen:
        table = unseen_curves(args.run_dir, args.every)
        print(json.dumps(table, indent=1) if args.json else unseen_markdown(table))
        return
    table = curves(args.run_dir)
    print(json.dumps(table, indent=1) if args.json else markdown(table))


if __name__ == "__main__":
    main()
