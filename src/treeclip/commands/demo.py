"""`treeclip demo`: the whole pipeline on the synthetic tree of life."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--out", "out_dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the data, models, evaluation and report.md go.")
@click.option("--quick", "profile", flag_value="quick",
              help="A smaller run (2.3 minutes on 2 idle cores): fewer species and steps.")
@click.option("--long", "profile", flag_value="long",
              help="A longer run: 600 steps, per-batch mixing (BioCLIP's way) added, more images (26 minutes on 2 idle cores).")
@click.option("--steps", type=int, default=None, help="Override the profile's training steps.")
@click.option("--seeds", default=None, help="Override the profile's seeds, e.g. 0,1,2.")
@click.option("--variants", default=None,
              help="Override the text types compared, e.g. com,taxon,mixed,mixed-sample.")
def demo(out_dir: str, profile: str | None, steps: int | None, seeds: str | None, variants: str | None) -> None:
    """Generate the synthetic tree of life, train small models with mixed text types and
    with common names only (two seeds each), evaluate them on seen species, unseen species
    and unseen genera (zero-, 1- and 5-shot, hierarchy per rank, t-SNE panels), run
    predict on held-out images, and write OUT/report.md. Resumes where it stopped; a
    stage whose settings changed since it ran in OUT (e.g. another --steps) is redone.

    Example: treeclip demo --quick --out runs/quick
    """
    from treeclip.demo import run_demo

    report = run_demo(
        out_dir, profile or "default", steps=steps,
        seeds=tuple(int(s) for s in seeds.split(",")) if seeds else None,
        variants=tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else None,
    )
    click.echo(f"report: {report}")
