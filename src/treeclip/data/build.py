"""The dataset builder: image collections -> a TreeOfLife-style dataset dir.

Stages (each input image goes through all of them, in a fixed order):

1. read the sources (image folders, CSV/Parquet catalogs, iNat JSON) into items;
2. resolve every distinct label through the NCBI resolver (`resolve_table`); unresolved
   items are dropped or kept as given (`unresolved="keep"`);
3. plan: items sorted into a deterministic order and cut into chunks of `chunk_size`;
4. process chunks in parallel worker processes: safe decode (JPEG draft fast path),
   hashes, bicubic resize, JPEG encode; each chunk's JPEGs and records are staged under
   `OUT/.build/` and renamed into place when whole;
5. assemble: exact duplicates inside the set and duplicates of the `exclude` evaluation
   sets are removed, the validation split is drawn by fraction and seed, samples are
   shuffled by seed and written as shards (`write_dataset`).

Why stage then assemble: deduplication needs every image's hash before any shard can be
final, and a staged chunk is the unit of resume. `resume=True` skips the chunks already
staged; everything after stage 4 is a pure function of the staged records, so a resumed
build writes byte-identical shards and catalog, with no sample lost or doubled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from treeclip.data.dataset import Sample, write_dataset
from treeclip.data.images import MAX_PIXELS
from treeclip.data.sources import SourceItem, read_source
from treeclip.errors import InputError, TreeclipError
from treeclip.fsutil import atomic_path, write_json_atomic, write_text_atomic
from treeclip.taxonomy.taxon import RANKS, Taxon

WORK_DIR = ".build"
REPORT = "build_report.csv"
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

    def image_options(self) -> dict:
        """The options a staged chunk depends on (a resume must not mix different ones)."""
        return {k: getattr(self, k) for k in ("size", "resize_mode", "quality", "max_pixels", "chunk_size")}


@dataclass
class Problem:
    """One input skipped or removed, and why (a row of build_report.csv)."""

    stage: str  # input | taxonomy | image | duplicate | exclude
    source: str
    source_id: str
    path: str
    reason: str


@dataclass
class BuildResult:
    manifest: dict
    problems: list[Problem]
    counts: dict[str, int]

    @property
    def failed(self) -> int:
        """Inputs that could not be used (bad rows, unresolved names, bad images); removed
        duplicates are not failures."""
        return sum(self.counts.get(k, 0) for k in ("input", "taxonomy", "image"))


# -- 1-2: items and their taxa ------------------------------------------------------------


def item_key(item: SourceItem) -> str:
    """A stable key (no dots) from the item's source and id."""
    return hashlib.sha256(f"{item.source}\0{item.source_id}".encode("utf-8")).hexdigest()[:24]


def _say(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"treeclip: {line}", file=sys.stderr)


def _as_given(ranks: dict[str, str], common: str, name: str) -> Taxon:
    """A taxon from the names a source gives, cleaned but not checked against NCBI."""
    from treeclip.taxonomy.names import clean_common_name, clean_epithet, clean_kingdom, clean_uninomial, \
        parse_scientific_name

    r = dict(ranks)
    if name and not any(r.values()):
        parsed = parse_scientific_name(name)
        if parsed.epithet:
            r["genus"], r["species"] = parsed.genus, parsed.epithet
        elif parsed.genus:
            r["genus"] = parsed.genus
    cleaned = {rank: clean_uninomial(r.get(rank, "")) for rank in RANKS[1:6]}
    cleaned["kingdom"] = clean_kingdom(r.get("kingdom", ""))
    cleaned["species"] = clean_epithet(r.get("species", ""), cleaned["genus"]) if r.get("species") else ""
    return Taxon.from_ranks(cleaned, clean_common_name(common))


