"""The dataset builder: image collections -> a TreeOfLife-style dataset dir.

`build_dataset` runs five stage functions over one `BuildState` (each input image goes
through all of them, in a fixed order):

1. `gather`: read the sources (image folders, CSV/Parquet catalogs, iNat JSON; URL
   tables, GBIF Darwin Core Archives, iNaturalist open data: `url_sources`) into items and resolve every distinct label through the NCBI resolver (`resolve_items`);
   unresolved items are dropped or kept as given (`unresolved="keep"`);
2. `plan_chunks`: items in a deterministic order, cut into chunks of `chunk_size`;
   then `fetch_urls`: the images of URL sources not staged yet are downloaded into
   `OUT/.build/downloads/` (`treeclip.data.download`; each URL gets a status);
3. `process_images`: chunks in parallel worker processes (`treeclip.data.staging`): safe
   decode (JPEG draft fast path), hashes, bicubic resize, JPEG encode; each chunk's JPEGs
   and records are staged under `OUT/.build/` and renamed into place when whole; with
   `distributor="ray"` each chunk is a Ray task that also fetches its own URLs
   (`ray_build`; the driver does stages 1-2 and 4-5 as here);
4. `deduplicate`: exact duplicates inside the set and duplicates of the `exclude`
   evaluation sets are removed;
5. `write_output`: the validation split is drawn by fraction and seed (`split`), samples
   are shuffled by seed and written as shards (`write_dataset`), then the report.

Why stage then assemble: deduplication needs every image's hash before any shard can be
final, and a staged chunk is the unit of resume. `resume=True` skips the chunks already
staged; everything after stage 3 is a pure function of the staged records, so a resumed
build writes byte-identical shards and catalog, with no sample lost or doubled.

A build into an existing dataset dir first takes away what makes it a dataset (the
manifest, then the tables: `dataset.invalidate`), before stage 2 changes anything in OUT,
so an interrupted rebuild is refused by every reader until a `--resume` finishes it. A
build that fails earlier (a missing source, a bad catalog) leaves the old dataset whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from treeclip.data.dataset import Sample, invalidate, write_dataset
from treeclip.data.download import Download, DownloadCache, DownloadOptions, download_all
from treeclip.data.images import MAX_PIXELS
from treeclip.data.source_taxa import resolve_items
from treeclip.data.sources import SourceItem
from treeclip.data.staging import (ChunkItem, ChunkReader, chunk_items, chunk_name, make_pool, plan_fingerprint,
                                   process_chunk)
from treeclip.data.url_sources import read_any_source
from treeclip.errors import TreeclipError
from treeclip.fsutil import remove_stale_temporaries, write_text_atomic
from treeclip.identity import RunIdentity
from treeclip.log import get_logger, progress_bar
from treeclip.taxonomy.taxon import Taxon

log = get_logger(__name__)

if TYPE_CHECKING:
    from treeclip.data.dedup import ExclusionIndex

WORK_DIR = ".build"
REPORT = "build_report.csv"
DOWNLOADS = "downloads.csv"
"""One row per image of a URL source: url, status, detail, bytes (builds with URL sources)."""
DOWNLOAD_DIR = "downloads"
MAX_LINES_PER_STAGE = 50
"""Skipped inputs printed per stage; the rest are only counted and listed in the report."""


@dataclass
class BuildOptions:
    """Everything that decides what a build writes (all of it goes into the manifest)."""

    size: int = 224
    resize_mode: str = "crop"
    quality: int = 95
    val_fraction: float = 0.05
    seed: int = 0
    resolve: bool = True
    unresolved: str = "drop"  # or "keep": unresolved rows kept with their names as given
    exclude: list[str] = field(default_factory=list)
    exclude_threshold: int | None = None  # None: dedup.DEFAULT_THRESHOLD
    max_pixels: int = MAX_PIXELS
    chunk_size: int = 64
    shard_max_samples: int = 10000
    shard_max_bytes: float = 3e9
    workers: int = 0  # 0: every CPU
    keep_work: bool = False
    download: DownloadOptions = field(default_factory=DownloadOptions)
    # Where the chunks are staged (neither changes what is written, so neither is in the
    # manifest, and a resume may change them): "local", this machine's worker processes;
    # "ray", Ray tasks (`ray_build`) on the cluster at `ray_address`, else on a local one
    # of `workers` CPUs
    distributor: str = "local"
    ray_address: str | None = None

    def image_options(self) -> dict:
        """The options a staged chunk depends on (a resume must not mix different ones)."""
        return {k: getattr(self, k) for k in ("size", "resize_mode", "quality", "max_pixels", "chunk_size")}


@dataclass
class Problem:
    """One input skipped or removed, and why (a row of build_report.csv)."""

    stage: str  # input | taxonomy | download | image | duplicate | exclude
    source: str
    source_id: str
    path: str
    reason: str


@dataclass
class BuildResult:
    manifest: dict
    problems: list[Problem]
    counts: dict[str, int]
    downloads: dict[str, int] = field(default_factory=dict)  # URLs per download status

    @property
    def failed(self) -> int:
        """Inputs that could not be used (bad rows, unresolved names, failed downloads, bad
        images); removed duplicates are not failures."""
        return sum(self.counts.get(k, 0) for k in ("input", "taxonomy", "download", "image"))


# -- 1-2: items and their taxa ------------------------------------------------------------


def item_key(item: SourceItem) -> str:
    """A stable key (no dots) from the item's source and id."""
    return hashlib.sha256(f"{item.source}\0{item.source_id}".encode("utf-8")).hexdigest()[:24]


