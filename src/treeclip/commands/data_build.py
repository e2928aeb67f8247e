"""`treeclip data build`: image collections -> a TreeOfLife-style dataset dir."""

from __future__ import annotations

import sys

import click


@click.command("build")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--folder", "folders", multiple=True, metavar="DIR",
              help="Image folder whose class folders are named by scientific or taxonomic name (repeatable).")
@click.option("--catalog", "catalogs", multiple=True, metavar="FILE[::ROOT]",
              help="CSV/TSV/Parquet catalog: image path + any rank columns + common + source_id; "
                   "paths relative to ROOT (default: the catalog's folder) (repeatable).")
@click.option("--inat", "inats", multiple=True, metavar="FILE[::ROOT]",
              help="iNat-2021-style JSON (images, annotations, categories) (repeatable).")
@click.option("--urls", "url_tables", multiple=True, metavar="FILE",
              help="CSV/TSV/Parquet of image URLs (column url, or --url-column) + rank columns + optional "
                   "license, rights_holder (repeatable).")
@click.option("--url-column", default=None, metavar="NAME", help="The URL column of the --urls tables.")
@click.option("--gbif-dwca", "gbif", multiple=True, metavar="DIR_OR_ZIP",
              help="GBIF Darwin Core Archive download: occurrence.txt + multimedia.txt (repeatable).")
@click.option("--inat-open-data", "inat_open", multiple=True, metavar="DIR[::BASE_URL]",
              help="iNaturalist open-data export: observations.csv, photos.csv, taxa.csv; photos fetched from "
                   "the open-data bucket or BASE_URL (repeatable).")
@click.option("--download-timeout", type=click.FloatRange(0, min_open=True), default=20.0, show_default=True,
              help="Seconds to connect and for each read of a download.")
@click.option("--download-retries", type=click.IntRange(1), default=3, show_default=True,
              help="Tries per URL for 5xx/429 answers, timeouts, connection errors and truncated bodies.")
@click.option("--download-workers", type=click.IntRange(1), default=16, show_default=True,
              help="Download threads.")
@click.option("--per-host", type=click.IntRange(1), default=4, show_default=True,
              help="Most downloads in flight to one host.")
@click.option("--host-interval", type=click.FloatRange(0), default=0.05, show_default=True,
              help="Least seconds between two request starts to one host.")
@click.option("--max-download-bytes", type=click.IntRange(1), default=50 * 1024 * 1024, show_default=True,
              help="Largest image body fetched (bytes); longer ones stop and are reported too_large.")
@click.option("--exclude", multiple=True, metavar="SET",
              help="Evaluation set whose exact and near duplicates are removed: a task dir (task.toml), "
                   "image folder, catalog or iNat JSON (repeatable).")
@click.option("--exclude-threshold", type=click.IntRange(0, 256), default=None,
              help="PDQ Hamming distance (of 256 bits) counted as a near duplicate [default: 10, BioCLIP 2's].")
@click.option("--size", type=click.IntRange(8, 4096), default=224, show_default=True, help="Stored image size (px).")
@click.option("--resize", "resize_mode", type=click.Choice(["crop", "shorter", "stretch"]), default="crop",
              show_default=True, help="crop: shorter side to SIZE then centre square; shorter: keep aspect; "
                                      "stretch: SIZE x SIZE.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True,
              help="Fraction of samples in the validation split.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and the shard order.")
@click.option("--resolve/--no-resolve", default=True, show_default=True,
              help="Check and fill every row's ranks against the offline NCBI taxonomy.")
@click.option("--unresolved", type=click.Choice(["drop", "keep"]), default="drop", show_default=True,
              help="What to do with rows whose names NCBI cannot resolve (keep: with their names as given).")
@click.option("--workers", type=click.IntRange(0), default=0,
              help="Worker processes (with --distributor ray and no --ray-address: the local cluster's CPUs) "
                   "[default: every CPU].")
@click.option("--distributor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Who processes the chunks: this machine's processes, or Ray tasks (pip install 'treeclip[ray]'; "
                   "OUT must be on a file system every node sees).")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Join the Ray cluster at ADDR ('auto': the one `ray start` made here) [default: start a local "
                   "one].")