def resolve_items(items: list[SourceItem], *, resolve: bool, keep_unresolved: bool,
                  reference=None) -> tuple[dict[tuple, Taxon | None], dict[tuple, str], dict]:
    """Taxon (or None: dropped) and a failure reason per distinct item label."""
    labels = sorted({it.label() for it in items})
    taxa: dict[tuple, Taxon | None] = {}
    reasons: dict[tuple, str] = {}
    given = {lab: _as_given(dict(lab[0]), lab[1], lab[2]) for lab in labels}
    summary: dict = {"distinct_names": len(labels)}
    if resolve and labels:
        import pyarrow as pa

        from treeclip.taxonomy.resolve import resolve_table

        cols = {r: [dict(lab[0]).get(r, "") for lab in labels] for r in RANKS}
        cols["scientific_name"] = [lab[2] for lab in labels]
        cols["common"] = [lab[1] for lab in labels]
        table, summary = resolve_table(pa.table(cols), reference, progress=True)
        out = table.to_pydict()
        for i, lab in enumerate(labels):
            status, reason = out["status"][i], out["reason"][i] or ""
            if status in ("resolved", "filled", "conflict"):
                taxa[lab] = Taxon.from_ranks({r: out[r][i] for r in RANKS}, out["common"][i] or "")
                if status == "conflict":
                    reasons[lab] = reason  # kept, but reported
            else:
                taxa[lab] = given[lab] if keep_unresolved else None
                reasons[lab] = f"{status}: {reason}" if reason else status
    else:
        taxa = dict(given)
    for lab, t in taxa.items():
        if t is not None and t.is_empty:
            taxa[lab] = None
            reasons[lab] = reasons.get(lab) or "no usable name"
    return taxa, reasons, summary


# -- 3-4: plan and process -----------------------------------------------------------------


def _chunk_name(i: int) -> str:
    return f"chunk-{i:06d}"


def process_image(path: str, opts: dict) -> tuple[bytes, str, str]:
    """One image -> (JPEG bytes, pixel sha256 of the stored image, phash); InputError if bad."""
    from treeclip.data.images import decode_image, encode_jpeg, pixel_sha256, resize_image
    from treeclip.data.phash import phash

    img = decode_image(path, max_pixels=opts["max_pixels"], draft_size=opts["size"])
    hash_p = phash(img)
    small = resize_image(img, opts["size"], mode=opts["resize_mode"])
    return encode_jpeg(small, quality=opts["quality"]), pixel_sha256(small), hash_p


def process_chunk(args: tuple[int, list[tuple[str, str]], str, dict]) -> tuple[int, int, int]:
    """Process one chunk of (key, path) and stage it: `chunk-N.jpgs` (the JPEGs back to
    back) then `chunk-N.json` (per key: offset, length, hashes or the error). The JSON is
    renamed into place last, so its presence means the chunk is whole."""
    index, items, work, opts = args
    work_dir = Path(work)
    records, blobs, offset = [], [], 0
    for key, path in items:
        try:
            jpeg, sha, ph = process_image(path, opts)
        except InputError as e:
            records.append({"key": key, "error": str(e)})
            continue
        except Exception as e:  # a decoder bug must not kill the build: report it
            records.append({"key": key, "error": f"{path}: unexpected {type(e).__name__}: {' '.join(str(e).split())[:100]}"})
            continue
        records.append({"key": key, "offset": offset, "length": len(jpeg), "sha256": sha, "phash": ph})
        blobs.append(jpeg)
        offset += len(jpeg)
    name = _chunk_name(index)
    with atomic_path(work_dir / f"{name}.jpgs") as tmp:
        with open(tmp, "wb") as f:
            for b in blobs:
                f.write(b)
    write_json_atomic(work_dir / f"{name}.json", {"records": records})
    ok = len(blobs)
    return index, ok, len(items) - ok


def _plan_fingerprint(plan: list[tuple[str, str]], opts: dict) -> str:
    h = hashlib.sha256(json.dumps(opts, sort_keys=True).encode())
    for key, path in plan:
        h.update(f"{key}\0{path}\n".encode("utf-8"))
    return h.hexdigest()


def _pool(workers: int):
    import multiprocessing as mp

    # forkserver: workers start clean (no threads inherited from pyarrow or torch); the
    # server preloads the image stack once, so each worker forks with it already imported.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["treeclip.data.build", "treeclip.data.dedup", "treeclip.data.images",
                                "treeclip.data.phash"])
    return ctx.Pool(workers)


# -- 5: assemble -------------------------------------------------------------------------


