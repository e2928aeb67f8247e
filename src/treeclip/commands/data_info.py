"""`treeclip data info DIR`: what a dataset dir holds, and whether its shards are intact."""

from __future__ import annotations

import sys

import click


@click.command("info")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of every shard.")
@click.option("--examples", type=click.IntRange(0), default=1, show_default=True,
              help="Example captions of each text type to show.")
def info(dataset_dir: str, no_verify: bool, examples: int) -> None:
    """Summarise DATASET_DIR (samples, taxa per rank, shards, example captions) and verify
    shard checksums against the manifest (exit 1 if any shard is missing or corrupt)."""
    from treeclip.data.info import dataset_summary
    from treeclip.data.dataset import verify_shards
    from treeclip.errors import EXIT_SOME_FAILED

    click.echo(dataset_summary(dataset_dir, examples=examples))
    if no_verify:
        return
    problems = verify_shards(dataset_dir)
    for p in problems:
        click.echo(f"treeclip: {p}", err=True)
    if problems:
        click.echo(f"checksums: {len(problems)} shard(s) failed")
        sys.exit(EXIT_SOME_FAILED)
    click.echo("checksums: every shard matches the manifest")
