"""Camera-trap detections (`predict --detections`): one row per kept MegaDetector
detection, classified on its crop; empty rows for images without one; resume per
detection; the classifications written back in MegaDetector's format."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from predict_helpers import save_model_dir, write_taxa_csv
from treeclip.cli import cli
from treeclip.errors import TreeclipError
from treeclip.predict.detections import DetectionOptions, read_detections, write_classified
from treeclip.runtime.images import Crop, Item, decode_item


def _photo(path, boxes):
    """A 200 x 100 grey photo with a coloured rectangle in each normalised box."""
    img = Image.new("RGB", (200, 100), (120, 120, 120))
    for (x, y, w, h), colour in boxes:
        img.paste(colour, (int(x * 200), int(y * 100), int((x + w) * 200), int((y + h) * 100)))
    img.save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    root = tmp_path_factory.mktemp("trap")
    (root / "site1").mkdir()
    red, blue = ([0.1, 0.2, 0.3, 0.5], (220, 20, 20)), ([0.6, 0.1, 0.3, 0.6], (20, 20, 220))
    _photo(root / "site1" / "a.jpg", [red, blue])
    _photo(root / "site1" / "b.jpg", [])
    md = {"info": {"detector": "md_v5a"}, "detection_categories": {"1": "animal", "2": "person"},
          "images": [
              {"file": "site1/a.jpg", "detections": [
                  {"category": "1", "conf": 0.9, "bbox": red[0]},
                  {"category": "2", "conf": 0.95, "bbox": [0.0, 0.0, 0.1, 0.1]},   # a person: not classified
                  {"category": "1", "conf": 0.7, "bbox": blue[0]},
                  {"category": "1", "conf": 0.05, "bbox": [0.4, 0.4, 0.1, 0.1]}]},  # below --min-conf
              {"file": "site1/b.jpg", "detections": [
                  {"category": "1", "conf": 0.8, "bbox": [1.2, 0.3, 0.2, 0.2]}]},  # outside the frame
              {"file": "../outside.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0, 0, 1, 1]}]}]}
    (root / "md.json").write_text(json.dumps(md))
    return root, save_model_dir(root / "model"), write_taxa_csv(root / "taxa.csv")


def test_crop_pixels_grow_by_the_margin_and_clip_to_the_image():
    assert Crop("x", (0.1, 0.2, 0.3, 0.5)).pixels(200, 100) == (20, 20, 80, 70)
    assert Crop("x", (0.1, 0.2, 0.3, 0.5), margin=0.5).pixels(200, 100) == (0, 0, 110, 95)
    assert Crop("x", (0.9, 0.9, 0.5, 0.5)).pixels(200, 100) == (180, 90, 200, 100)


def test_a_crop_is_decoded_as_the_model_sees_that_region(camera):
    from treeclip.model import create_model

    root, _, _ = camera
    clip = create_model("micro-vit-32", seed=0)
    box = (0.1, 0.2, 0.3, 0.5)
    pixels, error = decode_item(Item("a.jpg#0", Crop(str(root / "site1" / "a.jpg"), box)), clip.preprocess)
    assert error == ""
    region = Image.open(root / "site1" / "a.jpg").convert("RGB").crop((20, 20, 80, 70))
    assert torch.equal(pixels, clip.preprocess(region))


def test_read_detections_keeps_confident_wanted_ones(camera):
    root, _, _ = camera
    found = read_detections(DetectionOptions(str(root / "md.json"), margin=0.0))
    assert [it.name for it in found.items] == ["site1/a.jpg#0", "site1/a.jpg#2", "site1/b.jpg#0", "../outside.jpg#0"]
    assert found.empty == []
    assert found.order == ["site1/a.jpg#0", "site1/a.jpg#2", "site1/b.jpg#0", "../outside.jpg#0"]
    assert found.columns["site1/a.jpg#2"]["detection_conf"] == 0.7
    people = read_detections(DetectionOptions(str(root / "md.json"), categories=("person",)))
    assert [it.name for it in people.items] == ["site1/a.jpg#1"]
    assert len(read_detections(DetectionOptions(str(root / "md.json"), min_conf=0.01)).items) == 5
    assert read_detections(DetectionOptions(str(root / "md.json"), min_conf=0.85)).empty == ["site1/b.jpg"]
    with pytest.raises(TreeclipError, match="not a MegaDetector"):
        (root / "bad.json").write_text('{"detections": []}')
        read_detections(DetectionOptions(str(root / "bad.json")))


def _predict(camera, out, *extra, code=1):
    root, model, taxa = camera
    result = CliRunner().invoke(cli, ["predict", str(model), "--detections", str(root / "md.json"), "--taxa",
                                      str(taxa), "--templates", "single", "--cache", str(root / "cache"), "--workers",
                                      "0", "-q", "--k", "2", "-o", str(out), *extra])
    assert result.exit_code == code, result.output + repr(result.exception)
    if str(out).endswith(".jsonl"):
        return [json.loads(line) for line in open(out, encoding="utf-8")], result
    return list(csv.DictReader(open(out, encoding="utf-8"))), result


def test_predict_writes_a_row_per_detection_and_resumes_per_detection(camera, tmp_path):
    out = tmp_path / "rows.csv"
    rows, result = _predict(camera, out)  # exit 1: the file outside the root cannot be read
    assert list(rows[0])[:5] == ["file_name", "detection_id", "bbox", "detection_conf", "detection_category"]
    classified = [r for r in rows if r["detection_id"] and not r["error"]]
    assert [(r["file_name"], r["detection_id"]) for r in classified][::2] == [("site1/a.jpg", "0"), ("site1/a.jpg", "2")]
    assert len(classified) == 4 and all(r["species"] for r in classified)  # --k 2 per detection
    off_frame = [r for r in rows if r["file_name"] == "site1/b.jpg"]
    assert len(off_frame) == 1 and "outside the image" in off_frame[0]["error"]  # a box off the frame
    no_box, _ = _predict(camera, tmp_path / "strict.csv", "--min-conf", "0.85")
    assert [r for r in no_box if r["file_name"] == "site1/b.jpg"] == [
        {**{k: "" for k in no_box[0]}, "file_name": "site1/b.jpg"}]  # no kept detection: an empty row
    outside = [r for r in rows if r["file_name"] == "../outside.jpg"]
    assert len(outside) == 1 and "outside" in outside[0]["error"]
    # resume: drop one detection's rows, run again: only that detection is classified again
    kept = [r for r in rows if not (r["file_name"] == "site1/a.jpg" and r["detection_id"] == "2")]
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    again, _ = _predict(camera, out)
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, rows))


def test_md_out_carries_each_detections_classifications(camera, tmp_path):
    root, _, _ = camera
    rows, _ = _predict(camera, tmp_path / "rows.jsonl", "--format", "jsonl", "--md-out", str(tmp_path / "md.json"))
    md = json.loads((tmp_path / "md.json").read_text())
    names = md["classification_categories"]
    dets = md["images"][0]["detections"]
    assert [("classifications" in d) for d in dets] == [True, False, True, False]
    first = dets[0]["classifications"]
    assert len(first) == 2 and first[0][1] >= first[1][1]
    best = next(r for r in rows if r["file_name"] == "site1/a.jpg" and r["detection_id"] == 0)
    assert names[first[0][0]] == best["species"]
    assert "classifications" not in md["images"][1]["detections"][0] and md["info"]["detector"] == "md_v5a"
    assert write_classified(str(root / "md.json"), [], tmp_path / "none.json") == 0
    _valid_megadetector(md)


def _valid_megadetector(md: dict) -> None:
    """The documented fields of MegaDetector's batch output with classifications: the
    detections as they were, `classifications` as [[category id, confidence], ...] with
    ids in `classification_categories`, confidences in [0, 1], best first."""
    assert isinstance(md["images"], list) and isinstance(md["detection_categories"], dict)
    cats = md["classification_categories"]
    assert all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in cats.items())
    for image in md["images"]:
        assert isinstance(image["file"], str)
        for det in image["detections"]:
            assert {"category", "conf", "bbox"} <= set(det) and len(det["bbox"]) == 4
            for cls_id, conf in det.get("classifications", []):
                assert cls_id in cats and 0 <= conf <= 1
            confs = [c for _, c in det.get("classifications", [])]
            assert confs == sorted(confs, reverse=True)


def test_a_bad_megadetector_file_is_one_line_and_exit_2(camera, tmp_path):
    root, model, _ = camera
    (tmp_path / "bad.json").write_text("{not json")
    result = CliRunner().invoke(cli, ["predict", str(model), "--detections", str(tmp_path / "bad.json")])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "bad.json" in lines[0] and "MegaDetector" in lines[0]


def test_md_out_needs_detections_and_a_file(camera, tmp_path):
    root, model, _ = camera
    result = CliRunner().invoke(cli, ["predict", str(model), str(root / "site1"), "--md-out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--detections" in result.output


def test_detections_classified_by_a_fitted_head(camera, tmp_path):
    """`--detections` with `--head`: each crop gets the head's classes (red and blue
    animals here, a head fitted on red and blue photos)."""
    import numpy as np

    root, model, _ = camera
    for name, colour in {"red": (220, 20, 20), "blue": (20, 20, 220)}.items():
        for i in range(4):
            rng = np.random.default_rng(i)
            pixels = np.clip(np.asarray(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            (tmp_path / "labelled" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / "labelled" / name / f"{i}.png")
    fit = CliRunner().invoke(cli, ["fit", str(model), str(tmp_path / "labelled"), "-o", str(tmp_path / "head"),
                                   "--cache", str(root / "cache"), "-q"])
    assert fit.exit_code == 0, fit.output
    out = tmp_path / "rows.csv"
    result = CliRunner().invoke(cli, ["predict", str(model), "--detections", str(root / "md.json"), "--head",
                                      str(tmp_path / "head"), "--k", "1", "--precision", "fp32", "--workers", "0",
                                      "--crop-margin", "0", "--cache", str(root / "cache"), "-q", "-o", str(out)])
    assert result.exit_code == 1, result.output  # the file outside the root
    rows = {(r["file_name"], r["detection_id"]): r for r in csv.DictReader(open(out, encoding="utf-8"))}
    assert rows[("site1/a.jpg", "0")]["classification"] == "red"
    assert rows[("site1/a.jpg", "2")]["classification"] == "blue"
    assert rows[("site1/b.jpg", "0")]["error"] and not rows[("site1/b.jpg", "0")]["classification"]