# -- the build state and its stages -------------------------------------------------------


@dataclass
class BuildState:
    """What a build knows so far, handed from stage to stage (each stage fills its part)."""

    sources: list[tuple[str, str]]
    out: Path
    opts: BuildOptions
    problems: list[Problem] = field(default_factory=list)
    shown: dict[str, int] = field(default_factory=dict)  # problems printed per stage
    # 1-2: the distinct usable inputs, their taxa, the resolver's summary
    items: list[SourceItem] = field(default_factory=list)
    taxa_of: dict[tuple, Taxon | None] = field(default_factory=dict)
    resolve_summary: dict = field(default_factory=dict)
    # 3: the items kept, by key; the (key, path) plan in reading order, cut into chunks
    by_key: dict[str, SourceItem] = field(default_factory=dict)
    plan: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[list[tuple[str, str]]] = field(default_factory=list)
    downloads: dict[str, Download] = field(default_factory=dict)  # by URL, those fetched in this run
    # 4-5: the evaluation images to keep out; the keys that survive deduplication
    exclusion: "ExclusionIndex | None" = None
    threshold: int = 0
    unique: list[str] = field(default_factory=list)

    @property
    def work(self) -> Path:
        return self.out / WORK_DIR

    def report(self, stage: str, item: SourceItem, reason: str) -> None:
        """Record one skipped input; the first MAX_LINES_PER_STAGE of a stage are printed."""
        self.problems.append(Problem(stage, item.source, item.source_id, item.path, reason))
        self.shown[stage] = self.shown.get(stage, 0) + 1
        if self.shown[stage] <= MAX_LINES_PER_STAGE:  # all of them go to the report file
            where = item.path or f"{item.source} {item.source_id}"
            log.warning(reason if reason.startswith(where) or stage == "input" else f"{where}: {reason}")

    def say_hidden(self) -> None:
        for stage, n in self.shown.items():
            if n > MAX_LINES_PER_STAGE:
                log.warning(f"... and {n - MAX_LINES_PER_STAGE} more {stage} problems, listed in {self.out / REPORT}")

    @property
    def n_inputs(self) -> int:
        """Every input read: the usable ones and the bad rows."""
        return len(self.items) + sum(1 for p in self.problems if p.stage == "input")


def _check(opts: BuildOptions, sources: list[tuple[str, str]]) -> None:
    if opts.unresolved not in ("drop", "keep"):
        raise TreeclipError(f"unresolved must be 'drop' or 'keep', not {opts.unresolved!r}")
    if not 0 <= opts.val_fraction < 1:
        raise TreeclipError(f"val fraction must be in [0, 1), not {opts.val_fraction}")
    if opts.distributor not in ("local", "ray"):
        raise TreeclipError(f"distributor must be 'local' or 'ray', not {opts.distributor!r}")
    if opts.ray_address and opts.distributor != "ray":
        raise TreeclipError("a Ray address needs the ray distributor (--distributor ray)")
    if opts.distributor == "ray":
        from treeclip.data.ray_build import MISSING, ray_installed  # imports no ray

        if not ray_installed():
            raise TreeclipError(MISSING)
    if not sources:
        raise TreeclipError("no sources: give at least one --folder, --catalog, --inat, --urls, --gbif-dwca "
                            "or --inat-open-data")


