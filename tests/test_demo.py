"""The end-to-end demo on a very small profile: every stage runs, the report holds the
measured numbers, a second run resumes instead of redoing the work, a run with other
settings redoes the stages they change, and predict examples are encoded once."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import pytest

from treeclip.demo import PROFILES, TASKS, DemoProfile, run_demo, stages, summarise
from treeclip.demo.profiles import query_text

TINY = DemoProfile("tiny", species=40, images_per_species=6, eval_images_per_species=7, model="micro-vit-32",
                   steps=3, batch_size=32, lr=1e-3, warmup=1, variants=("com", "mixed-sample"), seeds=(0,),
                   tsne_points=60)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, TINY)


def test_demo_writes_a_report_with_every_table(demo_run):
    out, report = demo_run
    text = report.read_text(encoding="utf-8")
    for heading in ("## BioCLIP's claims, checked", "## Zero-shot (each model", "## Zero-shot, every model",
                    "## 1-shot", "## 5-shot", "## Reading the numbers", "## predict on unseen-species images",
                    "Zero-shot at each rank, unseen genera", "tree of life? unseen genera"):
        assert heading in text
    assert "common names only" in text and "mixed text types, drawn per sample" in text
    for png in ("tsne-synth-unseen.png", "hierarchy-synth-unseen.png"):
        assert (out / "eval" / png).stat().st_size > 1000


def test_demo_summary_matches_the_evaluation_results(demo_run):
    out, _ = demo_run
    results = json.loads((out / "eval" / "results.json").read_text(encoding="utf-8"))
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [m["label"] for m in results["models"]] == ["com-s0", "mixed-sample-s0"]
    for variant in TINY.variants:
        for task in TASKS:
            got = summary["table"][variant]["0"][task][0]
            # each model queried as the paper does: common-name models with common names
            want = results["zero_shot"][f"{variant}-s0"][query_text(variant)][task]["top1"]
            assert got == want and 0.0 <= got <= 1.0
            assert summary["table"][variant]["0-taxon_com"][task][0] == \
                results["zero_shot"][f"{variant}-s0"]["default"][task]["top1"]
            assert not math.isnan(summary["table"][variant]["5"][task][0])
    assert query_text("com") == "com" and query_text("mixed-sample") == "default"
    expected = json.loads(json.dumps(summarise(results, TINY)))
    assert {k: summary[k] for k in expected} == expected
    assert set(summary["stage_seconds"]) == {"synth", "training", "evaluation", "predict"}
    assert set(summary["training_samples_per_s"]) <= {"com-s0", "mixed-sample-s0"}


def test_demo_resumes_without_retraining(demo_run):
    out, report = demo_run
    weights = sorted((out / "train").glob("*/model/open_clip_model.safetensors"))
    assert len(weights) == 2
    before = {p: p.stat().st_mtime_ns for p in weights}
    results_before = (out / "eval" / "results.json").stat().st_mtime_ns
    assert run_demo(out, TINY) == report
    assert {p: p.stat().st_mtime_ns for p in weights} == before
    assert (out / "eval" / "results.json").stat().st_mtime_ns == results_before


def test_profiles_compare_common_names_with_mixed_text():
    for profile in PROFILES.values():
        assert "com" in profile.variants and any(v.startswith("mixed") for v in profile.variants)
        assert len(profile.seeds) >= 2


def _trained_steps(out, label: str) -> int:
    meta = json.loads((out / "train" / label / "model" / "treeclip.json").read_text(encoding="utf-8"))
    return meta["meta"]["summary"]["steps"]


def _evaluated_fingerprints(out) -> dict[str, str]:
    results = json.loads((out / "eval" / "results.json").read_text(encoding="utf-8"))
    return {m["label"]: m["fingerprint"] for m in results["models"]}


def _current_fingerprints(out) -> dict[str, str]:
    from treeclip.model import load_model

    labels = [f"{v}-s{s}" for v in TINY.variants for s in TINY.seeds]
    return {lab: load_model(str(out / "models" / lab)).fingerprint() for lab in labels}


def test_demo_redoes_the_stages_whose_settings_changed(demo_run, tmp_path):
    first, _ = demo_run
    out = tmp_path / "demo"
    shutil.copytree(first, out, symlinks=True)
    labels = [f"{v}-s0" for v in TINY.variants]
    synth_before = (out / "data" / "synth.json").read_bytes()

    # other --steps: the models are trained again (with 4 steps) and evaluated again; the data is kept
    run_demo(out, replace(TINY, steps=4))
    assert [_trained_steps(out, lab) for lab in labels] == [4, 4]
    assert (out / "data" / "synth.json").read_bytes() == synth_before
    assert _evaluated_fingerprints(out) == _current_fingerprints(out) != _evaluated_fingerprints(first)
    assert "4 steps of batch" in (out / "report.md").read_text(encoding="utf-8")

    # other synth settings make other data (synthesize regenerates it, tests/test_synth.py):
    # a model trained on the old data is trained again; the same data keeps it
    synth = json.loads(synth_before)
    run = out / "train" / labels[0]
    job = stages._training_job(replace(TINY, steps=4), out / "data", run, TINY.variants[0], 0,
                               stages._data_identity(synth), threads=1)
    assert not job.todo and (run / "model" / "open_clip_model.safetensors").exists()
    other = {**synth, "config": {**synth["config"], "images_per_species": 7}}
    job = stages._training_job(replace(TINY, steps=4), out / "data", run, TINY.variants[0], 0,
                               stages._data_identity(other), threads=1)
    assert job.todo and not (run / "model").exists()  # the old model is gone; it is trained again


def test_predict_examples_encode_each_image_once(demo_run, monkeypatch):
    from treeclip.predict import TreeOfLifeClassifier
    from treeclip.runtime.encoder import ImageEncoder

    out, _ = demo_run
    model_dir = out / "models" / "mixed-sample-s0"
    encoded: list[int] = []
    real = ImageEncoder.__call__

    def counting(self, pixels, **kw):
        encoded.append(len(pixels))
        return real(self, pixels, **kw)

    monkeypatch.setattr(ImageEncoder, "__call__", counting)
    examples = stages._predict_examples(model_dir, out / "data", n=4)
    assert examples and sum(encoded) == len(examples)  # one image per example, encoded once
    monkeypatch.undo()

    # the same answers as predicting top-3 and roll-up separately
    from treeclip.evaluate.tasks import load_task

    tasks = [load_task(str(out / "data" / "tasks" / t)) for t in TASKS]
    taxa = list(dict.fromkeys(t for task in tasks for t in task.taxa if t is not None))
    unseen = tasks[TASKS.index("synth-unseen")]
    by_name = {p.name: str(p) for p in map(unseen.image_path, range(len(unseen)))}
    paths = [by_name[ex["image"]] for ex in examples]
    clf = TreeOfLifeClassifier(str(model_dir), taxa=taxa, cache_dir=str(out / "models" / "label-cache"))
    top = clf.predict(paths, rank="species", k=3)
    rolled = clf.predict(paths, rollup=0.5)
    for ex, path, roll in zip(examples, paths, rolled):
        guesses = [r for r in top if r["file_name"] == path]
        assert ex["top3"] == [(r["species"], r.get("common_name", ""), r["score"]) for r in guesses]
        assert ex["rollup"] == (roll["rank"], roll.get(roll["rank"], ""), roll["score"])


def _summary(com: dict, mixed: dict) -> dict:
    """A `report.summarise`-shaped summary of two seeds per variant, from per-measure values."""
    def table(v):
        return {"0": {"synth-seen": v["seen"], "synth-unseen": v["unseen"], "synth-unseen-genus": v["genus"]},
                "1": {"synth-unseen": v["1"]}, "5": {"synth-unseen": v["5"]}}
    return {"table": {"com": table(com), "mixed": table(mixed)},
            "hierarchy": {k: {"synth-unseen": {"genus": v["knn"], "family": v["knn"]}} for k, v in
                          (("com", com), ("mixed", mixed))},
            "lca_depth": {"com": {"synth-unseen": com["lca"]}, "mixed": {"synth-unseen": mixed["lca"]}}}


def test_claims_hold_only_past_their_bars_and_ahead_in_every_seed():
    from treeclip.demo.claims import check_claims

    com = {"seen": [0.7, 0.7], "unseen": [0.3, 0.3], "genus": [0.1, 0.1], "1": [0.8, 0.8], "5": [0.9, 0.9],
           "knn": [0.9, 0.9], "lca": [6.5, 6.5]}
    mixed = {"seen": [0.8, 0.59], "unseen": [0.5, 0.46], "genus": [0.7, 0.09], "1": [0.79, 0.79],
             "5": [0.85, 0.85], "knn": [0.9, 0.91], "lca": [6.5, 6.4]}
    rows = {(r["variant"], r["measure"]): r for r in check_claims(_summary(com, mixed), ["com", "mixed"])}
    assert rows["com", "zero-shot, seen species (lowest seed)"]["holds"]
    assert not rows["mixed", "zero-shot, seen species (lowest seed)"]["holds"]  # one seed below 60%
    assert rows["mixed", "zero-shot, unseen species"]["holds"]  # +18 pts, ahead in both seeds
    genus = rows["mixed", "zero-shot, unseen genera"]
    assert genus["diff"] > 0.25 and not genus["holds"]  # the mean clears +25 pts, but seed 1 is behind
    assert rows["mixed", "1-shot, unseen species"]["holds"]  # -1 pt: within the 2-pt margin
    assert not rows["mixed", "5-shot, unseen species"]["holds"]  # -5 pts
    assert rows["mixed", "5-NN accuracy at genus, unseen species"]["holds"]
    assert not rows["mixed", "nearest neighbour's lowest common rank (depth 1-7), unseen species"]["holds"]
