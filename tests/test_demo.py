"""The end-to-end demo on a very small profile: every stage runs, the report holds the
measured numbers, and a second run resumes instead of redoing the work."""

from __future__ import annotations

import json
import math

import pytest

from treeclip.demo import PROFILES, TASKS, DemoProfile, run_demo, summarise

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
    for heading in ("## Zero-shot", "## 1-shot", "## 5-shot", "## What the numbers show",
                    "## predict on unseen-species images", "Zero-shot at each rank, unseen genera"):
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
            want = results["zero_shot"][f"{variant}-s0"]["default"][task]["top1"]
            assert got == want and 0.0 <= got <= 1.0
            assert not math.isnan(summary["table"][variant]["5"][task][0])
    assert summary == json.loads(json.dumps({"profile": summary["profile"], **summarise(results, TINY)}))


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