def gather(state: BuildState, reference=None) -> None:
    """Stage 1: read the sources into distinct items, resolve their taxa, and keep
    the items whose taxon is usable."""
    seen: dict[str, SourceItem] = {}
    for kind, spec in state.sources:
        for it in read_any_source(kind, spec):
            if it.error:
                state.report("input", it, it.error)
                continue
            key = item_key(it)
            if key in seen:
                state.report("input", it, f"listed twice in {it.source} (id {it.source_id})")
                continue
            seen[key] = it
            state.items.append(it)
    state.taxa_of, reasons, state.resolve_summary = resolve_items(
        state.items, resolve=state.opts.resolve, keep_unresolved=state.opts.unresolved == "keep", reference=reference)
    for it in state.items:
        lab = it.label()
        if state.taxa_of[lab] is None:
            state.report("taxonomy", it, f"unresolved taxon ({reasons.get(lab, 'unknown')}); dropped")
        else:
            state.by_key[item_key(it)] = it


def plan_chunks(state: BuildState, resume: bool) -> None:
    """Stage 2: the items in reading order (the first copy of a duplicate wins), cut into
    chunks; a fresh work dir, or on resume the old one if it was planned the same way.
    The first stage that changes OUT: an earlier dataset there stops being one first."""
    opts, work = state.opts, state.work
    state.plan = [(k, it.path) for k, it in state.by_key.items()]
    state.chunks = [state.plan[i:i + opts.chunk_size] for i in range(0, len(state.plan), opts.chunk_size)]
    plan = RunIdentity(work / "plan.json", {"fingerprint": plan_fingerprint(state.plan, opts.image_options())},
                       free=("n_items", "n_chunks"))
    resuming = resume and plan.path.exists()
    if resuming and not plan.matches():
        raise TreeclipError(f"{state.out}: the sources or image options changed since the interrupted build; "
                            "run again without --resume")
    invalidate(state.out)  # from here on OUT changes: no reader may take it for finished
    remove_stale_temporaries(state.out, REPORT)
    remove_stale_temporaries(state.out, DOWNLOADS)
    (state.out / DOWNLOADS).unlink(missing_ok=True)  # an earlier build's; this one writes its own
    if resuming:
        return
    _fresh_work_dir(work)
    plan.write(n_items=len(state.plan), n_chunks=len(state.chunks))


def _fresh_work_dir(work: Path) -> None:
    """An empty work dir, but for the bodies an interrupted build downloaded: a URL's
    bytes do not depend on the plan, so a new build need not fetch them again (its
    failures are tried again)."""
    if work.exists():
        for p in work.iterdir():
            if p.name != DOWNLOAD_DIR:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    work.mkdir(parents=True, exist_ok=True)
    if (work / DOWNLOAD_DIR).is_dir():
        DownloadCache(work / DOWNLOAD_DIR).forget_failures()


def _todo(state: BuildState) -> list[int]:
    """The chunks not staged yet."""
    return [i for i in range(len(state.chunks)) if not (state.work / f"{chunk_name(i)}.json").exists()]


def fetch_urls(state: BuildState, *, progress: bool) -> None:
    """Stage 2b: download the images of URL sources in chunks not staged yet (those a
    killed build finished come from the cache, unfetched). On Ray each chunk's task
    fetches its own URLs instead; here the cache is only readied for those tasks."""
    if state.opts.distributor == "ray":
        if any(state.by_key[k].remote for i in _todo(state) for k, _ in state.chunks[i]):
            DownloadCache(state.work / DOWNLOAD_DIR)  # a killed build's half bodies go before any task starts
        return
    urls = [state.by_key[k].path for i in _todo(state) for k, _ in state.chunks[i] if state.by_key[k].remote]
    if urls:
        cache = DownloadCache(state.work / DOWNLOAD_DIR)
        state.downloads = download_all(urls, cache, state.opts.download, progress=progress)


def _chunk_entries(state: BuildState, index: int) -> list[tuple[str, str, bool]]:
    """Chunk `index` as (key, path or URL, whether it is a URL) triples."""
    return [(key, path, state.by_key[key].remote) for key, path in state.chunks[index]]


def _chunk_items(state: BuildState, index: int) -> list[ChunkItem]:
    """The items of chunk `index` as the image stage takes them: a downloaded image's
    cached file, its URL and download."""
    return chunk_items(_chunk_entries(state, index), state.downloads, state.work / DOWNLOAD_DIR)


