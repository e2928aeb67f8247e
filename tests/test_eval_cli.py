"""End to end: `treeclip eval` on a tiny random model over a tiny task folder made here."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from treeclip.cache import CachePaths
from treeclip.cli import cli
from treeclip.runtime.options import InferenceOptions


def batch(n: int) -> InferenceOptions:
    return InferenceOptions.for_verb("eval", batch_size=n, workers=0)

SPECIES = [
    ("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Vanessa", "atalanta", "red admiral"),
    ("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Vanessa", "cardui", "painted lady"),
    ("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Pieridae", "Pieris", "rapae", "small white"),
    ("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Coccinellidae", "Coccinella", "septempunctata", ""),
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia", "black-billed magpie"),
]


def make_task(root, per_species=6, broken=1):
    """Coloured squares (a colour per species, noise per image), a catalog and a spec."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for s, (*ranks, common) in enumerate(SPECIES):
        base = rng.integers(0, 255, size=3)
        for i in range(per_species):
            px = np.clip(base + rng.normal(0, 25, size=(40, 40, 3)), 0, 255).astype(np.uint8)
            rel = f"img/s{s}_{i}.png"
            Image.fromarray(px).save(root / rel)
            rows.append([rel, *ranks, common, "train" if i < per_species // 2 else "test"])
    for b in range(broken):  # a truncated file: one line, the run goes on
        (root / f"img/broken{b}.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
        rows.append([f"img/broken{b}.jpg", *SPECIES[0][:7], SPECIES[0][7], "test"])
    with open(root / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "kingdom", "phylum", "class", "order", "family", "genus", "species", "common", "split"])
        w.writerows(rows)
    (root / "task.toml").write_text(
        'name = "tiny"\ndescription = "five species of coloured squares"\n'
        '[images]\ncatalog = "catalog.csv"\nroot = "."\n[classes]\nrank = "species"\n', encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"))


def test_eval_end_to_end(tiny_task, tmp_path):
    import torch

    torch.set_num_threads(2)
    out = tmp_path / "out"
    args = ["eval", "micro-vit-32", "tiny-vit-64", "--task", str(tiny_task), "--shots", "0,1,2",
            "--text-type", "taxon_com,com", "--templates", "single", "--linear-probe", "--out", str(out),
            "--tsne-points", "40", "--cache", str(out / "cache"), "-q"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    # one broken image: the run finishes, reports it, exits 1
    assert res.exit_code == 1, res.output
    assert "broken0.jpg" in res.output
    results = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in results["models"]] == ["micro-vit-32", "tiny-vit-64"]
    zs = results["zero_shot"]["micro-vit-32"]
    assert set(zs) == {"taxon_com", "com"}
    assert zs["com"]["tiny"]["n"] == 30  # the broken image is left out
    assert 0.0 <= zs["taxon_com"]["tiny"]["top1"] <= 1.0
    fs = results["few_shot"]["tiny-vit-64"]
    assert set(fs) == {"1", "2"} and len(fs["1"]["tiny"]["trials"]) == 5
    lp = results["linear_probe"]["micro-vit-32"]["tiny"]
    assert lp["n_test"] == 15  # the catalog's own test rows, less the broken one
    hier = results["intrinsic"]["micro-vit-32"]["tiny"]
    assert set(hier["ranks"]) >= {"kingdom", "order", "species"}
    assert results["failures"]["count"] == 1
    report = (out / "report.md").read_text()
    assert "Zero-shot top-1 (taxon_com names)" in report and "| micro-vit-32 |" in report
    for png in results["figures"]["tiny"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # the table in the paper's layout on stdout: rows models, columns tasks, mean
    assert "model" in res.output and "Mean" in res.output and "tiny-vit-64" in res.output
    # features are cached: a second run encodes nothing and gives the same numbers
    cache = list((out / "cache" / "features").glob("*/features.npy"))
    assert len(cache) == 2 and sorted(np.load(p).shape for p in cache) == [(31, 64), (31, 128)]
    res2 = CliRunner().invoke(cli, args[:-1] + ["--no-intrinsic", "-q"], catch_exceptions=False)
    assert res2.exit_code == 1
    again = json.loads((out / "results.json").read_text())
    assert again["zero_shot"] == results["zero_shot"] and again["few_shot"] == results["few_shot"]


def test_eval_bad_task_is_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["eval", "micro-vit-32", "--task", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "nope: no such task" in res.output and "Traceback" not in res.output


def test_eval_help_is_fast_to_import():
    import subprocess
    import sys

    code = "import sys, treeclip.commands.evaluate; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_report_layout_rows_models_columns_tasks_mean():
    from treeclip.evaluate.report import markdown_report, terminal_report

    results = {
        "config": {"templates": "bioclip", "text_types": ["taxon_com", "com"]},
        "models": [{"label": "bioclip"}, {"label": "clip"}],
        "tasks": [{"name": n, "n_images": 4, "n_classes": 2, "rank": "species", "text_type": "taxon_com",
                   "problems": 0} for n in ("birds", "fungi")],
        "zero_shot": {"bioclip": {"com": {"birds": {"top1": 0.5}, "fungi": {"top1": 0.25}},
                                  "taxon_com": {"birds": {"top1": 1.0}, "fungi": {"top1": 0.5}}},
                      "clip": {"com": {"birds": {"top1": 0.0}}}},
        "few_shot": {"bioclip": {"5": {"birds": {"mean": 0.75, "std": 0.05}, "fungi": {"mean": 0.5, "std": 0.0}}}},
    }
    text = terminal_report(results)
    blocks = text.split("\n\n")
    assert blocks[0].splitlines()[0] == "Zero-shot top-1 (taxon_com names)"  # the order asked for
    header, rule, row = blocks[0].splitlines()[1:4]
    assert header.split() == ["model", "birds", "fungi", "Mean"]
    assert row.split() == ["bioclip", "100.0", "50.0", "75.0"]
    com = blocks[1].splitlines()
    assert com[3].split() == ["bioclip", "50.0", "25.0", "37.5"]
    assert com[4].split() == ["clip", "0.0", "-", "-"]  # no mean over a missing task
    assert "5-shot" in blocks[2] and blocks[2].splitlines()[3].split() == ["bioclip", "75.0", "50.0", "62.5"]
    md = markdown_report(results)
    assert "| bioclip | 75.0 ± 5.0 | 50.0 ± 0.0 | 62.5 |" in md


def test_features_order_cache_and_resume(tiny_task, tmp_path, monkeypatch):
    import torch

    from treeclip.data.images import decode_image
    from treeclip.evaluate import features as F
    from treeclip.evaluate.tasks import load_task
    from treeclip.model import load_model

    torch.set_num_threads(2)
    model, task = load_model("micro-vit-32"), load_task(tiny_task)
    direct = model.encode_images(torch.stack([model.preprocess(decode_image(task.image_path(i)))
                                              for i in (0, 7, 29)])).numpy()
    # encode in chunks of 8; the second chunk crashes once (a killed run)
    real, calls = F._encode_files, []

    def flaky(run, start, stop):
        calls.append(start)
        if start == 8 and calls.count(8) == 1:
            raise KeyboardInterrupt
        return real(run, start, stop)

    monkeypatch.setattr(F, "_encode_files", flaky)
    with pytest.raises(KeyboardInterrupt):
        F.image_features(model, task, options=batch(3), caches=CachePaths(tmp_path), chunk=8, progress=False)
    assert len(list(tmp_path.glob("features/*/parts/part-*.npy"))) == 1
    got = F.image_features(model, task, options=batch(3), caches=CachePaths(tmp_path), chunk=8, progress=False)
    assert calls == [0, 8, 8, 16, 24]  # the finished chunk was not encoded again
    np.testing.assert_allclose(got.features[[0, 7, 29]], direct, atol=1e-5)
    assert got.ok.sum() == 30 and got.n_failed == 1 and "broken0.jpg" in got.errors[0]
    assert not got.features[~got.ok].any()
    assert not list(tmp_path.glob("features/*/parts"))  # parts replaced by the final files
    again = F.image_features(model, task, caches=CachePaths(tmp_path), progress=False)
    assert again.cached and np.array_equal(again.features, got.features) and again.errors == got.errors


def test_features_from_dataset_shards(tmp_path):
    from treeclip.data.dataset import Sample, write_dataset
    from treeclip.data.images import decode_image, encode_jpeg
    from treeclip.evaluate.features import image_features
    from treeclip.evaluate.tasks import load_task
    from treeclip.model import load_model
    from treeclip.taxonomy.taxon import Taxon

    taxa = [Taxon.of(*s[:7], common=s[7]) for s in SPECIES[:2]]
    jpgs = [encode_jpeg(Image.new("RGB", (20, 20), (40 * i, 200 - 30 * i, 90))) for i in range(6)]
    samples = [Sample(key=f"k{i}", image=jpgs[i], taxon=taxa[i % 2], split="val" if i != 2 else "train")
               for i in range(6)]
    write_dataset(samples, tmp_path / "ds", taxa=taxa, build_info={}, shard_max_samples=2)
    (tmp_path / "task.toml").write_text('name = "ds"\n[images]\ndataset = "ds"\nsplit = "val"\n')
    task = load_task(tmp_path)
    model = load_model("micro-vit-32")
    f = image_features(model, task, options=batch(2), caches=CachePaths(tmp_path / "cache"), progress=False)
    assert f.ok.all() and len(task) == 5
    i = task.paths.index("k4")
    want = model.encode_images(model.preprocess(decode_image(jpgs[4]))[None]).numpy()[0]
    np.testing.assert_allclose(f.features[i], want, atol=1e-5)
