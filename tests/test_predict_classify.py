"""The classifiers on the micro model: ranks agree with a dict reference, subsets,
roll-up, custom labels, bins, bad inputs, worker decoding, the fast path, embeddings."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from predict_helpers import MODEL, TAXA, make_bad_inputs, make_images
from treeclip.cache import CachePaths
from treeclip.predict import BinningClassifier, CustomLabelsClassifier, TreeOfLifeClassifier, embed_images
from treeclip.runtime.options import InferenceOptions
from treeclip.taxonomy.taxon import RANKS

EMBED0 = InferenceOptions.for_verb("embed", workers=0)
OPTS = dict(options=InferenceOptions(templates="single", workers=0, batch_size=4))


@pytest.fixture(scope="module")
def clip():
    from treeclip.model import create_model

    return create_model(MODEL, seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("imgs"), n=7)


@pytest.fixture(scope="module")
def tol(clip, tmp_path_factory):
    return TreeOfLifeClassifier(clip, TAXA, caches=CachePaths(tmp_path_factory.mktemp("cache")), **OPTS)


def by_image(rows):
    out = collections.defaultdict(list)
    for r in rows:
        out[r["file_name"]].append(r)
    return out


def test_species_rows_have_pybioclip_columns_and_sum_to_one(tol, images):
    rows = tol.predict(images, rank="species", k=len(TAXA))
    assert list(rows[0]) == ["file_name", *RANKS[:6], "species_epithet", "species", "common_name", "score"]
    for name, rs in by_image(rows).items():
        assert len(rs) == len(TAXA)
        assert sum(r["score"] for r in rs) == pytest.approx(1.0, abs=1e-5)
        assert [r["score"] for r in rs] == sorted((r["score"] for r in rs), reverse=True)
    row = next(r for r in rows if r["genus"] == "Pica" and r["species_epithet"] == "hudsonia")
    assert row["species"] == "Pica hudsonia" and row["common_name"] == "black-billed magpie"


@pytest.mark.parametrize("rank", RANKS[:6])
def test_every_rank_equals_dict_sum_of_species_rows(tol, images, rank):
    species = tol.predict(images, rank="species", k=len(TAXA))
    grouped = tol.predict(images, rank=rank, k=100)
    depth = RANKS.index(rank) + 1
    for name, rs in by_image(species).items():
        reference = collections.defaultdict(float)
        for r in rs:
            reference[tuple(r[c] for c in RANKS[:depth])] += r["score"]
        got = {tuple(r[c] for c in RANKS[:depth]): r["score"] for r in by_image(grouped)[name]}
        assert got.keys() == reference.keys()
        for key, value in reference.items():
            assert got[key] == pytest.approx(value, abs=1e-6)


def test_k_and_min_prob(tol, images):
    rows = tol.predict(images[:2], rank="family", k=2)
    assert [len(v) for v in by_image(rows).values()] == [2, 2]
    rows = tol.predict(images[:2], rank="species", k=9, min_prob=0.99)
    assert [len(v) for v in by_image(rows).values()] == [1, 1]  # each image keeps its best answer
    rows = tol.predict(images[:2], rank="species", k=9, min_prob=0.12)
    assert all(r["score"] >= 0.12 for r in rows[1:])


def test_subset_restricts_the_softmax(clip, tol, images, tmp_path):
    insects = TreeOfLifeClassifier(clip, TAXA, subset="class=Insecta", caches=tol.caches, **OPTS)
    assert len(insects.taxa) == 3
    rows = insects.predict(images, rank="species", k=9)
    assert {r["class"] for r in rows} == {"Insecta"}
    for rs in by_image(rows).values():
        assert len(rs) == 3 and sum(r["score"] for r in rs) == pytest.approx(1.0, abs=1e-5)
    # the same logits as the full table, renormalised over the subset
    full = {(r["file_name"], r["species"]): r["score"] for r in tol.predict(images, rank="species", k=9)}
    for name, rs in by_image(rows).items():
        total = sum(full[(name, r["species"])] for r in rs)
        for r in rs:
            assert r["score"] == pytest.approx(full[(name, r["species"])] / total, rel=1e-4)
    (tmp_path / "list.txt").write_text("Danaus plexippus\nCorvidae\n")
    both = TreeOfLifeClassifier(clip, TAXA, subset=["class=Insecta", str(tmp_path / "list.txt")],
                                caches=tol.caches, **OPTS)
    assert [t.scientific_name for t in both.taxa] == ["Danaus plexippus"]


def test_rollup_thresholds(tol, images):
    deepest = tol.predict(images[:3], rollup=1e-6)
    assert [r["rank"] for r in deepest] == ["species"] * 3
    assert all(r["score"] >= 1e-6 and r["species"] for r in deepest)
    for r in tol.predict(images[:3], rollup=0.5):
        assert r["rank"] in (*RANKS, "unknown")
        if r["rank"] != "unknown":
            assert r["score"] >= 0.5
            names = [r.get(x, "") for x in RANKS[:RANKS.index(r["rank"]) + 1]]
            assert names[0]
    unknown = tol.predict(images[:3], rollup=1.0)  # two kingdoms: no rank is certain
    assert {r["rank"] for r in unknown} == {"unknown"}
    assert all("kingdom" not in r for r in unknown)


def test_custom_labels_and_bins(clip, tol, images):
    labels = ["crow", "magpie, black-billed", "rose"]
    custom = CustomLabelsClassifier(clip, labels, caches=tol.caches, **OPTS)
    rows = custom.predict(images, k=3)
    assert list(rows[0]) == ["file_name", "classification", "score"]
    assert {r["classification"] for r in rows} == set(labels)
    binned = BinningClassifier(clip, {"crow": "corvid", "magpie, black-billed": "corvid", "rose": "plant"},
                               caches=tol.caches, **OPTS)
    brows = binned.predict(images, k=5)
    per_label = {(r["file_name"], r["classification"]): r["score"] for r in rows}
    for name, rs in by_image(brows).items():
        got = {r["classification"]: r["score"] for r in rs}
        assert got["corvid"] == pytest.approx(per_label[(name, "crow")] + per_label[(name, "magpie, black-billed")], abs=1e-6)
        assert got["plant"] == pytest.approx(per_label[(name, "rose")], abs=1e-6)


def test_bad_inputs_get_error_rows_and_the_run_goes_on(tol, images, tmp_path):
    bad = make_bad_inputs(tmp_path)
    inputs = [str(images[0]), str(bad["corrupt"]), str(bad["empty"]), str(bad["text"]), str(tmp_path / "gone.jpg"),
              str(images[1])]
    rows = tol.predict(inputs, rank="genus", k=1)
    assert [r["file_name"] for r in rows] == inputs
    errors = {r["file_name"]: r.get("error", "") for r in rows}
    assert "empty file" in errors[str(bad["empty"])]
    assert "not an image" in errors[str(bad["text"])]
    assert "truncated" in errors[str(bad["corrupt"])] or "corrupt" in errors[str(bad["corrupt"])]
    assert "file not found" in errors[str(tmp_path / "gone.jpg")]
    assert all(errors[str(p)] == "" and "score" in r for p, r in zip(images[:2], [rows[0], rows[-1]]))


def test_worker_processes_and_pil_inputs_give_the_same_answers(clip, tol, images):
    from PIL import Image

    from treeclip.data.images import decode_image

    in_process = tol.predict(images, rank="species", k=1)
    workers = TreeOfLifeClassifier(clip, TAXA, caches=tol.caches,
                                   options=InferenceOptions(templates="single", workers=1, batch_size=3))
    assert [(r["file_name"], r["species"]) for r in workers.predict(images, rank="species", k=1)] == \
        [(r["file_name"], r["species"]) for r in in_process]
    pil = [decode_image(p) for p in images]
    assert [r["species"] for r in tol.predict(pil, rank="species", k=1)] == [r["species"] for r in in_process]
    assert isinstance(pil[0], Image.Image)


def noise_pixels(clip, n: int = 32):
    """Preprocessed random-noise images: distinct enough that each is its own best match."""
    from PIL import Image

    rng = np.random.default_rng(0)
    size = clip.image_size
    return torch.stack([clip.preprocess(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)))
                        for _ in range(n)])


def test_fast_path_agrees_with_fp32_on_top1(clip):
    from treeclip.runtime.encoder import ImageEncoder, top1_agreement
    from treeclip.runtime.precision import resolve_precision

    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    assert resolve_precision("fast", torch.device("cpu")) in ("int8", "bf16")  # onnxruntime is a dependency
    pixels = noise_pixels(clip)
    fp32 = ImageEncoder(clip, precision="fp32")(pixels)
    bf16 = ImageEncoder(clip, precision="bf16")(pixels)
    assert torch.allclose(fp32, clip.encode_images(pixels), atol=1e-5)  # the fp32 path is the model's own
    assert (fp32 - bf16).abs().max() < 0.05
    # labels = the fp32 embeddings themselves: top-1 must stay each image's own label
    assert top1_agreement(fp32, bf16, fp32) == 1.0
    assert clip.model.visual.conv1.weight.dtype == torch.float32  # the caller's model is untouched


def _item(path):
    from treeclip.runtime.images import Item

    return Item(str(path), str(path))


def test_embed_images_normalised_and_raw(clip, images, tmp_path):
    from treeclip.predict.embed import write_embeddings

    bad = make_bad_inputs(tmp_path / "bad")
    raw = embed_images(clip, [*map(str, images), str(bad["empty"])], options=EMBED0, normalize=False)
    unit = embed_images(clip, [*map(str, images)], options=EMBED0, normalize=True)
    assert raw.names == unit.names == [str(p) for p in images]
    assert list(raw.errors) == [str(bad["empty"])]
    assert np.allclose(np.linalg.norm(unit.vectors, axis=1), 1, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw.vectors, axis=1), 1, atol=1e-3)
    assert np.allclose(raw.vectors / np.linalg.norm(raw.vectors, axis=1, keepdims=True), unit.vectors, atol=1e-5)
    import pyarrow.parquet as pq

    write_embeddings(tmp_path / "e.parquet", raw)
    table = pq.read_table(tmp_path / "e.parquet").to_pydict()
    assert table["file_name"][-1] == str(bad["empty"]) and table["embedding"][-1] is None
    assert np.allclose(np.array(table["embedding"][:len(images)]), raw.vectors)
    files = write_embeddings(tmp_path / "e.npy", raw)
    assert np.array_equal(np.load(files[0]), raw.vectors)
    assert files[1].read_text().splitlines()[1] == f"0,{images[0]},"


def test_int8_path_agrees_with_fp32_on_top1(clip, tol, images, tmp_path):
    from treeclip.runtime.encoder import ImageEncoder, top1_agreement

    pixels = noise_pixels(clip)
    fp32 = ImageEncoder(clip, precision="fp32")(pixels)
    int8 = ImageEncoder(clip, precision="int8", caches=CachePaths(tmp_path / "cache"))
    assert len(list((tmp_path / "cache" / "onnx").glob("*-int8-v*.onnx"))) == 1  # exported once, cached
    feats = int8(pixels)
    assert feats.shape == fp32.shape and torch.allclose(feats.norm(dim=-1), torch.ones(len(feats)), atol=1e-4)
    assert (feats - fp32).abs().max() < 0.2
    assert top1_agreement(fp32, feats, fp32) == 1.0
    # one image at a time: an answer does not depend on its batch mates
    assert torch.equal(int8(pixels[:5])[3], int8(pixels[3:4])[0])
    rows = TreeOfLifeClassifier(clip, TAXA, caches=CachePaths(tmp_path / "cache"),
                                options=OPTS["options"].replace(precision="int8")).predict(
        images[:2], rank="family", k=1)
    assert len(rows) == 2 and all(r["score"] > 0 for r in rows)


def test_threaded_decoding_keeps_input_order_and_errors(clip, images, tmp_path):
    """Decoding in threads one batch ahead: the same batches, pixels and error lines as
    decoding inline one item at a time, and a consumer that stops early does not hang."""
    import threading

    from treeclip.runtime.images import decode_item, iter_batches

    bad = make_bad_inputs(tmp_path / "bad")
    items = [_item(p) for p in [*images[:3], bad["corrupt"], *images[3:], bad["text"]]]
    batches = list(iter_batches(items, clip.preprocess, batch_size=3, workers=0))
    assert [b[0] for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    errors = {i: e for b in batches for i, e in b[3].items()}
    assert sorted(errors) == [3, 8] and str(bad["corrupt"]) in errors[3]
    pixels = torch.cat([b[2] for b in batches])
    ok = [i for b in batches for i in b[1]]
    assert torch.equal(pixels, torch.stack([decode_item(items[i], clip.preprocess)[0] for i in ok]))
    before = set(threading.enumerate())
    stream = iter_batches(items, clip.preprocess, batch_size=2, workers=0)
    next(stream)
    assert [t for t in threading.enumerate() if t.name.startswith("treeclip-decode") and t not in before]
    stream.close()  # shuts its decode threads down
    assert not [t for t in threading.enumerate() if t.name.startswith("treeclip-decode") and t not in before]
