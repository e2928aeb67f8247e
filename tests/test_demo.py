"""The end-to-end demo on a very small profile: every stage runs, the report holds the
measured numbers, a second run resumes instead of redoing the work, a run with other
settings redoes the stages they change, and predict examples are encoded once."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from treeclip.cache import CachePaths
from treeclip.demo import PROFILES, TASKS, DemoProfile, run_demo, stages

TINY = DemoProfile("tiny", species=40, images_per_species=6, eval_images_per_species=7, model="micro-vit-32",
                   steps=3, batch_size=32, lr=1e-3, warmup=1, variants=("com", "mixed-sample", "ce"), seeds=(0,),
                   tsne_points=60)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, TINY)


def test_demo_writes_a_report_with_every_table(demo_run):
    out, report = demo_run
    text = report.read_text(encoding="utf-8")
    for heading in ("## BioCLIP's claims, checked", "## Zero-shot (each model", "## 1-shot", "## 5-shot",
                    "## The objective table", "## Reading the numbers", "## predict on unseen-species images",
                    "Zero-shot at each rank, unseen genera", "tree of life? unseen genera"):
        assert heading in text
    assert "common names only" in text and "mixed text types, drawn per sample" in text
    assert "cross-entropy over species (classifier)" in text
    for png in ("tsne-synth-unseen.png", "hierarchy-synth-unseen.png"):
        assert (out / "eval" / png).stat().st_size > 1000


def test_demo_numbers_are_read_back_from_the_evaluation_results(demo_run):
    out, report = demo_run
    results = json.loads((out / "eval" / "results.json").read_text(encoding="utf-8"))
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [m["label"] for m in results["models"]] == ["com-s0", "mixed-sample-s0", "ce-s0"]
    # each CLIP model was queried only as the paper queries it: common names, or taxon + common
    assert set(results["zero_shot"]["com-s0"]) == {"com"}
    assert set(results["zero_shot"]["mixed-sample-s0"]) == {"default"}
    assert "ce-s0" not in results["zero_shot"] and set(results["classifier"]["ce-s0"]) == {"synth-seen"}
    want = {("com", t): results["zero_shot"]["com-s0"]["com"][t]["top1"] for t in TASKS}
    want |= {("mixed-sample", t): results["zero_shot"]["mixed-sample-s0"]["default"][t]["top1"] for t in TASKS}
    want[("ce", "synth-seen")] = results["classifier"]["ce-s0"]["synth-seen"]["top1"]
    for (variant, task), value in want.items():
        assert summary["table"][variant]["0"][task] == [value]
    for variant in TINY.variants:
        for k in ("1", "5"):
            assert summary["table"][variant][k]["synth-unseen"] == \
                [results["few_shot"][f"{variant}-s0"][k]["synth-unseen"]["mean"]]
    claims = {(r["claim"], r["side"], r["baseline"], r["measure"]): r for r in summary["claims"]}
    assert claims["the models learn", "ce", "", "head top-1, seen species"]["side_values"] == \
        [want[("ce", "synth-seen")]]
    row = claims["text types", "mixed-sample", "com", "zero-shot top-1, unseen species"]
    assert row["side_values"] == [want[("mixed-sample", "synth-unseen")]]
    assert row["baseline_values"] == [want[("com", "synth-unseen")]]
    row = claims["objective", "mixed-sample", "ce", "5-shot, unseen genera"]
    assert row["baseline_values"] == [results["few_shot"]["ce-s0"]["5"]["synth-unseen-genus"]["mean"]]
    assert not row["holds"]  # one seed: no spread to judge a difference against
    cell = f"{100 * want[('mixed-sample', 'synth-unseen')]:.1f}"
    assert cell in report.read_text(encoding="utf-8")
    assert set(summary["stage_seconds"]) == {"synth", "training", "evaluation", "predict"}
    assert set(summary["training_samples_per_s"]) <= {f"{v}-s0" for v in TINY.variants}


def test_demo_resumes_without_retraining(demo_run):
    out, report = demo_run
    weights = sorted((out / "train").glob("*/model/open_clip_model.safetensors"))
    assert len(weights) == 3
    before = {p: p.stat().st_mtime_ns for p in weights}
    results_before = (out / "eval" / "results.json").stat().st_mtime_ns
    assert run_demo(out, TINY) == report
    assert {p: p.stat().st_mtime_ns for p in weights} == before
    assert (out / "eval" / "results.json").stat().st_mtime_ns == results_before


def test_profiles_run_the_papers_comparisons_over_two_seeds():
    for profile in PROFILES.values():
        assert "com" in profile.variants and any(v.startswith("mixed") for v in profile.variants)
        assert "ce" in profile.variants and len(profile.seeds) >= 2
    default = PROFILES["default"]
    assert {"mixed", "mixed-sample", "hier-ce"} <= set(default.variants)
    assert PROFILES["long"].text_type_table and PROFILES["long"].diversity


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
    assert [_trained_steps(out, lab) for lab in labels] == [4, 4, 4]
    assert (out / "data" / "synth.json").read_bytes() == synth_before
    assert _evaluated_fingerprints(out) == _current_fingerprints(out) != _evaluated_fingerprints(first)
    assert "4 steps of batch" in (out / "report.md").read_text(encoding="utf-8")

    # other synth settings make other data (synthesize regenerates it, tests/test_synth.py):
    # a model trained on the old data is trained again; the same data keeps it
    synth = json.loads(synth_before)
    run = out / "train" / labels[0]
    job = stages._training_job(replace(TINY, steps=4), out / "data", stages._data_identity(synth), run,
                               TINY.variants[0], 0, threads=1)
    assert not job.todo and (run / "model" / "open_clip_model.safetensors").exists()
    other = {**synth, "config": {**synth["config"], "images_per_species": 7}}
    job = stages._training_job(replace(TINY, steps=4), out / "data", stages._data_identity(other), run,
                               TINY.variants[0], 0, threads=1)
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
    clf = TreeOfLifeClassifier(str(model_dir), taxa=taxa, caches=CachePaths(out / "models" / "label-cache"))
    top = clf.predict(paths, rank="species", k=3)
    rolled = clf.predict(paths, rollup=0.5)
    for ex, path, roll in zip(examples, paths, rolled):
        guesses = [r for r in top if r["file_name"] == path]
        assert ex["top3"] == [(r["species"], r.get("common_name", ""), r["score"]) for r in guesses]
        assert ex["rollup"] == (roll["rank"], roll.get(roll["rank"], ""), roll["score"])


def _table(**per_variant: dict) -> dict:
    """A `report.summarise`-shaped table from {variant: {measure: [per seed]}}."""
    tasks = {"seen": "synth-seen", "unseen": "synth-unseen", "genus": "synth-unseen-genus"}
    return {v: {k: {tasks[t]: m.get(f"{k}:{t}", [float("nan")] * 2) for t in tasks} for k in ("0", "1", "5")}
            for v, m in per_variant.items()}


def test_a_comparison_holds_when_ahead_in_every_seed_by_twice_the_pooled_spread():
    from treeclip.demo.claims import separation

    assert separation([0.50, 0.52], [0.30, 0.31])["holds"]  # +20.5 pts, pooled sd ~1.1
    wide = separation([0.50, 0.70], [0.45, 0.55])  # ahead in both, +10 pts, but pooled sd ~11.2
    assert wide["ahead_in"] == 2 and not wide["holds"] and wide["diff"] < 2 * wide["pooled_std"]
    behind = separation([0.90, 0.40], [0.30, 0.41])  # +29.5 pts on average, behind in seed 1
    assert behind["ahead_in"] == 1 and not behind["holds"]
    assert not separation([0.9], [0.1])["holds"]  # one seed has no spread to judge against
    tie = separation([0.5, 0.5], [0.5, 0.5])
    assert tie["pooled_std"] == 0 and not tie["holds"]  # not ahead


def test_claims_compare_the_papers_sides_and_require_every_model_to_learn():
    from treeclip.demo.claims import check_claims

    table = _table(
        com={"0:seen": [0.70, 0.72], "0:unseen": [0.30, 0.32], "0:genus": [0.10, 0.20]},
        mixed={"0:seen": [0.65, 0.59], "0:unseen": [0.50, 0.51], "0:genus": [0.30, 0.12],
               "1:unseen": [0.80, 0.81], "5:unseen": [0.90, 0.91], "1:genus": [0.70, 0.72], "5:genus": [0.8, 0.8]},
        ce={"0:seen": [0.90, 0.91], "1:unseen": [0.60, 0.61], "5:unseen": [0.70, 0.71], "1:genus": [0.71, 0.80],
            "5:genus": [0.8, 0.8]})
    rows = check_claims(table, ["com", "mixed", "ce"])
    learned = {r["side"]: r for r in rows if r["claim"] == "the models learn"}
    assert learned["com"]["holds"] and learned["ce"]["holds"]
    assert not learned["mixed"]["holds"] and learned["mixed"]["ahead_in"] == 1  # seed 1 at 59%
    assert learned["ce"]["measure"].startswith("head top-1")
    by = {(r["claim"], r["measure"]): r for r in rows if r["claim"] != "the models learn"}
    assert by["text types", "zero-shot top-1, unseen species"]["holds"]
    assert not by["text types", "zero-shot top-1, unseen genera"]["holds"]  # +6 pts, sd ~12.7
    assert by["objective", "1-shot, unseen species"]["holds"] and by["objective", "1-shot, unseen species"][
        "paper_number"] == "45 vs 17"
    assert not by["objective", "1-shot, unseen genera"]["holds"]  # behind in seed 1
    assert not by["objective", "5-shot, unseen genera"]["holds"]  # a tie
    assert {r["baseline"] for r in rows if r["claim"] == "objective"} == {"ce"}
    assert len(rows) == 3 + 2 + 4  # 3 learned, 2 text-type rows (mixed vs com), 4 objective rows


def test_long_profile_writes_the_papers_ablation_tables(tmp_path):
    """`--long`'s extras on a tiny scale: the text-type table (every CLIP model queried with
    every text type on unseen species, read back from its own results.json) and the
    data-diversity arm (half the seen species, twice the images each)."""
    from treeclip.demo.profiles import HALF_SPECIES, QUERY_TYPES

    tiny_long = replace(TINY, variants=("com", "mixed"), seeds=(0, 1), text_type_table=True, diversity=True)
    report = run_demo(tmp_path, tiny_long)
    text = report.read_text(encoding="utf-8")
    assert "## The text-type table" in text and "## Data diversity" in text
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    results = json.loads((tmp_path / "eval-text-types" / "results.json").read_text(encoding="utf-8"))
    assert {m["label"] for m in results["models"]} == {"com-s0", "com-s1", "mixed-s0", "mixed-s1"}
    for variant in ("com", "mixed"):
        assert set(summary["text_type_table"][variant]) == set(QUERY_TYPES)
        for query in QUERY_TYPES:
            assert summary["text_type_table"][variant][query] == [
                results["zero_shot"][f"{variant}-s{s}"][query]["synth-unseen"]["top1"] for s in (0, 1)]
    half = json.loads((tmp_path / "data-half-species" / "synth.json").read_text(encoding="utf-8"))
    full = json.loads((tmp_path / "data" / "synth.json").read_text(encoding="utf-8"))
    assert half["config"]["train_species_fraction"] == 0.5 and half["roles"] == full["roles"]
    assert half["config"]["images_per_species"] == 2 * full["config"]["images_per_species"]
    assert set(summary["table"]) == {"com", "mixed", HALF_SPECIES}
    assert set(summary["diversity"]) == {f"{k} {t}" for k in ("zero-shot", "1-shot", "5-shot")
                                         for t in ("unseen species", "unseen genera")}
