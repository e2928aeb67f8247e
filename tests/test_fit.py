"""`treeclip fit` and `predict --head` on the micro model: three classes of noisy solid
colours (separable by colour even with random weights), held-out photos, a CSV input,
a head for another model, unreadable and too few photos, a two-class logistic head."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from predict_helpers import MODEL, save_model_dir
from treeclip.cli import cli

COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}
PREDICT = ["--templates", "single", "--workers", "0", "--precision", "fp32", "--backend", "torch", "-q"]


def photo(path, colour, seed):
    rng = np.random.default_rng(seed)
    size = (40 + seed % 7, 48 + seed % 5)  # sizes vary, as photos do
    pixels = np.clip(np.asarray(colour)[None, None] + rng.normal(0, 25, (*size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_classes(folder, per_class, seed0):
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(per_class):
            photo(folder / name / f"{name}{i}.png", colour, seed0 + 100 * c + i)
    return folder


def invoke(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    model = save_model_dir(root / "model")
    labelled = make_classes(root / "labelled", per_class=6, seed0=0)
    held_out = make_classes(root / "held-out", per_class=4, seed0=5000)
    cache = root / "cache"
    result = invoke("fit", model, labelled, "-o", root / "head", "--cache", cache, "-q")
    return {"root": root, "model": model, "labelled": labelled, "held_out": held_out, "cache": cache,
            "head": root / "head", "output": result.output}


def card(head):
    return json.loads((head / "head.json").read_text(encoding="utf-8"))


def test_fit_writes_a_head_with_high_cv_accuracy_for_both_kinds(setup):
    head = setup["head"]
    assert {p.name for p in head.iterdir()} == {"head.safetensors", "head.json", "confusion.png"}
    meta = card(head)
    acc = meta["cv"]["accuracy"]
    assert set(acc) == {"centroid", "logistic"} and min(acc.values()) > 0.9, acc
    assert meta["kind"] in ("centroid", "logistic") and meta["classes"] == ["blue", "green", "red"]
    assert meta["counts"] == {"blue": 6, "green": 6, "red": 6} and meta["cv"]["folds"] == 5
    from treeclip.model import load_model

    assert meta["model"]["fingerprint"] == load_model(str(setup["model"])).fingerprint()
    assert meta["model"]["spec"] == str(setup["model"]) and meta["treeclip_version"]
    assert [r["class"] for r in meta["per_class"]] == meta["classes"]
    assert all({"precision", "recall"} <= set(r) for r in meta["per_class"])
    assert meta["fit"]["skipped"] == 0 and meta["fit"]["seed"] == 0 and meta["fit"]["precision"] == "fp32"
    assert "cross-validation" in setup["output"] and "confusion matrix" in setup["output"]
    from safetensors.numpy import load_file

    arrays = load_file(str(head / "head.safetensors"))
    assert arrays["weight"].shape == (3, 64) and arrays["bias"].shape == (3,) and arrays["centre"].shape == (64,)
    assert Image.open(head / "confusion.png").size[0] > 100


def test_predict_with_the_head_classifies_held_out_photos(setup, tmp_path):
    out = tmp_path / "out.csv"
    invoke("predict", setup["model"], setup["held_out"], "--head", setup["head"], "--k", "1", "-o", out,
           "--cache", setup["cache"], *PREDICT)
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert list(rows[0]) == ["file_name", "classification", "score", "error"]
    assert len(rows) == 12
    right = sum(r["classification"] in r["file_name"].rsplit("/", 2)[-2] for r in rows)
    assert right >= 11, rows
    # resumed as any predict output: the head is part of the run's identity
    result = invoke("predict", setup["model"], setup["held_out"], "--head", setup["head"], "--k", "1", "-o", out,
                    "--cache", setup["cache"], *PREDICT[:-1])
    assert "nothing to do" in result.output


def test_python_api_k_and_min_prob(setup):
    from treeclip.predict import HeadClassifier
    from treeclip.runtime.options import InferenceOptions

    clf = HeadClassifier(str(setup["model"]), str(setup["head"]),
                         options=InferenceOptions(workers=0, precision="fp32", backend="torch"))
    photos = sorted((setup["held_out"] / "red").iterdir())
    rows = clf.predict(photos, k=3)
    assert len(rows) == 3 * len(photos)
    for name in {r["file_name"] for r in rows}:
        mine = [r for r in rows if r["file_name"] == name]
        assert sum(r["score"] for r in mine) == pytest.approx(1.0, abs=1e-5)
        assert mine[0]["classification"] == "red"
    assert len(clf.predict(photos, k=3, min_prob=0.99)) == len(photos)  # the best answer is always kept


def test_a_csv_gives_the_same_head_and_a_refit_reads_the_cache(setup):
    root = setup["root"]
    table = root / "labels.csv"
    lines = ["path,label"] + [f"labelled/{p.parent.name}/{p.name},{p.parent.name}"
                              for p in sorted(setup["labelled"].rglob("*.png"))]
    lines.append("../outside.png,red")  # escapes the CSV's folder: refused, one line, counted
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = invoke("fit", setup["model"], table, "-o", root / "head-csv", "--cache", setup["cache"], "-q", code=1)
    assert "escapes" in result.output
    from safetensors.numpy import load_file

    a, b = load_file(str(setup["head"] / "head.safetensors")), load_file(str(root / "head-csv" / "head.safetensors"))
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert card(root / "head-csv")["classes"] == card(setup["head"])["classes"]
    assert card(root / "head-csv")["fit"]["skipped"] == 1
    again = invoke("fit", setup["model"], setup["labelled"], "-o", root / "head-again", "--cache", setup["cache"], "-q")
    assert "cached embeddings" in again.output


def test_a_head_for_another_model_is_refused(setup, tmp_path):
    from treeclip.model import create_model, save_model

    other = tmp_path / "other"
    save_model(create_model(MODEL, seed=1), other)
    result = invoke("predict", other, setup["held_out"], "--head", setup["head"], "--cache", setup["cache"],
                    *PREDICT, code=2)
    assert "fitted on" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, words", [(["--taxa", "x.csv"], "does not mix"), (["--cls", "a,b"], "does not mix"),
                                          (["--rank", "genus"], "--rank or --rollup"),
                                          (["--rollup", "0.5"], "--rank or --rollup")])
def test_head_with_taxa_or_ranks_is_refused(setup, extra, words):
    result = invoke("predict", setup["model"], setup["held_out"], "--head", setup["head"], *extra, *PREDICT, code=2)
    assert words in result.output


def test_unreadable_photo_is_skipped_and_counted(setup, tmp_path):
    labelled = shutil.copytree(setup["labelled"], tmp_path / "labelled")
    (labelled / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = invoke("fit", setup["model"], labelled, "-o", tmp_path / "head", "--cache", tmp_path / "cache", "-q",
                    code=1)
    assert "broken.jpg" in result.output and "1 skipped" in result.output
    assert card(tmp_path / "head")["counts"]["red"] == 6 and card(tmp_path / "head")["fit"]["skipped"] == 1


def test_hidden_files_loose_photos_and_heads_inside_labelled_are_not_classes(setup, tmp_path):
    from treeclip.evaluate.fit import labelled_task

    labelled = shutil.copytree(setup["labelled"], tmp_path / "labelled")
    shutil.copytree(setup["head"], labelled / "my-head")  # -o inside LABELLED: its confusion.png is no class
    photo(labelled / ".thumbs" / "x.png", (1, 2, 3), 1)
    photo(labelled / "red" / ".hidden.png", (1, 2, 3), 2)
    photo(labelled / "loose.png", (1, 2, 3), 3)
    task = labelled_task(labelled)
    assert [c.name for c in task.classes] == ["blue", "green", "red"] and len(task) == 18


def test_a_class_with_one_photo_is_a_clear_error(setup, tmp_path):
    labelled = shutil.copytree(setup["labelled"], tmp_path / "labelled")
    for p in sorted((labelled / "green").iterdir())[1:]:
        p.unlink()
    result = invoke("fit", setup["model"], labelled, "-o", tmp_path / "head", "--cache", setup["cache"], "-q", code=2)
    assert "at least 2" in result.output and "green (1)" in result.output
    assert not (tmp_path / "head").exists()


def test_two_class_logistic_head_matches_sklearn():
    """sklearn keeps one row for two classes; the head's two-row softmax equals predict_proba."""
    from treeclip.evaluate.fit import FitOptions, logistic_head
    from treeclip.evaluate.linear_probe import fit_logistic
    from treeclip.runtime.labels import l2_normalise

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(1, 1, (20, 8)), rng.normal(-1, 1, (20, 8))]).astype(np.float32)
    y = np.repeat([0, 1], 20)
    head = logistic_head(x, y, ["a", "b"], 1.0, FitOptions().max_iter)
    want = fit_logistic(l2_normalise(x.astype(np.float64)), y, 1.0).predict_proba(l2_normalise(x.astype(np.float64)))
    assert np.allclose(head.probabilities(x), want, atol=1e-5)


