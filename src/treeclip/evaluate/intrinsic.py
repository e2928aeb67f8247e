"""Intrinsic analysis: does the image space follow the tree of life?

Numbers (ours; the paper has only pictures), per rank, over the images named at that rank:
- `knn_accuracy`: leave-one-out k-NN (cosine, k=5, majority vote, ties to the nearer
  neighbour) predicts the image's taxon at that rank;
- `silhouette`: silhouette score of the features (cosine) labelled by the taxon at that rank;
and over all images:
- `lca_depth`: mean depth of the lowest common rank of each image and its nearest
  neighbour (1 = kingdom .. 7 = species; 0 = different kingdoms), beside `lca_depth_chance`,
  the same for random pairs, so that "follows the tree" is a number above chance.

Pictures: t-SNE of the image features, one panel per rank, each zoomed into the largest
taxon of the rank above and coloured by its children (the paper's figure), one row per
model with the same points and colours in every row.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from treeclip.runtime.labels import l2_normalise
from treeclip.taxonomy.taxon import RANKS, Taxon, rank_index


def _depth(a: Taxon, b: Taxon) -> int:
    rank = a.lowest_common_rank(b)
    return rank_index(rank) + 1 if rank else 0


def _neighbours(x: np.ndarray, m: int, block: int = 1024) -> np.ndarray:
    """(n, m) indices of each row's m most cosine-similar other rows, nearest first."""
    n = len(x)
    m = min(m, n - 1)
    out = np.empty((n, m), dtype=np.int64)
    for s in range(0, n, block):
        sim = x[s:s + block] @ x.T
        sim[np.arange(len(sim)), np.arange(s, s + len(sim))] = -np.inf  # not itself
        part = np.argpartition(-sim, m - 1, axis=1)[:, :m] if m < n - 1 else np.argsort(-sim, axis=1)[:, :m]
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
        out[s:s + block] = np.take_along_axis(part, order, axis=1)
    return out


def _vote(labels: Sequence[str]) -> str:
    counts = Counter(labels)
    best = max(counts.values())
    return next(lab for lab in labels if counts[lab] == best)  # ties: the nearer neighbour wins


def hierarchy_measures(features: np.ndarray, taxa: Sequence[Taxon | None], *, k: int = 5,
                       max_points: int = 5000, seed: int = 0, silhouette: bool = True) -> dict:
    """The per-rank numbers of the module docstring. Images without a taxon are left
    out; above `max_points` a seeded sample is used. `silhouette=False` leaves out the
    silhouettes (quadratic in the images; most of this function's time)."""
    keep = np.asarray([t is not None and not t.is_empty for t in taxa])
    idx = np.flatnonzero(keep)
    rng = np.random.default_rng(seed)
    if len(idx) > max_points:
        idx = np.sort(rng.choice(idx, max_points, replace=False))
    x = l2_normalise(np.asarray(features, np.float32)[idx])
    tx = [taxa[i] for i in idx]
    n = len(tx)
    result: dict = {"n": n, "k": k, "ranks": {}}
    if n < 3:
        return result
    nbrs = _neighbours(x, max(k * 10, 50))
    for rank in RANKS:
        r = rank_index(rank)
        # a taxon at a rank is its whole lineage down to it (homonyms in two kingdoms differ)
        names = [t.lineage[:r + 1] if t.lineage[r] else None for t in tx]
        named = [i for i in range(n) if names[i] is not None]
        stats: dict = {"n": len(named), "n_taxa": len({names[i] for i in named})}
        if len(named) >= 2:
            right = 0
            for i in named:
                votes = [names[j] for j in nbrs[i] if names[j] is not None][:k]
                right += bool(votes) and _vote(votes) == names[i]
            stats["knn_accuracy"] = right / len(named)
        if silhouette:
            stats["silhouette"] = _silhouette(x[named], [names[i] for i in named])
        result["ranks"][rank] = stats
    result["lca_depth"] = float(np.mean([_depth(tx[i], tx[nbrs[i][0]]) for i in range(n)]))
    a = rng.integers(0, n, size=min(20000, n * 20))
    b = (a + rng.integers(1, n, size=len(a))) % n  # a random other image
    result["lca_depth_chance"] = float(np.mean([_depth(tx[i], tx[j]) for i, j in zip(a, b)]))
    return result


def _silhouette(x: np.ndarray, labels: list) -> float | None:
    """Cosine silhouette, or None where it is undefined (fewer than 2 or as many taxa as images)."""
    codes = {lab: c for c, lab in enumerate(dict.fromkeys(labels))}
    if not 2 <= len(codes) < len(labels):
        return None
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(x, [codes[lab] for lab in labels], metric="cosine"))


