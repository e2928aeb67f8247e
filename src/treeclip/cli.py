"""The `treeclip` command line: a thin layer that parses and calls one function per verb.

Verbs live in `treeclip.commands.<module>` and are imported only when run or asked for
help, and those modules import torch and friends inside their functions, so that
`treeclip --help` and `treeclip VERB --help` answer at once.
"""

from __future__ import annotations

import click

from treeclip.commands._lazy import LazyGroup
from treeclip.errors import EXIT_USAGE, TreeclipError

# verb -> (module under treeclip.commands, attribute, one-line help shown by `treeclip --help`)
VERBS: dict[str, tuple[str, str, str]] = {
    "taxonomy": ("taxonomy", "taxonomy", "Look up taxa in the offline NCBI taxonomy; resolve catalogs."),
    "data": ("data", "data", "Make datasets: the synthetic tree of life, builds from image collections."),
    "models": ("models", "models", "List the registered model configs with parameter counts."),
    "train": ("train", "train", "Train a CLIP model on taxonomic text (one CPU to many GPUs)."),
    "eval": ("evaluate", "evaluate", "Evaluate models: zero-shot, few-shot, linear probe, intrinsic."),
    "fit": ("fit", "fit", "Fit a classifier head on a few labelled photos (for predict --head)."),
    "predict": ("predict", "predict", "Classify images at any rank of the tree of life."),
    "embed": ("predict", "embed", "Write image embeddings to Parquet or .npy."),
    "demo": ("demo", "demo", "Run the whole pipeline on the synthetic tree of life."),
    "serve": ("serve", "serve", "Serve a local web page and HTTP API for classifying photos."),
}


class UsageError(click.ClickException):
    exit_code = EXIT_USAGE


class RootGroup(LazyGroup):
    """Turns a TreeclipError raised anywhere below into one line on stderr and exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TreeclipError as err:
            raise UsageError(str(err)) from None


@click.group(cls=RootGroup, verbs=VERBS, package="treeclip.commands",
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="treeclip")
def cli() -> None:
    """treeclip: BioCLIP for the whole tree of life.

    Build tree-of-life datasets, train CLIP on taxonomic text, evaluate as the paper
    does, and predict or embed organism images at any rank. Exit codes: 0 success,
    1 the run finished but some inputs failed, 2 bad usage or unusable input.
    """
    from treeclip.log import configure_cli

    configure_cli()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="treeclip")


if __name__ == "__main__":
    main()
