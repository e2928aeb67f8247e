"""Zero-shot: template averaging, metrics with known answers, and agreement with a
plain-loop reference implementation of the paper's protocol."""

import math

import numpy as np
import pytest

from treeclip.evaluate.zeroshot import (
    AS_GIVEN, class_embeddings, class_text, mean_per_class_recall, topk_accuracy,
    zero_shot_metrics,
)
from treeclip.taxonomy.taxon import Taxon


def table_encoder(table):
    return lambda texts: np.asarray([table[t] for t in texts], dtype=np.float32)


def test_template_averaging_normalises_each_template_first():
    table = {
        "x a.": [1, 0, 0], "y a.": [0, 2, 0],   # class a: templates of unequal length
        "x b.": [0, 0, 3], "y b.": [0, 0, 1],
    }
    emb = class_embeddings(table_encoder(table), ["a", "b"], ["x {}.", "y {}."])
    s = 1 / math.sqrt(2)
    # mean of unit vectors (1,0,0) and (0,1,0), renormalised; without the per-template
    # normalisation it would be (1,2,0)/sqrt(5)
    np.testing.assert_allclose(emb[0], [s, s, 0], atol=1e-7)
    np.testing.assert_allclose(emb[1], [0, 0, 1], atol=1e-7)
    assert emb.dtype == np.float32


def test_known_metrics():
    classes = np.eye(3, dtype=np.float32)
    images = np.array([[0.9, 0.1, 0.0],    # -> 0, label 0
                       [0.2, 0.7, 0.1],    # -> 1, label 0 (2nd best is 0)
                       [0.1, 0.3, 0.6],    # -> 2, label 1 (2nd best 1)
                       [0.0, 0.2, 0.8]],   # -> 2, label 2
                      np.float32)
    labels = np.array([0, 0, 1, 2])
    m = zero_shot_metrics(images, labels, classes, logit_scale=100.0)
    assert m["top1"] == 0.5
    assert m["top3"] == 1.0 and m["top5"] == 1.0  # k is capped at the number of classes
    assert topk_accuracy(images @ classes.T, labels, 2) == 1.0
    # recalls: class 0 1/2, class 1 0/1, class 2 1/1
    assert m["per_class_recall"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert m["n"] == 4


def test_ties_go_to_lower_class_index():
    scores = np.array([[1.0, 1.0, 0.0]])
    assert topk_accuracy(scores, np.array([0]), 1) == 1.0
    assert topk_accuracy(scores, np.array([1]), 1) == 0.0
    assert mean_per_class_recall(np.array([0, 0]), np.array([0, 1])) == 0.5


def test_class_text_types():
    t = Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia",
                 common="black-billed magpie")
    assert class_text(t, "magpie", "taxon_com") == (
        "Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia with common name black-billed magpie")
    assert class_text(t, "magpie", "com") == "black-billed magpie"
    assert class_text(t, "magpie", "sci") == "Pica hudsonia"
    assert class_text(t, "magpie", AS_GIVEN) == "magpie"
    assert class_text(None, "Apple scab", "taxon_com") == "Apple scab"
    with pytest.raises(ValueError):
        class_text(t, "x", "latin")


# -- an independent, straightforward implementation in plain loops ------------------
def reference_zero_shot(image_feats, labels, text_table, names, templates, scale):
    dim = len(next(iter(text_table.values())))
    class_vecs = []
    for name in names:
        acc = [0.0] * dim
        for tpl in templates:
            v = text_table[tpl.replace("{}", name)]
            norm = math.sqrt(sum(x * x for x in v))
            for j in range(dim):
                acc[j] += v[j] / norm / len(templates)
        norm = math.sqrt(sum(x * x for x in acc))
        class_vecs.append([x / norm for x in acc])
    top = {1: 0, 3: 0, 5: 0}
    hits, counts = {}, {}
    for img, y in zip(image_feats, labels):
        scores = [scale * sum(float(a) * b for a, b in zip(img, c)) for c in class_vecs]
        order = sorted(range(len(scores)), key=lambda c: (-scores[c], c))
        for k in top:
            top[k] += y in order[:k]
        counts[y] = counts.get(y, 0) + 1
        hits[y] = hits.get(y, 0) + (order[0] == y)
    n = len(labels)
    recall = sum(hits[c] / counts[c] for c in counts) / len(counts)
    return {"top1": top[1] / n, "top3": top[3] / n, "top5": top[5] / n, "per_class_recall": recall}


