"""The `predict` and `embed` runs behind the CLI: pick the classifier, skip what an
earlier run wrote, stream rows batch by batch, report failures as one line each, and end
with a summary. Returns the exit code (0, or 1 when some inputs failed)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

from treeclip.errors import EXIT_OK, EXIT_SOME_FAILED
from treeclip.runtime.images import Item

if TYPE_CHECKING:  # pragma: no cover
    from treeclip.predict.classifiers import BaseClassifier


def make_classifier(model: str, *, taxa: str | None = None, ncbi_limit: int | None = None,
                    subset: Sequence[str] = (), cls_spec: str | None = None, bins: str | None = None,
                    text_type: str = "taxon_com", **common: Any) -> "BaseClassifier":
    """The classifier the options ask for."""
    from treeclip.predict.classifiers import BinningClassifier, CustomLabelsClassifier, TreeOfLifeClassifier
    from treeclip.predict.labels import parse_bins, parse_labels

    if bins:
        return BinningClassifier(model, parse_bins(bins), **common)
    if cls_spec:
        return CustomLabelsClassifier(model, parse_labels(cls_spec), **common)
    return TreeOfLifeClassifier(model, taxa, subset=list(subset), text_type=text_type, ncbi_limit=ncbi_limit, **common)


def run_predict(model: str, items: Sequence[Item], *, rank: str = "species", k: int = 5, min_prob: float = 0.0,
                rollup: float | None = None, fmt: str = "csv", output: str | None = None, overwrite: bool = False,
                progress: bool = True, taxa: str | None = None, ncbi_limit: int | None = None,
                subset: Sequence[str] = (), cls_spec: str | None = None, bins: str | None = None,
                text_type: str = "taxon_com", **common: Any) -> int:
    """Classify `items` and write their rows; see `treeclip predict --help`."""
    from treeclip.predict import output as out
    from treeclip.predict.inputs import unique_names

    custom = bool(cls_spec or bins)
    if custom:
        columns, options = out.label_columns(), {"k": k, "min_prob": min_prob}
    else:
        columns = out.rollup_columns() if rollup is not None else out.tree_columns(rank)
        options = {"rank": rank, "k": k, "min_prob": min_prob, "rollup": rollup}
    writer = out.PredictionWriter(output, fmt, columns, resume=not overwrite)
    items = unique_names(items)
    todo = [it for it in items if it.name not in writer.done]
    skipped = len(items) - len(todo)
    if not todo:  # all done by an earlier run: no need to load the model
        writer.close()
        print(f"treeclip predict: nothing to do, all {skipped} images are in {output}", file=sys.stderr)
        return EXIT_OK
    clf = make_classifier(model, taxa=taxa, ncbi_limit=ncbi_limit, subset=subset, cls_spec=cls_spec,
                          bins=bins, text_type=text_type, progress=progress, **common)
    bar = _bar(len(todo), progress)
    failed, start = 0, time.perf_counter()
    for rows in clf.predict_batches(todo, **options):
        writer.write(rows)
        for row in rows:
            if row.get("error"):
                failed += 1
                _say(row["error"], bar)
        if bar is not None:
            bar.update(len({r["file_name"] for r in rows}))
    if bar is not None:
        bar.close()
    writer.close()
    seconds = time.perf_counter() - start
    rate = f", {len(todo) / seconds:.1f} img/s" if todo and seconds > 0 else ""
    where = f" -> {output}" if output else ""
    print(f"treeclip predict: {len(todo) - failed} classified, {failed} failed, {skipped} skipped "
          f"(already in the output){where} [{clf.precision} on {clf.encoder.device}{rate}]", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def run_embed(model: str, items: Sequence[Item], *, output: str, normalize: bool = False, progress: bool = True,
              **common: Any) -> int:
    """Embed `items` and write them; see `treeclip embed --help`."""
    from treeclip.predict.embed import embed_images, write_embeddings
    from treeclip.predict.inputs import unique_names

    emb = embed_images(model, unique_names(items), normalize=normalize, progress=progress, **common)
    for line in emb.errors.values():
        print(f"treeclip: {line}", file=sys.stderr)
    files = write_embeddings(output, emb)
    print(f"treeclip embed: {len(emb.names)} embedded, {len(emb.errors)} failed -> "
          f"{', '.join(map(str, files))} [{emb.precision}]", file=sys.stderr)
    return EXIT_SOME_FAILED if emb.errors else EXIT_OK


def _bar(total: int, progress: bool):
    if not progress or not total:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="predicting", file=sys.stderr)


def _say(line: str, bar) -> None:
    if bar is not None:
        bar.write(f"treeclip: {line}", file=sys.stderr)
    else:
        print(f"treeclip: {line}", file=sys.stderr)
