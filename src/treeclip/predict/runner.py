"""The `predict` and `embed` runs behind the CLI: pick the classifier, skip what an
earlier run wrote, stream rows batch by batch, report failures as one line each, and end
with a summary. Returns the exit code (0, or 1 when some inputs failed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from treeclip.cache import CachePaths, caches_or_default
from treeclip.errors import EXIT_OK, EXIT_SOME_FAILED
from treeclip.log import get_logger, progress_bar
from treeclip.predict.detections import DetectionOptions, detection_rows, empty_rows, read_detections
from treeclip.predict.options import AnswerOptions, LabelChoice, OutputOptions
from treeclip.runtime.images import Item
from treeclip.runtime.options import InferenceOptions

log = get_logger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from treeclip.predict.classifiers import BaseClassifier


def make_classifier(model: str, labels: LabelChoice, options: InferenceOptions, caches: CachePaths, *,
                    progress: bool = False) -> "BaseClassifier":
    """The classifier `labels` ask for."""
    from treeclip.predict.classifiers import (BinningClassifier, CustomLabelsClassifier, HeadClassifier,
                                              TreeOfLifeClassifier)
    from treeclip.predict.labels import parse_bins, parse_labels

    shared = {"options": options, "caches": caches, "progress": progress}
    if labels.head:
        return HeadClassifier(model, labels.head, **shared)
    if labels.bins:
        return BinningClassifier(model, parse_bins(labels.bins), **shared)
    if labels.cls_spec:
        return CustomLabelsClassifier(model, parse_labels(labels.cls_spec), **shared)
    return TreeOfLifeClassifier(model, labels.taxa, subset=list(labels.subset), text_type=labels.text_type,
                                ncbi_limit=labels.ncbi_limit, **shared)


def _run_identity(verb: str, model: str, options: InferenceOptions) -> dict:
    """What every predict/embed output depends on: the model, the precision that runs on
    this machine, and the resize mode (only when not the default, so outputs written
    before `--resize` existed still resume)."""
    from treeclip.predict.runs import model_identity
    from treeclip.runtime.precision import resolve_device, resolve_precision

    identity = {"verb": verb, "model": model_identity(model),
                "precision": resolve_precision(options.precision, resolve_device(options.device))}
    return identity if options.resize == "crop" else {**identity, "resize": options.resize}


def run_predict(model: str, items: Sequence[Item], *, labels: LabelChoice = LabelChoice(),
                answers: AnswerOptions = AnswerOptions(), output: OutputOptions = OutputOptions(),
                options: InferenceOptions | None = None, caches: CachePaths | None = None,
                detections: DetectionOptions | None = None, progress: bool = True) -> int:
    """Classify `items` and write their rows; see `treeclip predict --help`. With
    `detections` (a MegaDetector batch output) the inputs are its kept detections, each
    classified on its crop (`predict.detections`). Under torchrun the inputs are split over
    the ranks and the parts merged (`predict.runs`)."""
    from treeclip.predict import output as out
    from treeclip.predict.inputs import unique_names
    from treeclip.predict.runs import file_identity

    options, caches = options or InferenceOptions.for_verb("predict"), caches_or_default(caches)
    row_options = answers.for_labels(labels)
    if labels.custom:
        columns = out.label_columns()
    else:
        columns = out.rollup_columns() if answers.rollup is not None else out.tree_columns(answers.rank)
    identity = {**_run_identity("predict", model, options), "taxa": file_identity(labels.taxa),
                "ncbi_limit": labels.ncbi_limit, "subset": [file_identity(s) for s in labels.subset],
                "labels": file_identity(labels.cls_spec), "bins": file_identity(labels.bins),
                "text_type": labels.text_type, "templates": file_identity(_template_spec(options)),
                "head": _head_identity(labels.head, model),
                "format": output.fmt, **row_options}
    found = read_detections(detections) if detections is not None else None
    if found is not None:
        items, columns = found.items, detections.with_columns(columns)
        identity["detections"] = detections.identity()
    ranks = _Ranks.join(options.device, output.path)
    items = unique_names(items)
    order = found.order if found is not None else [it.name for it in items]
    writer, done, done_errors = ranks.open_output(output, columns, identity)
    if found is not None and ranks.is_main:  # images with nothing to classify: a row each
        writer.write(empty_rows([f for f in found.empty if f not in done]))
    todo = [it for it in items if it.name not in done]
    skipped = len(items) - len(todo)
    earlier = sum(it.name in done_errors for it in items)  # failed in an earlier run, kept as error rows
    mine = ranks.block(todo)
    if not todo:  # all done by an earlier run (every rank sees the same): no need to load the model
        ranks.finish(writer, output, columns, order)
        _write_classified(detections, output, ranks)
        log.info(f"predict: nothing to do, all {skipped} images are in {output.path}{_earlier(earlier)}")
        return EXIT_SOME_FAILED if earlier else EXIT_OK
    clf = make_classifier(model, labels, options, caches, progress=progress and ranks.is_main)
    start = time.perf_counter()
    failed = _classify(clf, mine, writer, row_options, progress and ranks.is_main, found)
    seconds = time.perf_counter() - start
    failed, done_now = ranks.total(failed), ranks.total(len(mine))
    ranks.finish(writer, output, columns, order)
    _write_classified(detections, output, ranks)
    if ranks.is_main:
        rate = f", {done_now / seconds:.1f} img/s" if seconds > 0 else ""
        where = f" -> {output.path}" if output.path else ""
        log.info(f"predict: {done_now - failed} classified, {failed} failed, {skipped} skipped "
                 f"(already in the output{_earlier(earlier)}){where} "
                 f"[{clf.precision} on {clf.encoder.device} ({clf.encoder.backend}){rate}{ranks.describe()}]")
    return EXIT_SOME_FAILED if failed or earlier else EXIT_OK


def _head_identity(head: str | None, model: str) -> str | None:
    """A head folder as identity: its weights' and card's hash (None without a head, as
    outputs made before `--head` existed record it). A folder that is not a head, or a
    head for another model dir (whose `treeclip.json` names its fingerprint), is one
    line here, before any output is touched; `HeadClassifier` checks every model."""
    from treeclip.model.heads import head_fingerprint, read_fitted_head
    from treeclip.predict.runs import model_identity

    if not head:
        return None
    fitted, known = read_fitted_head(head), model_identity(model)
    if known.startswith("fingerprint:"):
        fitted.check_model(known.removeprefix("fingerprint:"), model, head)
    return f"sha256:{head_fingerprint(head)[:32]}"


def _template_spec(options: InferenceOptions) -> str | None:
    """The templates as identity: the spec (a set's name or a file), or the texts joined."""
    return options.templates if isinstance(options.templates, str) else "\n".join(options.templates)


def _earlier(n: int) -> str:
    return f"; {n} of them failed before: --retry-errors tries them again" if n else ""


def _write_classified(detections: DetectionOptions | None, output: OutputOptions, ranks: "_Ranks") -> None:
    """The MegaDetector JSON with the finished output's classifications, when asked."""
    if detections is None or not detections.md_out or not ranks.is_main:
        return
    from treeclip.predict.detections import write_classified
    from treeclip.predict.output import read_rows

    n = write_classified(detections.path, read_rows(Path(output.path), output.fmt), detections.md_out)
    log.info(f"predict: {n} detections classified in {detections.md_out}")


def _classify(clf, items: Sequence[Item], writer, options: dict, progress: bool, found=None) -> int:
    """Stream `items` through `clf` into `writer` (detection crops' rows get their
    detection's columns); each failure one line; returns failures."""
    failed = 0
    with progress_bar(len(items), desc="predicting", enabled=progress and bool(items)) as bar:
        for rows in clf.predict_batches(list(items), **options):
            writer.write(detection_rows(rows, found) if found is not None else rows)
            for row in rows:
                if row.get("error"):
                    failed += 1
                    log.warning(row["error"])
            bar.update(len({r["file_name"] for r in rows}))
    return failed


class _Ranks:
    """This process's place in a torchrun/srun run (one process: rank 0 of 1): the output
    set-up that rank 0 does first, the block of inputs of each rank, sums over ranks and
    the final merge of the rank parts (see `predict.runs`)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    @classmethod
    def join(cls, device: str | None, output: str | None) -> "_Ranks":
        """Join the process group when launched by torchrun/srun; else rank 0 of 1."""
        from treeclip.errors import TreeclipError
        from treeclip.runtime.distributed import init_distributed, world_size

        if world_size() == 1:
            return cls(0, 1)
        if not output:
            raise TreeclipError("under torchrun, give --output: the ranks write parts that are merged into it")
        kind = "cuda" if str(device or "cpu").startswith("cuda") else "cpu"
        info = init_distributed(kind)
        return cls(info.rank, info.world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f", {self.world} ranks" if self.world > 1 else ""

    def block(self, todo: Sequence[Item]) -> list[Item]:
        from treeclip.predict.runs import rank_block

        return rank_block(todo, self.rank, self.world)

    def barrier(self) -> None:
        from treeclip.runtime.distributed import barrier

        barrier()

    def end(self) -> None:
        """Leave the process group once every rank got here (rank 0 may still be writing)."""
        from treeclip.runtime.distributed import cleanup

        if self.world > 1:
            self.barrier()
            cleanup()

    def total(self, value: int) -> int:
        """`value` summed over the ranks."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t)
        return int(t.item())

    def open_output(self, output: OutputOptions, columns: Sequence[str], identity: dict):
        """(writer for this rank's rows, names already done, those of them that are error
        rows). Rank 0 first checks the
        output's identity, folds parts an interrupted run left into it and drops error
        rows to retry; then every rank reads the same done set."""
        from treeclip.predict import output as out

        path, fmt = output.path, output.fmt
        if not path or fmt == "table":
            return out.PredictionWriter(path, fmt, columns, resume=False), set(), set()
        if self.is_main:
            _settle_output(Path(path), fmt, columns, identity, overwrite=output.overwrite,
                           retry_errors=output.retry_errors)
        self.barrier()
        if self.world == 1:
            writer = out.PredictionWriter(path, fmt, columns, resume=True)
            return writer, writer.done, writer.done_errors
        stored = out.read_stored(Path(path), fmt, columns)
        from treeclip.predict.runs import part_path

        errors = {n for n, bad in zip(stored.names, stored.errors) if bad}
        return out.PredictionWriter(part_path(path, self.rank), fmt, columns, resume=False), set(stored.names), errors

    def finish(self, writer, output: OutputOptions, columns: Sequence[str], order: list[str]) -> None:
        """Close this rank's writer; when every rank is done, rank 0 merges the parts."""
        from treeclip.predict import output as out
        from treeclip.predict.runs import existing_parts

        writer.close()
        if self.world > 1:
            self.barrier()
            if self.is_main:
                out.merge_outputs(Path(output.path), existing_parts(output.path), output.fmt, columns, order)
            self.end()  # nobody exits (and ends the run) while rank 0 still merges


def _settle_output(output: Path, fmt: str, columns: Sequence[str], identity: dict, *, overwrite: bool,
                   retry_errors: bool) -> None:
    """Rank 0's set-up of a resumable output: start afresh (`overwrite`) or check the
    identity of what is there, fold in parts an interrupted run left, drop error rows to retry."""
    from treeclip.predict import output as out
    from treeclip.predict.runs import check_identity, existing_parts

    parts = existing_parts(output)
    if overwrite:
        for path in [output, *parts]:
            path.unlink(missing_ok=True)
        parts = []
    fresh = not output.exists() and not parts
    check_identity(output, identity, fresh=overwrite or fresh)
    if parts:
        out.merge_outputs(output, parts, fmt, columns, [])
    out.PredictionWriter(output, fmt, columns, resume=True, retry_errors=retry_errors).close()


def run_embed(model: str, items: Sequence[Item], *, output: OutputOptions, normalize: bool = False,
              chunk: int = 1024, options: InferenceOptions | None = None, caches: CachePaths | None = None,
              progress: bool = True) -> int:
    """Embed `items` and write them to `output.path`; see `treeclip embed --help`.
    Resumable: results are kept in chunks beside the output as they come (`predict.embed`);
    under torchrun the inputs are split over the ranks and rank 0 writes the output."""
    from treeclip.predict.embed import embed_batches
    from treeclip.predict.inputs import unique_names

    options, caches = options or InferenceOptions.for_verb("embed"), caches_or_default(caches)
    identity = {**_run_identity("embed", model, options), "normalize": normalize}
    ranks = _Ranks.join(options.device, output.path)
    items = unique_names(items)
    store = _EmbeddingStore(Path(output.path))
    if ranks.is_main:
        store.settle(identity, overwrite=output.overwrite)
    ranks.barrier()
    done, done_errors = store.done(retry_errors=output.retry_errors)
    todo = [it for it in items if it.name not in done]
    earlier = sum(it.name in done_errors for it in items)
    mine = ranks.block(todo)
    failed, backend = 0, ""
    if todo:
        pending = []
        for emb in embed_batches(model, mine, normalize=normalize, options=options, caches=caches,
                                 progress=progress and ranks.is_main):
            backend = emb.backend
            for line in emb.errors.values():
                log.warning(line)
            failed += len(emb.errors)
            pending.append(emb)
            if sum(len(p.names) + len(p.errors) for p in pending) >= chunk:
                store.save_chunk(pending, ranks.rank)
                pending = []
        if pending:
            store.save_chunk(pending, ranks.rank)
    ranks.barrier()
    embedded, failed = ranks.total(len(mine) - failed), ranks.total(failed)
    if ranks.is_main:
        files = store.finish([it.name for it in items])
        log.info(f"embed: {embedded} embedded, {failed} failed, {len(items) - len(todo)} skipped "
                 f"(already in the output{_earlier(earlier)}) -> {', '.join(map(str, files))} "
                 f"[{identity['precision']}{f' ({backend})' if backend else ''}{ranks.describe()}]")
    ranks.end()
    return EXIT_SOME_FAILED if failed or earlier else EXIT_OK


class _EmbeddingStore:
    """An embedding output and the chunks of the run that fills it (`<output>.parts/`)."""

    def __init__(self, output: Path) -> None:
        self.output, self.parts = output, Path(f"{output}.parts")

    def settle(self, identity: dict, *, overwrite: bool) -> None:
        """Start afresh, or check that what is there was made by a run like this one."""
        import shutil

        from treeclip.predict.runs import check_identity

        if overwrite:
            shutil.rmtree(self.parts, ignore_errors=True)
            self.output.unlink(missing_ok=True)
            self.output.with_suffix(".files.csv").unlink(missing_ok=True)
        fresh = not self.output.exists() and not self.parts.exists()
        check_identity(self.output, identity, fresh=overwrite or fresh)

    def chunks(self) -> list[Path]:
        return sorted(self.parts.glob("*.parquet")) if self.parts.is_dir() else []

    def stored(self) -> list:
        from treeclip.predict.embed import read_embeddings

        return ([read_embeddings(self.output)] if self.output.exists() else []) + [read_embeddings(p) for p in self.chunks()]

    def done(self, *, retry_errors: bool) -> tuple[set[str], set[str]]:
        """(inputs done, those of them that failed); failures are not done with `retry_errors`."""
        from treeclip.predict.embed import merge_embeddings

        merged = merge_embeddings(self.stored(), [])
        errors = set() if retry_errors else set(merged.errors)
        return set(merged.names) | errors, errors

    def save_chunk(self, parts: list, rank: int) -> None:
        """One chunk, named so that chunks sort in the order they were written."""
        from treeclip.predict.embed import concat_embeddings, write_embeddings

        write_embeddings(self.parts / f"{time.time_ns():020d}-r{rank}.parquet", concat_embeddings(parts))

    def finish(self, order: list[str]):
        """Write the output from everything stored, in input order; drop the chunks."""
        import shutil

        from treeclip.predict.embed import merge_embeddings, write_embeddings

        files = write_embeddings(self.output, merge_embeddings(self.stored(), order))
        shutil.rmtree(self.parts, ignore_errors=True)
        return files
