"""`treeclip eval MODEL [MODEL...] --task T [--task T...]`: the paper's evaluation protocol.

Also `treeclip eval tasks` (the shipped task specs) and `treeclip eval rare-species`
(build the Rare Species task). Only click and the standard library are imported here;
the work happens in `treeclip.evaluate`.
"""

from __future__ import annotations

import sys

import click

from treeclip.runtime.precision import PRECISIONS, VERB_DEFAULTS

SUBCOMMANDS = ("run", "tasks", "rare-species")


class _DefaultToRun(click.Group):
    """A group whose first argument, when it is not a subcommand, starts `run`:
    `treeclip eval MODEL --task T` is `treeclip eval run MODEL --task T`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToRun)
def evaluate() -> None:
    """Evaluate models as the BioCLIP paper does: zero-shot, few-shot (SimpleShot CL2N),
    linear probe, and the intrinsic (t-SNE + hierarchy) analysis.

    \b
    treeclip eval MODEL [MODEL...] --task T [--task T...] [--shots 0,1,5] [--out DIR]
    treeclip eval tasks                  # the shipped task specs (the paper's ten)
    treeclip eval rare-species ...       # build the Rare Species task from an IUCN table

    MODEL is a model dir, `local-dir:DIR`, a checkpoint file or a registered name. A task
    is a shipped task name, a folder with task.toml, or a .toml file (docs/evaluation.md).
    """


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers such as 0,1,5") from None
    if not values or any(v < 0 for v in values):
        raise click.BadParameter(f"{text!r}: expected comma-separated integers >= 0 such as 0,1,5")
    return values


@evaluate.command("run")
@click.argument("models", nargs=-1, required=True)
@click.option("--task", "-t", "tasks", multiple=True, required=True,
              help="Task name, folder or .toml (repeat for several).")
@click.option("--shots", default="0,1,5", show_default=True,
              help="Comma-separated: 0 = zero-shot, k > 0 = k-shot SimpleShot CL2N.")
@click.option("--text-type", "text_types", multiple=True,
              help="Class-name text for zero-shot: taxon_com (default for taxa), com, sci, taxon, "
                   "sci_com, taxonTag, taxonTag_com, as-given. Repeat or comma-separate for an ablation.")
@click.option("--templates", default="bioclip", show_default=True,
              help="Template set: bioclip (81), openai (80), single, or a file with one template per line.")
@click.option("--trials", default=5, show_default=True, type=click.IntRange(1),
              help="Few-shot trials, seeded 0..trials-1.")
@click.option("--linear-probe", is_flag=True, help="Also fit a logistic-regression probe (CPU).")
@click.option("--intrinsic/--no-intrinsic", default=True, show_default=True,
              help="Hierarchy numbers per rank and t-SNE panels.")
@click.option("--tsne-points", default=1500, show_default=True, type=click.IntRange(10),
              help="At most this many points per t-SNE panel.")
@click.option("--out", "out_dir", default="eval-results", show_default=True, type=click.Path(file_okay=False),
              help="Folder for report.md, results.json and the PNGs.")
@click.option("--cache", "cache_root", default=None, type=click.Path(file_okay=False),
              help="Cache root for image features and class text embeddings [default: $TREECLIP_CACHE, "
                   "else ~/.cache/treeclip].")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0),
              help="DataLoader processes decoding images.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--precision", default=VERB_DEFAULTS["eval"], show_default=True, type=click.Choice(PRECISIONS),
              help="Image tower precision of the features (docs/predict.md#precision); fp32 is exact.")
@click.option("--hub-dir", type=click.Path(file_okay=False),
              help="A Hugging Face hub folder to look in for hf-hub:ORG/NAME models first [default: $TREECLIP_HF_HUB].")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def run(models: tuple[str, ...], tasks: tuple[str, ...], shots: str, text_types: tuple[str, ...], templates: str,
        trials: int, linear_probe: bool, intrinsic: bool, tsne_points: int, out_dir: str, cache_root: str | None,
        batch_size: int, workers: int, device: str, precision: str, hub_dir: str | None, quiet: bool) -> None:
    """Evaluate MODELS on the tasks; print the paper-layout tables; write report.md,
    results.json and the intrinsic PNGs to --out. Exit 1 if some images failed."""
    from treeclip.errors import EXIT_SOME_FAILED
    from treeclip.evaluate.report import terminal_report
    from treeclip.evaluate.runner import DEFAULT_TEXT, EvalConfig, run_evaluation
    from treeclip.cache import CachePaths
    from treeclip.evaluate.zeroshot import CLASS_TEXT_TYPES
    from treeclip.runtime.options import InferenceOptions

    types = tuple(t.strip() for spec in text_types for t in spec.split(",") if t.strip()) or (DEFAULT_TEXT,)
    bad = [t for t in types if t not in CLASS_TEXT_TYPES + (DEFAULT_TEXT,)]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not one of {', '.join(CLASS_TEXT_TYPES)}", param_hint="--text-type")
    inference = InferenceOptions.for_verb("eval", device=device, precision=precision, batch_size=batch_size,
                                          workers=workers, templates=templates)
    cfg = EvalConfig(shots=_ints(shots), text_types=types, seeds=tuple(range(trials)), linear_probe=linear_probe,
                     intrinsic=intrinsic, tsne_points=tsne_points, inference=inference,
                     caches=CachePaths.default(cache_root, hub_dir), progress=not quiet)
    results = run_evaluation(list(models), list(tasks), cfg, out_dir)
    click.echo(terminal_report(results))
    n_failed = results["failures"]["count"]
    for line in results["failures"]["examples"][:20]:
        click.echo(line, err=True)
    click.echo(f"wrote {out_dir}/report.md and results.json" + (f"; {n_failed} inputs failed" if n_failed else ""),
               err=True)
    if n_failed:
        sys.exit(EXIT_SOME_FAILED)


@evaluate.command("tasks")
def tasks_cmd() -> None:
    """List the shipped task specs (the paper's ten) and where each expects its images."""
    from treeclip.evaluate.tasks import shipped_tasks
    import tomllib

    for name, path in shipped_tasks().items():
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
        root = spec.get("images", {}).get("root", "")
        click.echo(f"{name:22s} {spec.get('description', '')}  [{root}]")


@evaluate.command("rare-species")
@click.option("--status", required=True, type=click.Path(exists=True, dir_okay=False),
              help="IUCN-style table (CSV/TSV/Parquet): scientific_name (or genus + species), category.")
@click.option("--images", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Image catalog: path, kingdom..species, common.")
@click.option("--root", type=click.Path(exists=True, file_okay=False),
              help="Folder the catalog's paths are relative to [default: the catalog's folder].")
@click.option("--training", type=click.Path(exists=True),
              help="The training catalog or dataset dir: its species are left out.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Task folder to write.")
@click.option("--categories", default="NT,VU,EN,CR,EW", show_default=True, help="Red List categories to keep.")
@click.option("--min-images", default=30, show_default=True, type=click.IntRange(1))
@click.option("--per-species", default=None, type=click.IntRange(1), help="Images sampled per species [default: --min-images].")
@click.option("--species", "max_species", default=None, type=click.IntRange(1),
              help="Keep at most this many species (seeded sample; the paper kept 400).")
@click.option("--seed", default=0, show_default=True)
def rare_species(status: str, images: str, root: str | None, training: str | None, out_dir: str, categories: str,
                 min_images: int, per_species: int | None, max_species: int | None, seed: int) -> None:
    """Build the Rare Species task: species of the chosen IUCN categories absent from
    training, with at least --min-images images each, --per-species sampled per species.
    Pass the written folder to `treeclip data build --exclude` too."""
    import json

    from treeclip.evaluate.rare_species import build_rare_species

    summary = build_rare_species(status, images, training, out_dir, image_root=root,
                                 categories=[c.strip() for c in categories.split(",") if c.strip()],
                                 min_images=min_images, per_species=per_species, max_species=max_species, seed=seed)
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"wrote the task to {out_dir}; evaluate with `treeclip eval MODEL --task {out_dir}`", err=True)
