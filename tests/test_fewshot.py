"""SimpleShot CL2N few-shot: the centring step, the per-class split, and agreement with a
plain-loop reference implementation of the facts file's protocol."""

import math

import numpy as np
import pytest

from treeclip.evaluate.fewshot import cl2n_predict, few_shot, split_support_query


def test_centring_step_changes_the_answer():
    # Unit support vectors s0=(1,0), s1=(0,1), s2=(0.6,0.8); their mean m=(0.533,0.6).
    # The query q=(0.8,0.6) is nearest s2 by plain L2-normalised distance (dot 0.96),
    # but q-m=(0.267,0) points along x, and the centred, renormalised s0-m=(0.614,-0.789)
    # is the nearest centroid there (dots 0.614, -0.8, 0.316): CL2N says class 0.
    support = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = np.array([0, 1, 2])
    query = np.array([[0.8, 0.6]])
    plain = np.argmin(((query[:, None] - support[None]) ** 2).sum(-1), axis=1)
    assert plain.tolist() == [2]
    assert cl2n_predict(support, labels, query).tolist() == [0]


def test_centre_is_the_support_mean_only():
    # Many queries far off to one side must not move the centre: predicting them all at
    # once gives the same answers as one at a time.
    support = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = np.array([0, 1, 2])
    queries = np.array([[0.8, 0.6]] + [[-1.0, 0.1]] * 20 + [[0.1, 1.0]])
    together = cl2n_predict(support, labels, queries)
    alone = [cl2n_predict(support, labels, q[None])[0] for q in queries]
    assert together.tolist() == alone
    assert together[0] == 0


def test_split_keeps_k_support_per_class_and_skips_small_classes():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    s, q, skipped = split_support_query(labels, 2, seed=0)
    assert sorted(labels[s].tolist()) == [0, 0, 1, 1]
    assert sorted(labels[q].tolist()) == [0] * 4 + [1]
    assert skipped == 1 and not set(s) & set(q)
    s2, _, _ = split_support_query(labels, 2, seed=0)
    assert s.tolist() == s2.tolist()  # seeded


def test_known_answer_few_shot():
    # Two well separated classes: every trial is perfect, std 0.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 8)) * 0.05 + np.eye(8)[0]
    b = rng.normal(size=(10, 8)) * 0.05 + np.eye(8)[1]
    feats = np.vstack([a, b])
    labels = np.array([0] * 10 + [1] * 10)
    r = few_shot(feats, labels, 1)
    assert r["mean"] == 1.0 and r["std"] == 0.0 and len(r["trials"]) == 5


# -- an independent, straightforward implementation in plain loops ------------------
def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def reference_few_shot(features, labels, k, seeds=(0, 1, 2, 3, 4)):
    accs = []
    classes = sorted(set(labels))
    for seed in seeds:
        rng = np.random.default_rng(seed)
        support, query = [], []
        for c in classes:
            members = [i for i, y in enumerate(labels) if y == c]
            if len(members) <= k:
                continue
            perm = rng.permutation(len(members))
            shuffled = [members[p] for p in perm]
            support += shuffled[:k]
            query += shuffled[k:]
        unit = {i: _unit(list(map(float, features[i]))) for i in support + query}
        dim = len(features[0])
        mean = [sum(unit[i][j] for i in support) / len(support) for j in range(dim)]
        tf = {i: _unit([unit[i][j] - mean[j] for j in range(dim)]) for i in support + query}
        cents = {}
        for c in classes:
            members = [i for i in support if labels[i] == c]
            if members:
                cents[c] = [sum(tf[i][j] for i in members) / len(members) for j in range(dim)]
        right = 0
        for i in query:
            dists = {c: math.sqrt(sum((tf[i][j] - v[j]) ** 2 for j in range(dim))) for c, v in cents.items()}
            best = min(sorted(dists), key=lambda c: dists[c])
            right += best == labels[i]
        accs.append(right / len(query))
    mean = sum(accs) / len(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
    return accs, mean, std


@pytest.mark.parametrize("k", [1, 5])
def test_agrees_with_reference_implementation(k):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 12))
    labels = rng.integers(0, 6, size=70)
    feats = (centres[labels] + rng.normal(scale=1.3, size=(70, 12))).astype(np.float32)
    r = few_shot(feats, labels, k)
    accs, mean, std = reference_few_shot(feats, labels.tolist(), k)
    assert r["trials"] == accs
    assert r["mean"] == mean
    assert r["std"] == pytest.approx(std, abs=1e-12)
    assert 0.2 < r["mean"] < 0.98  # non-trivial
    assert len(set(accs)) > 1  # trials differ: the seeds are used