class _ChunkReader:
    """Random access to staged JPEGs by key."""

    def __init__(self, work: Path, n_chunks: int) -> None:
        self.work = work
        self.records: dict[str, tuple[int, dict]] = {}
        for i in range(n_chunks):
            for rec in json.loads((work / f"{_chunk_name(i)}.json").read_text(encoding="utf-8"))["records"]:
                self.records[rec["key"]] = (i, rec)
        self._files: dict[int, object] = {}

    def image(self, key: str) -> bytes:
        i, rec = self.records[key]
        f = self._files.get(i)
        if f is None:
            f = self._files[i] = open(self.work / f"{_chunk_name(i)}.jpgs", "rb")
        f.seek(rec["offset"])
        return f.read(rec["length"])

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def _split(keys: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) keys, each in a seeded shuffled order (so shards mix the taxa)."""
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction)) if val_fraction > 0 else 0
    if 0 < val_fraction and n_val == 0 and len(order) >= 2:
        n_val = 1
    return order[n_val:], order[:n_val]


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
    `catalog` or `inat` (spec `PATH` or `PATH::ROOT`). Bad inputs are reported (one line
    each, and in `OUT/build_report.csv`) and counted; the build goes on.
    `on_chunk_done(index)` is called in this process after each staged chunk."""
    from tqdm import tqdm

    from treeclip.data import dedup

    opts = options or BuildOptions()
    if opts.unresolved not in ("drop", "keep"):
        raise TreeclipError(f"unresolved must be 'drop' or 'keep', not {opts.unresolved!r}")
    if not 0 <= opts.val_fraction < 1:
        raise TreeclipError(f"val fraction must be in [0, 1), not {opts.val_fraction}")
    sources = list(sources)
    if not sources:
        raise TreeclipError("no sources: give at least one --folder, --catalog or --inat")
    out = Path(out_dir)
    work = out / WORK_DIR
    problems: list[Problem] = []

    shown: dict[str, int] = {}

    def report(stage: str, item: SourceItem, reason: str) -> None:
        problems.append(Problem(stage, item.source, item.source_id, item.path, reason))
        shown[stage] = shown.get(stage, 0) + 1
        if shown[stage] <= MAX_LINES_PER_STAGE:  # all of them go to the report file
            where = item.path or f"{item.source} {item.source_id}"
            _say(reason if reason.startswith(where) or stage == "input" else f"{where}: {reason}")

    def say_hidden() -> None:
        for stage, n in shown.items():
            if n > MAX_LINES_PER_STAGE:
                _say(f"... and {n - MAX_LINES_PER_STAGE} more {stage} problems, listed in {out / REPORT}")

    # 1. sources
    items: list[SourceItem] = []
    seen: dict[str, SourceItem] = {}
    for kind, spec in sources:
        for it in read_source(kind, spec):
            if it.error:
                report("input", it, it.error)
                continue
            key = item_key(it)
            if key in seen:
                report("input", it, f"listed twice in {it.source} (id {it.source_id})")
                continue
            seen[key] = it
            items.append(it)
    # 2. taxonomy
    taxa_of, reasons, resolve_summary = resolve_items(items, resolve=opts.resolve,
                                                      keep_unresolved=opts.unresolved == "keep",
                                                      reference=reference)
    kept: list[SourceItem] = []
    for it in items:
        lab = it.label()
        if taxa_of[lab] is None:
            report("taxonomy", it, f"unresolved taxon ({reasons.get(lab, 'unknown')}); dropped")
        else:
            kept.append(it)
    # 3. plan
    by_key = {item_key(it): it for it in kept}
    plan = [(k, it.path) for k, it in by_key.items()]  # reading order: the first copy of a duplicate wins
    chunks = [plan[i:i + opts.chunk_size] for i in range(0, len(plan), opts.chunk_size)]
    image_opts = opts.image_options()
    fingerprint = _plan_fingerprint(plan, image_opts)
    plan_file = work / "plan.json"
    if resume and plan_file.exists():
        old = json.loads(plan_file.read_text(encoding="utf-8"))
        if old.get("fingerprint") != fingerprint:
            raise TreeclipError(f"{out}: the sources or image options changed since the interrupted build; "
                                "run again without --resume")
    else:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        write_json_atomic(plan_file, {"fingerprint": fingerprint, "n_items": len(plan), "n_chunks": len(chunks)})
    # 4. process
    todo = [i for i in range(len(chunks)) if not (work / f"{_chunk_name(i)}.json").exists()]
    workers = opts.workers or os.cpu_count() or 1
    pool = _pool(workers) if workers > 1 and (len(todo) > 1 or opts.exclude) else None
    try:
        # evaluation sets first: a bad --exclude fails before the long part
        threshold = dedup.DEFAULT_THRESHOLD if opts.exclude_threshold is None else opts.exclude_threshold
        exclusion = dedup.build_exclusion_index(opts.exclude, size=opts.size, resize_mode=opts.resize_mode,
                                                threshold=threshold, max_pixels=opts.max_pixels, pool=pool,
                                                progress=progress)
        done = set(range(len(chunks))) - set(todo)
        bar = tqdm(total=len(plan), initial=sum(len(chunks[i]) for i in done),
                   desc="processing images", unit="img", disable=not progress, dynamic_ncols=True, file=sys.stderr)
        jobs = [(i, chunks[i], str(work), image_opts) for i in todo]
        results = pool.imap_unordered(process_chunk, jobs) if pool is not None else map(process_chunk, jobs)
        for index, ok, bad in results:
            bar.update(ok + bad)
            if on_chunk_done is not None:
                on_chunk_done(index)
        bar.close()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    # 5. assemble
    reader = _ChunkReader(work, len(chunks))
    try:
        good = []
        for key, _ in plan:
            rec = reader.records[key][1]
            if "error" in rec:
                report("image", by_key[key], rec["error"])
            else:
                good.append(key)
        matches = exclusion.match_many([reader.records[k][1]["sha256"] for k in good],
                                       [reader.records[k][1]["phash"] for k in good])
        first_of: dict[str, str] = {}
        unique = []
        for key, m in zip(good, matches):
            rec, it = reader.records[key][1], by_key[key]
            if m is not None:
                report("exclude", it, dedup.dedup_report_row(m[0], m[1], m[2]))
            elif rec["sha256"] in first_of:
                other = by_key[first_of[rec["sha256"]]]
                report("duplicate", it, dedup.dedup_report_row("train-exact", f"{other.path or other.source_id}"))
            else:
                first_of[rec["sha256"]] = key
                unique.append(key)
        say_hidden()
        if not unique:
            _write_report(out / REPORT, problems)
            n_inputs = len(items) + sum(1 for p in problems if p.stage == "input")
            raise TreeclipError(f"{out}: no usable images among {n_inputs} inputs "
                                f"(every one is listed with its reason in {out / REPORT})")
        train, val = _split(unique, opts.val_fraction, opts.seed)
        taxa = sorted({taxa_of[by_key[k].label()] for k in unique}, key=lambda t: (t.lineage, t.common))

        def samples() -> Iterator[Sample]:
            for split, keys in (("train", train), ("val", val)):
                for key in keys:
                    it, rec = by_key[key], reader.records[key][1]
                    yield Sample(key, reader.image(key), taxa_of[it.label()], split, it.source, it.source_id,
                                 {"sha256": rec["sha256"], "phash": rec["phash"]})

        counts = {"inputs": len(items) + sum(1 for p in problems if p.stage == "input"),
                  "samples": len(unique), "train": len(train), "val": len(val)}
        for p in problems:
            counts[p.stage] = counts.get(p.stage, 0) + 1
        build_info = {
            "sources": [{"kind": k, "spec": s} for k, s in sources],
            "options": {k: v for k, v in asdict(opts).items() if k not in ("workers", "keep_work")},
            "exclude_threshold": threshold,
            "n_exclusion_images": len(exclusion),
            "counts": counts,
            "taxonomy": {k: v for k, v in resolve_summary.items() if k != "seconds"},
            "report": REPORT,
        }
        manifest = write_dataset(samples(), out, taxa=taxa, build_info=build_info,
                                 shard_max_samples=opts.shard_max_samples, shard_max_bytes=opts.shard_max_bytes,
                                 progress=progress)
    finally:
        reader.close()
    _write_report(out / REPORT, problems)
    if not opts.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(manifest, problems, counts)


def _write_report(path: Path, problems: list[Problem]) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["stage", "source", "source_id", "path", "reason"])
    for p in problems:
        w.writerow([p.stage, p.source, p.source_id, p.path, p.reason])
    write_text_atomic(path, buf.getvalue())