def test_a_logistic_head_classifies_through_the_classifier(setup):
    """Whichever kind cross-validation picks, the other must classify too: a logistic head
    made from the same embeddings, handed to `HeadClassifier` as an object."""
    from treeclip.evaluate.fit import FitOptions, logistic_head
    from treeclip.model import load_model
    from treeclip.model.heads import fitted_head
    from treeclip.predict import HeadClassifier, embed_images
    from treeclip.runtime.options import InferenceOptions

    clip = load_model(str(setup["model"]))
    options = InferenceOptions(workers=0, precision="fp32", backend="torch")
    train = sorted(setup["labelled"].rglob("*.png"))
    emb = embed_images(clip, train, options=options)
    y = np.array([["blue", "green", "red"].index(p.parent.name) for p in train])
    made = logistic_head(emb.vectors, y, ["blue", "green", "red"], 10.0, FitOptions().max_iter)
    head = fitted_head("logistic", made.weight, made.bias, None, made.classes,
                       {"model": {"fingerprint": clip.fingerprint()}})
    rows = HeadClassifier(clip, head, options=options).predict(setup["held_out"], k=1)
    assert sum(r["classification"] in r["file_name"].rsplit("/", 2)[-2] for r in rows) >= 11


def test_a_head_on_a_trained_model_learns_synthetic_species(trained, tmp_path):
    """A head fitted on 16 training photos of each of 8 synthetic species (read from the
    dataset's shards), from the features of the briefly trained tiny model (`trained`:
    100 steps), names the held-out evaluation photos of those species at least 3x as
    often as chance (1/8), and is refused for another model."""
    from treeclip.data.reader import TreeDataset
    from treeclip.errors import TreeclipError
    from treeclip.model import create_model
    from treeclip.predict import HeadClassifier
    from treeclip.runtime.options import InferenceOptions

    images = trained.data / "tasks" / "synth-seen" / "images"
    species = sorted(p.name for p in images.iterdir() if p.is_dir())[:8]
    shots: dict[str, int] = {}
    for sample in TreeDataset(str(trained.data), "train"):
        name = f"{sample['meta']['genus']}_{sample['meta']['species']}"
        if name in species and shots.get(name, 0) < 16:
            (tmp_path / "labelled" / name).mkdir(parents=True, exist_ok=True)
            sample["image"].save(tmp_path / "labelled" / name / f"{sample['key']}.png")
            shots[name] = shots.get(name, 0) + 1
    assert shots == dict.fromkeys(species, 16)
    held_out = [(str(p), name) for name in species for p in sorted((images / name).glob("*.jpg"))]
    model = trained.data.parent / "run" / "model"
    invoke("fit", model, tmp_path / "labelled", "-o", tmp_path / "head", "--cache", tmp_path / "cache", "-q")
    clf = HeadClassifier(str(model), str(tmp_path / "head"),
                         options=InferenceOptions(precision="fp32", backend="torch", workers=0))
    rows = clf.predict([p for p, _ in held_out], k=1)
    accuracy = np.mean([r["classification"] == name for r, (_, name) in zip(rows, held_out)])
    assert accuracy >= 3 / 8, accuracy
    with pytest.raises(TreeclipError, match="fit one for this model"):
        HeadClassifier(create_model(MODEL, seed=7), str(tmp_path / "head"))
