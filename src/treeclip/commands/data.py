"""`treeclip data ...`: the synthetic tree of life, dataset builds, dataset info."""

from __future__ import annotations

import click

from treeclip.commands._lazy import LazyGroup

VERBS = {
    "synth": ("data_synth", "synth", "Generate the synthetic tree of life (the embedded default)."),
    "build": ("data_build", "build", "Build a TreeOfLife-style dataset from image collections."),
    "info": ("data_info", "info", "Summarise a dataset dir and verify its shard checksums."),
}


@click.group(cls=LazyGroup, verbs=VERBS, package="treeclip.commands")
def data() -> None:
    """Datasets: synthesise, build, inspect."""