@click.option("--chunk-size", type=click.IntRange(1), default=64, show_default=True,
              help="Images per work unit (the unit of --resume).")
@click.option("--shard-size", type=click.IntRange(1), default=10000, show_default=True,
              help="Most samples per shard.")
@click.option("--shard-max-bytes", type=float, default=3e9, show_default=True, help="Most bytes per shard.")
@click.option("--max-pixels", type=click.IntRange(1), default=None,
              help="Refuse images with more pixels (decompression bombs) [default: 100,000,000].")
@click.option("--resume", is_flag=True, help="Continue an interrupted build in OUT, skipping finished work.")
@click.option("--keep-work", is_flag=True, help="Keep the staged chunks in OUT/.build after success.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def build(out, folders, catalogs, inats, url_tables, url_column, gbif, inat_open, download_timeout,
          download_retries, download_workers, per_host, host_interval, max_download_bytes, exclude,
          exclude_threshold, size, resize_mode, quality, val_fraction, seed, resolve, unresolved, workers,
          distributor, ray_address, chunk_size, shard_size, shard_max_bytes, max_pixels, resume, keep_work,
          quiet) -> None:
    """Build a TreeOfLife-style dataset in OUT from image folders, catalogs, iNat JSON,
    URL tables, GBIF Darwin Core Archives and iNaturalist open data.

    \b
    Examples:
      treeclip data build out/birds --folder photos/birds
      treeclip data build out/mix --folder photos --catalog extra.csv::/data/images \\
          --inat train.json --exclude tasks/rare-species --val-fraction 0.05 --workers 8
      treeclip data build out/gbif --gbif-dwca 0012345-240101123456789.zip --workers 8
      treeclip data build /shared/gbif --gbif-dwca export.zip --distributor ray --ray-address auto

    Bad inputs are skipped with one line each (all listed in OUT/build_report.csv; every
    URL's download status in OUT/downloads.csv); exit code 1 when some were skipped, 0 when none.
    """
    from treeclip.data.build import BuildOptions, build_dataset
    from treeclip.data.download import DownloadOptions
    from treeclip.data.images import MAX_PIXELS
    from treeclip.errors import EXIT_SOME_FAILED

    opts = BuildOptions(size=size, resize_mode=resize_mode, quality=quality, val_fraction=val_fraction, seed=seed,
                        resolve=resolve, unresolved=unresolved, exclude=list(exclude),
                        exclude_threshold=exclude_threshold, max_pixels=max_pixels or MAX_PIXELS,
                        chunk_size=chunk_size, shard_max_samples=shard_size, shard_max_bytes=shard_max_bytes,
                        workers=workers, keep_work=keep_work, distributor=distributor, ray_address=ray_address,
                        download=DownloadOptions(timeout=download_timeout, retries=download_retries,
                                                 workers=download_workers, per_host=per_host,
                                                 min_interval=host_interval, max_bytes=max_download_bytes))
    sources = [("folder", f) for f in folders] + [("catalog", c) for c in catalogs] + [("inat", i) for i in inats]
    sources += [("urls", f"{u}::{url_column}" if url_column else u) for u in url_tables]
    sources += [("gbif", g) for g in gbif] + [("inat-open", d) for d in inat_open]
    result = build_dataset(sources, out, opts, resume=resume, progress=not quiet)
    c, m = result.counts, result.manifest
    click.echo(f"{out}: {m['n_samples']} samples ({c['train']} train, {c['val']} val), {m['n_taxa']} taxa, "
               f"{sum(len(s['shards']) for s in m['splits'].values())} shards")
    if result.downloads:
        click.echo("downloads: " + ", ".join(f"{n} {status}" for status, n in result.downloads.items())
                   + f" (see {out}/downloads.csv)")
    skipped = ", ".join(f"{c[k]} {label}" for k, label in
                        (("input", "bad rows"), ("taxonomy", "unresolved"), ("download", "failed downloads"),
                         ("image", "bad images"),
                         ("duplicate", "duplicates"), ("exclude", "evaluation duplicates")) if c.get(k))
    if skipped:
        click.echo(f"removed: {skipped} (see {out}/build_report.csv)")
    if result.failed:
        sys.exit(EXIT_SOME_FAILED)