def test_agrees_with_reference_implementation():
    rng = np.random.default_rng(7)
    names = [f"species {i}" for i in range(9)]
    templates = ["a photo of {}.", "a drawing of the {}.", "itap of a {}."]
    table = {t.replace("{}", n): rng.normal(size=16).astype(np.float32).tolist() for n in names for t in templates}
    labels = rng.integers(0, len(names), size=60)
    emb = class_embeddings(table_encoder(table), names, templates)
    # images near their class, with enough noise that the metrics are not trivial
    images = emb[labels] + rng.normal(scale=0.35, size=(60, 16)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    ours = zero_shot_metrics(images, labels, emb, logit_scale=100.0)
    ref = reference_zero_shot(images, labels.tolist(), table, names, templates, 100.0)
    assert 0.2 < ours["top1"] < 0.95  # non-trivial
    for key, value in ref.items():
        assert ours[key] == value, key


def test_real_model_text_batches_match_one_by_one():
    from treeclip.model import load_model

    model = load_model("micro-vit-32")
    names = ["Pica hudsonia", "Corvus corax", "Apis mellifera"]
    templates = ["a photo of {}.", "a bad photo of a {}."]
    emb = class_embeddings(model.encode_texts, names, templates)
    for c, name in enumerate(names):
        per = [model.encode_texts([t.replace("{}", name)])[0].numpy() for t in templates]
        mean = np.mean(per, axis=0)
        np.testing.assert_allclose(emb[c], mean / np.linalg.norm(mean), atol=1e-5)


def test_class_embeddings_equal_open_clips_zero_shot_classifier():
    """Ours is open_clip's `build_zero_shot_classifier` fed by treeclip's length-grouped
    text path; open_clip's own padded `CLIP.encode_text` gives the same up to float32
    rounding of the trimmed attention."""
    import torch
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    from treeclip.model import load_model
    from treeclip.taxonomy.templates import BIOCLIP_TEMPLATES

    model = load_model("micro-vit-32")
    names = ["Pica hudsonia", "Corvus corax", "Apis mellifera", "Animalia Chordata Aves Passeriformes Corvidae Pica",
             "black-billed magpie"]
    templates = list(BIOCLIP_TEMPLATES[:12])
    ours = class_embeddings(model.encode_texts, names, templates)
    theirs = build_zero_shot_classifier(model.model.eval(), model.tokenizer, names, templates,
                                        num_classes_per_batch=2)
    assert theirs.dtype == torch.float32 and tuple(theirs.shape) == (model.embed_dim, len(names))
    assert np.abs(ours - theirs.T.numpy()).max() <= 1e-6


def test_rank_accuracy_counts_a_wrong_species_of_the_right_genus_at_genus():
    from treeclip.evaluate.zeroshot import rank_accuracy
    from treeclip.taxonomy.taxon import Taxon

    a = Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia")
    b = Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "pica")
    c = Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax")
    d = Taxon.of("Plantae", "Tracheophyta", "Magnoliopsida", "Fagales", "Fagaceae", "Quercus", "alba")
    labels = np.array([0, 0, 2, 3])
    pred = np.array([0, 1, 0, 2])  # right; same genus; same family; other kingdom
    acc = rank_accuracy(pred, labels, [a, b, c, d])
    assert acc["species"] == 0.25
    assert acc["genus"] == 0.5
    assert acc["family"] == 0.75 and acc["kingdom"] == 0.75
    assert rank_accuracy(pred, labels, [a, b, None, d]) == {}