# -- t-SNE panels ---------------------------------------------------------------------
def panel_subsets(taxa: Sequence[Taxon | None]) -> list[dict]:
    """One panel per rank, zooming in as the paper's figure does: the kingdom panel
    holds every image; each next panel holds the images inside the largest taxon (by
    images named at the panel's rank, preferring taxa with two children or more) of the
    rank above, within the previous panel's parent, each labelled by its taxon at the
    panel's rank."""
    panels = []
    lineage: tuple[str, ...] | None = ()
    parent = "all images"
    for r, rank in enumerate(RANKS):
        if r > 0 and lineage is not None:
            counts = Counter(t.lineage[:r] for t in taxa if t is not None and t.lineage[:r - 1] == lineage
                             and t.lineage[r - 1] and t.lineage[r])
            children: dict[tuple, set] = {}
            for t in taxa:
                if t is not None and t.lineage[:r] in counts:
                    children.setdefault(t.lineage[:r], set()).add(t.lineage[r])
            # the largest taxon that has two children or more to colour; ties by name
            lineage = min(counts, key=lambda lin: (len(children[lin]) < 2, -counts[lin], lin)) if counts else None
            parent = lineage[-1] if lineage else None
        if lineage is None:
            panels.append({"rank": rank, "parent": None, "members": [], "labels": []})
            continue
        members = [i for i, t in enumerate(taxa) if t is not None and t.lineage[:r] == lineage and t.lineage[r]]
        labels = [taxa[i].lineage[r] if r < 6 else taxa[i].scientific_name for i in members]
        panels.append({"rank": rank, "parent": parent, "members": members, "labels": labels})
    return panels


def _tsne(x: np.ndarray, seed: int, perplexity: float) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perp = max(1.0, min(perplexity, (len(x) - 1) / 3))
    # Small panels: the exact gradient is quicker than Barnes-Hut's tree, and one thread
    # avoids OpenMP spin-waiting that made a 30-point t-SNE take 20 s on a busy 2-core box.
    method = "exact" if len(x) < 100 else "barnes_hut"
    with threadpool_limits(1 if len(x) < 5000 else None):
        return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed, metric="cosine",
                    max_iter=500, method=method).fit_transform(l2_normalise(x.astype(np.float32)))


def tsne_figure(model_features: Mapping[str, np.ndarray], taxa: Sequence[Taxon | None], out_png,
                *, max_points: int = 1500, perplexity: float = 30.0, seed: int = 0, max_colours: int = 10,
                title: str = "") -> list[dict]:
    """Draw the panels (columns: ranks; rows: models) to `out_png`; returns, per panel,
    the rank, the parent taxon and the number of points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from treeclip.fsutil import atomic_path

    panels = panel_subsets(taxa)
    rng = np.random.default_rng(seed)
    models = list(model_features)
    fig, axes = plt.subplots(len(models), len(panels), figsize=(3.2 * len(panels), 3.2 * len(models)),
                             squeeze=False)
    cmap = plt.get_cmap("tab10" if max_colours <= 10 else "tab20")
    info = []
    for c, panel in enumerate(panels):
        members, labels = np.asarray(panel["members"], dtype=np.int64), panel["labels"]
        if len(members) > max_points:
            pick = np.sort(rng.choice(len(members), max_points, replace=False))
            members, labels = members[pick], [labels[p] for p in pick]
        top = [lab for lab, _ in Counter(labels).most_common(max_colours)]
        colour = {lab: cmap(i % cmap.N) for i, lab in enumerate(top)}
        drawable = len(members) >= 5 and len(set(labels)) >= 2
        info.append({"rank": panel["rank"], "parent": panel["parent"], "n": int(len(members)),
                     "n_taxa": len(set(labels)), "drawn": drawable})
        for r, model in enumerate(models):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{panel['rank']} in {panel['parent']}" if panel["parent"] else panel["rank"], fontsize=9)
            if c == 0:
                ax.set_ylabel(model, fontsize=9)
            if not drawable:
                ax.text(0.5, 0.5, "too few points\nor taxa", ha="center", va="center", fontsize=8,
                        transform=ax.transAxes)
                continue
            xy = _tsne(np.asarray(model_features[model])[members], seed, perplexity)
            cols = [colour.get(lab, (0.75, 0.75, 0.75, 1.0)) for lab in labels]
            ax.scatter(xy[:, 0], xy[:, 1], c=cols, s=6, linewidths=0)
            if r == len(models) - 1:
                handles = [plt.Line2D([], [], marker="o", ls="", color=colour[lab], markersize=4) for lab in top]
                ax.legend(handles, top, fontsize=5, loc="upper center", bbox_to_anchor=(0.5, -0.02),
                          ncol=2, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return info


def hierarchy_figure(measures: Mapping[str, dict], out_png, *, title: str = "") -> None:
    """k-NN accuracy per rank, one line per model (label -> `hierarchy_measures` result)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from treeclip.fsutil import atomic_path

    fig, ax = plt.subplots(figsize=(8.5, 3.5))
    for label, m in measures.items():
        ranks = [r for r in RANKS if "knn_accuracy" in m.get("ranks", {}).get(r, {})]
        ax.plot(ranks, [100 * m["ranks"][r]["knn_accuracy"] for r in ranks], marker="o",
                label=f"{label} (LCA depth {m.get('lca_depth', float('nan')):.2f})")
    ax.set_ylabel("k-NN accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines, not over them
    ax.set_title(title or "image features by rank", fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