def process_images(state: BuildState, *, progress: bool, on_chunk_done: Callable[[int], None] | None) -> None:
    """Stage 3: hash the evaluation sets (first: a bad --exclude fails before the long
    part), then process and stage every chunk not staged yet, in worker processes (or
    in Ray tasks: `ray_build`, imported only then)."""
    from treeclip.data import dedup

    opts, chunks = state.opts, state.chunks
    todo = _todo(state)
    workers = opts.workers or os.cpu_count() or 1
    local = opts.distributor == "local"
    pool = make_pool(workers) if workers > 1 and ((local and len(todo) > 1) or opts.exclude) else None
    try:
        state.threshold = dedup.DEFAULT_THRESHOLD if opts.exclude_threshold is None else opts.exclude_threshold
        state.exclusion = dedup.build_exclusion_index(opts.exclude, size=opts.size, resize_mode=opts.resize_mode,
                                                      threshold=state.threshold, max_pixels=opts.max_pixels,
                                                      pool=pool, progress=progress)
        done = set(range(len(chunks))) - set(todo)
        bar = progress_bar(len(state.plan), initial=sum(len(chunks[i]) for i in done), desc="processing images",
                           enabled=progress)
        if local:
            jobs = [(i, _chunk_items(state, i), str(state.work), opts.image_options()) for i in todo]
            staged = contextlib.nullcontext(
                pool.imap_unordered(process_chunk, jobs) if pool is not None else map(process_chunk, jobs))
        elif not todo:  # a resume with every chunk staged: no cluster to start
            staged = contextlib.nullcontext(())
        else:
            from treeclip.data.ray_build import stage_chunks_on_ray

            if pool is not None:  # it hashed the evaluation sets; the cluster does the rest
                pool.terminate()
                pool.join()
                pool = None
            staged = contextlib.closing(stage_chunks_on_ray(
                ((i, _chunk_entries(state, i)) for i in todo), work=str(state.work), image_opts=opts.image_options(),
                download_opts=opts.download, download_dir=str(state.work / DOWNLOAD_DIR), address=opts.ray_address,
                num_cpus=workers))
        with staged as results:  # closed: Ray tasks still running when this stops are cancelled
            for index, ok, bad in results:
                bar.update(ok + bad)
                if on_chunk_done is not None:
                    on_chunk_done(index)
        bar.close()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def deduplicate(state: BuildState, reader: ChunkReader) -> None:
    """Stage 4: report the images that failed; drop duplicates of evaluation images and
    exact duplicates inside the set (the first in reading order stays)."""
    from treeclip.data import dedup

    good = []
    for key, _ in state.plan:
        rec = reader.record(key)
        if "error" in rec:
            state.report(rec.get("stage", "image"), state.by_key[key], rec["error"])
        else:
            good.append(key)
    matches = state.exclusion.match_many([reader.record(k)["sha256"] for k in good],
                                         [reader.record(k)["phash"] for k in good])
    first_of: dict[str, str] = {}
    for key, m in zip(good, matches):
        rec, it = reader.record(key), state.by_key[key]
        if m is not None:
            state.report("exclude", it, dedup.dedup_report_row(m[0], m[1], m[2]))
        elif rec["sha256"] in first_of:
            other = state.by_key[first_of[rec["sha256"]]]
            state.report("duplicate", it, dedup.dedup_report_row("train-exact", f"{other.path or other.source_id}"))
        else:
            first_of[rec["sha256"]] = key
            state.unique.append(key)
    state.say_hidden()
    if not state.unique:
        _write_report(state.out / REPORT, state.problems)
        raise TreeclipError(f"{state.out}: no usable images among {state.n_inputs} inputs "
                            f"(every one is listed with its reason in {state.out / REPORT})")


