"""`treeclip data synth OUT`: generate the synthetic tree of life (the embedded default)."""

from __future__ import annotations

import os

import click


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--species", default=0, show_default=True, type=click.IntRange(min=0),
              help="How many species of the shipped NCBI table to use (0 = all).")
@click.option("--images-per-species", default=40, show_default=True, type=click.IntRange(min=1),
              help="Training images per seen species (val share included).")
@click.option("--eval-images-per-species", default=20, show_default=True, type=click.IntRange(min=1),
              help="Images per species in each evaluation task.")
@click.option("--image-size", default=64, show_default=True, type=click.IntRange(16, 1024), help="Pixels per side.")
@click.option("--unseen-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of species held out as unseen species of seen genera.")
@click.option("--unseen-genus-fraction", default=0.1, show_default=True,
              type=click.FloatRange(0, 1, max_open=True), help="Share of species held out as whole unseen genera.")
@click.option("--val-fraction", default=0.05, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of each seen species' training images in the val split.")
@click.option("--train-species-fraction", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Share of the seen species whose images go into the training set (a seeded subset; "
                   "the rest stay in the seen-species task).")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, byte-identical output.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Rendering processes (0 = one per CPU core); the output does not depend on it.")
def synth(out: str, species: int, images_per_species: int, eval_images_per_species: int, image_size: int,
          unseen_fraction: float, unseen_genus_fraction: float, val_fraction: float,
          train_species_fraction: float, seed: int, workers: int) -> None:
    """Generate the synthetic tree of life into OUT.

    Real NCBI species (Animalia, Plantae, Fungi) with descriptive epithets, each image
    drawn from its lineage. OUT becomes a dataset dir (train/val shards of the seen
    species) plus evaluation tasks OUT/tasks/synth-seen, synth-unseen and
    synth-unseen-genus. See docs/synth.md.

    \b
    Example:
      treeclip data synth runs/synth --species 120 --images-per-species 30
    """
    from treeclip.data.synth import SynthConfig, synthesize

    config = SynthConfig(species=species, images_per_species=images_per_species,
                         eval_images_per_species=eval_images_per_species, image_size=image_size,
                         unseen_fraction=unseen_fraction, unseen_genus_fraction=unseen_genus_fraction,
                         val_fraction=val_fraction, train_species_fraction=train_species_fraction, seed=seed,
                         workers=workers or os.cpu_count() or 1)
    summary = synthesize(out, config, progress=True)
    if summary.get("skipped"):
        click.echo(f"{out}: already generated with these options (synth.json); nothing to do", err=True)
    roles = summary["roles"]
    click.echo(f"{summary['species']} species ({', '.join(summary['kingdoms'])}): {roles['seen']} seen, "
               f"{roles['unseen']} unseen, {roles['unseen_genus']} in {summary['unseen_genera']} unseen genera")
    click.echo(f"dataset {out}: " + ", ".join(f"{k} {v} images" for k, v in summary["dataset"].items()))
    for name, task in summary["tasks"].items():
        if task["path"]:
            click.echo(f"task {os.path.join(out, task['path'])}: {task['species']} species, {task['images']} images")
        else:
            click.echo(f"task {name}: no species held out for it, not written")
    if "images_per_second" in summary:
        click.echo(f"{summary['seconds']:.1f} s, {summary['images_per_second']:.0f} images/s", err=True)
