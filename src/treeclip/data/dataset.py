"""The dataset dir: webdataset tar shards + catalog.parquet + taxa.parquet + manifest.json.

Layout (the contract every stage reads; see docs/data.md):

    DIR/manifest.json         counts, text types, per split the shards (name, n, bytes, sha256), build info
    DIR/catalog.parquet       one row per sample: key, split, shard, 7 ranks, common, cls, source, ...
    DIR/taxa.parquet          one row per class: cls, 7 ranks, common, n_images
    DIR/train/shard-000000.tar, DIR/val/shard-000000.tar, ...

A shard sample is `KEY.jpg`, one `KEY.<type>.txt` per text type holding exactly
`Taxon.caption(type)`, `KEY.json` (ranks, common, source, source id, hashes) and `KEY.cls`
(the class index into taxa.parquet, in decimal). Shards are written under a temporary name
and renamed when whole; tar headers carry no timestamps or owners, so the same samples
always give byte-identical shards (the tar writer: `treeclip.data.shards`).

The manifest says the dir is complete: a writer removes it (`invalidate`) before it
changes anything and writes it last, and every reader here refuses a dir without one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from treeclip.data.shards import SHARD_PATTERN, ShardWriter
from treeclip.errors import InputError, TreeclipError
from treeclip.fsutil import atomic_path, fsync_path, remove_stale_temporaries, write_json_atomic
from treeclip.log import progress_bar
from treeclip.taxonomy.taxon import RANKS, TEXT_TYPES, Taxon

FORMAT = "treeclip-dataset"
FORMAT_VERSION = 2  # 2: the catalog's `phash` is Meta's PDQ (1: a PDQ-like DCT hash)
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
TABLES = ("catalog.parquet", "taxa.parquet")
CATALOG_COLUMNS = ("key", "split", "shard", *RANKS, "common", "cls", "source", "source_id", "sha256", "phash")
OPTIONAL_COLUMNS = ("url", "license", "rights_holder")
"""Catalog columns taken from a sample's `extra` (images from the web: where it came from
and under which licence); written only when some sample has one."""


@dataclass
class Sample:
    """One training example: an encoded JPEG and its taxon.

    `extra` goes into the sample's `.json`; its `sha256` (of decoded pixels) and `phash`
    keys, when given, are used instead of decoding the JPEG again to compute them.
    """

    key: str
    image: bytes
    taxon: Taxon
    split: str
    source: str = ""
    source_id: str = ""
    extra: dict = field(default_factory=dict)


# -- writing -----------------------------------------------------------------------------


def sample_members(sample: Sample, cls: int, hashes: dict[str, str]) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in their stored order."""
    key = sample.key
    meta = {
        **sample.taxon.as_dict(),
        "source": sample.source,
        "source_id": sample.source_id,
        **{k: v for k, v in sample.extra.items() if k not in ("sha256", "phash")},
        **hashes,
    }
    members = [(f"{key}.jpg", sample.image)]
    members += [(f"{key}.{t}.txt", sample.taxon.caption(t).encode("utf-8")) for t in TEXT_TYPES]
    members.append((f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")))
    members.append((f"{key}.cls", str(cls).encode("ascii")))
    return members


def stored_image_hashes(jpeg: bytes) -> dict[str, str]:
    """Pixel sha256 and perceptual hash of a sample's image as it is stored (no resize):
    what a shard's `.json` and the catalog record. (A source image as the builder would
    store it: `treeclip.data.dedup.source_image_hashes`.)"""
    from treeclip.data.images import decode_image, pixel_sha256
    from treeclip.data.phash import phash

    img = decode_image(jpeg, name="sample")
    return {"sha256": pixel_sha256(img), "phash": phash(img)}


def _check_sample(s: Sample, seen: set[str], cls_of: dict[Taxon, int]) -> None:
    """A ValueError for a bad key (empty, dots, slashes, edge spaces, repeated), split or taxon."""
    if not s.key or "." in s.key or "/" in s.key or s.key != s.key.strip():
        raise ValueError(f"sample key {s.key!r} must be non-empty, without dots, slashes or edge spaces")
    if s.key in seen:
        raise ValueError(f"duplicate sample key {s.key!r}")
    seen.add(s.key)
    if s.split not in SPLITS:
        raise ValueError(f"sample {s.key}: split must be one of {SPLITS}, got {s.split!r}")
    if s.taxon not in cls_of:
        raise ValueError(f"sample {s.key}: taxon {s.taxon} is not in `taxa`")


def _add_catalog_row(rows: dict[str, list], s: Sample, cls: int, shard: str, hashes: dict[str, str]) -> None:
    for col, val in (("key", s.key), ("split", s.split), ("shard", shard), *zip(RANKS, s.taxon.lineage),
                     ("common", s.taxon.common), ("cls", cls), ("source", s.source), ("source_id", s.source_id),
                     *hashes.items(), *((c, str(s.extra.get(c) or "")) for c in OPTIONAL_COLUMNS)):
        rows[col].append(val)


def write_dataset(
    samples: Iterable[Sample],
    out_dir: str | os.PathLike,
    *,
    taxa: Sequence[Taxon],
    build_info: dict,
    shard_max_samples: int = 10000,
    shard_max_bytes: float = 3e9,
    progress: bool = False,
) -> dict:
    """Write `samples` (any order, splits interleaved) as a dataset dir and return its
    manifest. The class index of a sample is its taxon's position in `taxa`. Files of an
    earlier dataset in `out_dir` are replaced; the manifest is written last, so a dataset
    dir with a manifest is complete (it is removed before anything else changes)."""
    out = Path(out_dir)
    invalidate(out)
    cls_of = {t: i for i, t in enumerate(taxa)}
    if len(cls_of) != len(taxa):
        raise ValueError("taxa must be distinct")
    writers: dict[str, ShardWriter] = {}
    rows: dict[str, list] = {c: [] for c in CATALOG_COLUMNS + OPTIONAL_COLUMNS}
    counts = [0] * len(taxa)
    seen: set[str] = set()
    bar = progress_bar(desc="writing shards", enabled=progress)
    try:
        for s in samples:
            _check_sample(s, seen, cls_of)
            cls = cls_of[s.taxon]
            hashes = {k: s.extra[k] for k in ("sha256", "phash") if s.extra.get(k)}
            if len(hashes) < 2:
                hashes = stored_image_hashes(s.image)
            w = writers.get(s.split)
            if w is None:
                w = writers[s.split] = ShardWriter(out / s.split, max_samples=shard_max_samples,
                                                   max_bytes=shard_max_bytes)
            shard = w.write(sample_members(s, cls, hashes))
            counts[cls] += 1
            _add_catalog_row(rows, s, cls, f"{s.split}/{shard}", hashes)
            bar.update(1)
        shards = {split: w.close() for split, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
    _remove_stale_shards(out, shards)
    write_catalog(out, rows)
    write_taxa(out, taxa, counts)
    manifest = make_manifest(taxa, counts, shards, build_info)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def invalidate(out_dir: str | os.PathLike) -> None:
    """Make `out_dir` stop looking like a finished dataset before a build changes it: the
    manifest goes first (and that is flushed to disk), then the catalog and taxa tables,
    so a run killed at any later point leaves a dir that every reader refuses. Temporary
    files of an earlier killed run are removed too. Shards stay until replaced."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        (out / MANIFEST).unlink()
        fsync_path(out)
    for name in TABLES:
        (out / name).unlink(missing_ok=True)
    for name in (MANIFEST, *TABLES):
        remove_stale_temporaries(out, name)
    for split in SPLITS:
        if (out / split).is_dir():
            remove_stale_temporaries(out / split, "shard-*.tar")


def _remove_stale_shards(out: Path, shards: dict[str, list[dict]]) -> None:
    for split in SPLITS:
        keep = {s["name"] for s in shards.get(split, [])}
        for p in (out / split).glob("shard-*.tar") if (out / split).is_dir() else []:
            if p.name not in keep:
                p.unlink()


def write_catalog(out: Path, rows: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"cls": pa.int32()}
    columns = CATALOG_COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if any(rows.get(c, ())))
    table = pa.table({c: pa.array(rows[c], type=types.get(c, pa.string())) for c in columns})
    with atomic_path(out / "catalog.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def write_taxa(out: Path, taxa: Sequence[Taxon], counts: Sequence[int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, Any] = {"cls": pa.array(range(len(taxa)), type=pa.int32())}
    for i, r in enumerate(RANKS):
        cols[r] = pa.array([t.lineage[i] for t in taxa], type=pa.string())
    cols["common"] = pa.array([t.common for t in taxa], type=pa.string())
    cols["n_images"] = pa.array(list(counts), type=pa.int64())
    with atomic_path(out / "taxa.parquet", suffix=".parquet") as tmp:
        pq.write_table(pa.table(cols), tmp)


def make_manifest(taxa: Sequence[Taxon], counts: Sequence[int], shards: dict[str, list[dict]],
                  build_info: dict) -> dict:
    from treeclip import __version__

    splits = {s: {"n_samples": sum(x["n_samples"] for x in shards.get(s, [])), "shards": shards.get(s, [])}
              for s in SPLITS}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "treeclip_version": __version__,
        "n_samples": sum(v["n_samples"] for v in splits.values()),
        "n_taxa": len(taxa),
        "n_taxa_with_images": sum(1 for c in counts if c),
        "taxa_per_rank": {r: len({t.lineage[:i + 1] for t in taxa if t.lineage[i]}) for i, r in enumerate(RANKS)},
        "text_types": list(TEXT_TYPES),
        "shard_pattern": SHARD_PATTERN,
        "splits": splits,
        "build": build_info,
    }


# -- reading -----------------------------------------------------------------------------


def read_manifest(dataset_dir: str | os.PathLike) -> dict:
    """The manifest of a dataset dir; a one-line TreeclipError when it is not one (no
    manifest: not a dataset, or a build that did not finish)."""
    path = Path(dataset_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if (Path(dataset_dir) / ".build").is_dir():
            raise TreeclipError(f"{dataset_dir}: unfinished dataset (no {MANIFEST}: a build was interrupted; "
                                "run the same `treeclip data build` again with --resume)") from None
        raise TreeclipError(f"{dataset_dir}: not a dataset dir (no {MANIFEST}; an unfinished build?)") from None
    except (OSError, ValueError) as e:
        raise TreeclipError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise TreeclipError(f"{path}: not a treeclip dataset manifest")
    return manifest


def read_taxa(dataset_dir: str | os.PathLike) -> list[Taxon]:
    """The classes of a dataset, in class-index order."""
    import pyarrow.parquet as pq

    read_manifest(dataset_dir)  # a dir without one is not finished
    path = Path(dataset_dir) / "taxa.parquet"
    if not path.exists():
        raise TreeclipError(f"{dataset_dir}: not a dataset dir (no taxa.parquet)")
    t = pq.read_table(path).sort_by("cls").to_pydict()
    return [Taxon(tuple(t[r][i] or "" for r in RANKS), t["common"][i] or "") for i in range(len(t["cls"]))]


def read_catalog(dataset_dir: str | os.PathLike):
    """catalog.parquet as a pyarrow Table; a one-line TreeclipError when it (or the
    manifest) is missing, or it is unreadable."""
    import pyarrow.parquet as pq

    read_manifest(dataset_dir)  # a dir without one is not finished
    path = Path(dataset_dir) / "catalog.parquet"
    if not path.is_file():
        raise TreeclipError(f"{dataset_dir}: not a dataset dir (no catalog.parquet)")
    try:
        return pq.read_table(path)
    except Exception as e:  # pyarrow raises several types on a bad file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise TreeclipError(f"{path}: unreadable Parquet ({reason})") from None


def split_samples(dataset_dir: str | os.PathLike, split: str) -> list[dict[str, str]]:
    """The catalog rows of one split, in catalog order, as text: `key`, the 7 ranks,
    `common`, and `shard` as the shard file's path (a catalog shard that points outside
    the dataset dir is refused)."""
    from treeclip.data.paths import safe_join

    rows = []
    for rec in read_catalog(dataset_dir).to_pylist():
        if str(rec.get("split", "")) != split:
            continue
        shard = str(rec["shard"])  # `train/shard-000000.tar`; early datasets stored the name alone
        rel = shard if "/" in shard else f"{split}/{shard}"
        try:
            safe_join(dataset_dir, rel)
        except InputError as e:
            raise TreeclipError(f"{Path(dataset_dir) / 'catalog.parquet'}: sample {rec['key']}: {e}") from None
        shard_file = Path(dataset_dir) / rel  # as given, not resolved: it names the shard in caches and messages
        row = {r: str(rec.get(r) or "") for r in RANKS}
        row.update(key=str(rec["key"]), common=str(rec.get("common") or ""), shard=str(shard_file))
        rows.append(row)
    return rows


def shard_paths(dataset_dir: str | os.PathLike, split: str) -> list[str]:
    """Paths of the shards of `split`, in manifest order (empty if the split has none)."""
    manifest = read_manifest(dataset_dir)
    if split not in manifest["splits"]:
        raise TreeclipError(f"{dataset_dir}: no split {split!r} (has {', '.join(manifest['splits'])})")
    return [str(Path(dataset_dir) / split / s["name"]) for s in manifest["splits"][split]["shards"]]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_shards(dataset_dir: str | os.PathLike) -> list[str]:
    """Check every shard's size and sha256 against the manifest; one line per problem."""
    manifest = read_manifest(dataset_dir)
    problems = []
    for split, info in manifest["splits"].items():
        for s in info["shards"]:
            p = Path(dataset_dir) / split / s["name"]
            if not p.exists():
                problems.append(f"{p}: missing")
            elif p.stat().st_size != s["bytes"]:
                problems.append(f"{p}: size {p.stat().st_size} != {s['bytes']} in manifest")
            elif file_sha256(p) != s["sha256"]:
                problems.append(f"{p}: sha256 differs from the manifest (corrupt or modified)")
    return problems