def split(keys: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) keys, each in a seeded shuffled order (so shards mix the taxa)."""
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction)) if val_fraction > 0 else 0
    if 0 < val_fraction and n_val == 0 and len(order) >= 2:
        n_val = 1
    return order[n_val:], order[:n_val]


def write_output(state: BuildState, reader: ChunkReader, *, progress: bool) -> BuildResult:
    """Stage 5: split, write the shards, catalog and manifest, then the report."""
    opts = state.opts
    train, val = split(state.unique, opts.val_fraction, opts.seed)
    taxa = sorted({state.taxa_of[state.by_key[k].label()] for k in state.unique}, key=lambda t: (t.lineage, t.common))

    def samples() -> Iterator[Sample]:
        for name, keys in (("train", train), ("val", val)):
            for key in keys:
                it, rec = state.by_key[key], reader.record(key)
                yield Sample(key, reader.image(key), state.taxa_of[it.label()], name, it.source, it.source_id,
                             {**dict(it.extra), "sha256": rec["sha256"], "phash": rec["phash"]})

    counts = {"inputs": state.n_inputs, "samples": len(state.unique), "train": len(train), "val": len(val)}
    for p in state.problems:
        counts[p.stage] = counts.get(p.stage, 0) + 1
    downloads = download_counts(state, reader)
    build_info = {
        "sources": [{"kind": k, "spec": s} for k, s in state.sources],
        # how URLs were fetched only matters to builds that fetched some
        "options": {k: v for k, v in asdict(opts).items()
                    if k not in ("workers", "keep_work", "distributor", "ray_address") and (k != "download" or downloads)},
        "exclude_threshold": state.threshold,
        "n_exclusion_images": len(state.exclusion),
        "counts": counts,
        "taxonomy": {k: v for k, v in state.resolve_summary.items() if k != "seconds"},
        "report": REPORT,
        **({"downloads": downloads, "downloads_report": DOWNLOADS} if downloads else {}),
    }
    manifest = write_dataset(samples(), state.out, taxa=taxa, build_info=build_info,
                             shard_max_samples=opts.shard_max_samples, shard_max_bytes=opts.shard_max_bytes,
                             progress=progress)
    return BuildResult(manifest, state.problems, counts, downloads)


def _download_rows(state: BuildState, reader: ChunkReader) -> list[tuple[SourceItem, dict]]:
    """(item, download) of every image of a URL source, in plan order, from the staged
    records (so a resumed build reports what the killed one fetched too)."""
    return [(state.by_key[k], reader.record(k)["download"]) for k, _ in state.plan
            if state.by_key[k].remote and "download" in reader.record(k)]


def download_counts(state: BuildState, reader: ChunkReader) -> dict[str, int]:
    """URLs per download status, sorted by status."""
    counts: dict[str, int] = {}
    for _, d in _download_rows(state, reader):
        counts[d["status"]] = counts.get(d["status"], 0) + 1
    return dict(sorted(counts.items()))


def _write_downloads(state: BuildState, reader: ChunkReader) -> None:
    import csv
    import io

    rows = _download_rows(state, reader)
    if not rows:
        return
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["url", "status", "detail", "bytes", "source", "source_id"])
    for it, d in rows:
        w.writerow([it.path, d["status"], d["detail"], d["bytes"], it.source, it.source_id])
    write_text_atomic(state.out / DOWNLOADS, buf.getvalue())


def build_dataset(
    sources: Iterable[tuple[str, str]],
    out_dir: str | os.PathLike,
    options: BuildOptions | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    reference=None,
    on_chunk_done: Callable[[int], None] | None = None,
) -> BuildResult:
    """Build a dataset dir from `sources`, a list of (kind, spec) with kind `folder`,
    `catalog` or `inat` (spec `PATH` or `PATH::ROOT`), `urls` (`FILE[::URL_COLUMN]`),
    `gbif` (a Darwin Core Archive folder or zip) or `inat-open` (`DIR[::BASE_URL]`). Bad inputs are reported (one line
    each, and in `OUT/build_report.csv`) and counted; the build goes on.
    `on_chunk_done(index)` is called in this process after each staged chunk."""
    opts = options or BuildOptions()
    sources = list(sources)
    _check(opts, sources)
    state = BuildState(sources, Path(out_dir), opts)
    gather(state, reference)
    plan_chunks(state, resume)
    fetch_urls(state, progress=progress)
    process_images(state, progress=progress, on_chunk_done=on_chunk_done)
    reader = ChunkReader(state.work, len(state.chunks))
    try:
        deduplicate(state, reader)
        _write_downloads(state, reader)  # before the manifest: a finished dir has all its files
        result = write_output(state, reader, progress=progress)
    finally:
        reader.close()
    _write_report(state.out / REPORT, state.problems)
    if not opts.keep_work:
        shutil.rmtree(state.work, ignore_errors=True)
    return result


def _write_report(path: Path, problems: list[Problem]) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["stage", "source", "source_id", "path", "reason"])
    for p in problems:
        w.writerow([p.stage, p.source, p.source_id, p.path, p.reason])
    write_text_atomic(path, buf.getvalue())
