"""`treeclip demo`: the whole pipeline on the synthetic tree of life."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--out", "out_dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the data, models, evaluation and report.md go.")
@click.option("--quick", "profile", flag_value="quick",
              help="A smoke run (1.4 minutes on 2 idle cores): fewer species and steps; the models barely learn.")
@click.option("--long", "profile", flag_value="long",
              help="The paper's ablation tables in miniature: the text-type table (7 training text types x 5 query "
                   "types), the objective table and the data-diversity ablation; 20 models, 21 minutes on 2 idle cores.")
@click.option("--steps", type=int, default=None, help="Override the profile's training steps.")
@click.option("--seeds", default=None, help="Override the profile's seeds, e.g. 0,1,2.")
@click.option("--variants", default=None,
              help="Override the models compared: text types (com, sci, taxon, sci_com, taxon_com, mixed, "
                   "mixed-sample) and classifiers (ce, hier-ce), e.g. com,mixed,ce.")
def demo(out_dir: str, profile: str | None, steps: int | None, seeds: str | None, variants: str | None) -> None:
    """Generate the synthetic tree of life, train small CLIP models on common names and on
    mixed text types (per batch, BioCLIP's way, and per sample) and classifiers with the
    same image tower (cross-entropy, hierarchical cross-entropy), two seeds each; evaluate
    them on seen species, unseen species and unseen genera (zero-, 1- and 5-shot, the
    hierarchy per rank, t-SNE panels); check BioCLIP's claims (text types, objective);
    run predict on held-out images and write OUT/report.md. Resumes where it stopped; a
    stage whose settings changed since it ran in OUT (e.g. another --steps) is redone.

    Example: treeclip demo --quick --out runs/quick
    """
    from treeclip.demo import VARIANT_TITLES, run_demo

    chosen = tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else None
    unknown = [v for v in chosen or () if v not in VARIANT_TITLES]
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown)}; choose from {', '.join(VARIANT_TITLES)}",
                                 param_hint="--variants")
    report = run_demo(out_dir, profile or "default", steps=steps,
                      seeds=tuple(int(s) for s in seeds.split(",")) if seeds else None, variants=chosen)
    click.echo(f"report: {report}")
