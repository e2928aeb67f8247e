"""`treeclip fit MODEL LABELLED -o HEAD/`: a classifier head from a few labelled photos.
Only click and the standard library are imported here; the work happens in
`treeclip.evaluate.fit`."""

from __future__ import annotations

import sys

import click

from treeclip.model.registry import RESIZE_MODES


def _cs(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated numbers such as 0.1,1,10") from None
    if not values or any(v <= 0 for v in values):
        raise click.BadParameter(f"{text!r}: expected comma-separated numbers > 0 such as 0.1,1,10")
    return values


@click.command()
@click.argument("model")
@click.argument("labelled", type=click.Path(exists=True))
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(file_okay=False),
              help="The head folder to write (replaced whole if it exists).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the cross-validation folds.")
@click.option("--C", "cs", default="0.1,1,10,100", show_default=True,
              help="Logistic regression's C values, chosen by cross-validation.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0),
              help="Decoding processes (0 = threads in the main process).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.option("--resize", default="crop", show_default=True, type=click.Choice(list(RESIZE_MODES)),
              help="As predict's --resize; give predict the same one.")
@click.option("--cache", "cache_root", type=click.Path(file_okay=False),
              help="Cache root: the photos' embeddings go to features/ [default: $TREECLIP_CACHE or ~/.cache/treeclip].")
@click.option("--hub-dir", type=click.Path(file_okay=False), help="Hugging Face hub folder searched first for hf-hub: models.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def fit(model: str, labelled: str, out_dir: str, seed: int, cs: str, batch_size: int, workers: int, device: str,
        resize: str, cache_root: str | None, hub_dir: str | None, quiet: bool) -> None:
    """Fit a classifier head for MODEL on LABELLED photos; classify with `predict --head`.

    \b
    treeclip fit runs/demo/model labelled/ -o my-head/
    treeclip fit hf-hub:imageomics/bioclip-2 labels.csv -o my-head/
    treeclip predict runs/demo/model photos/ --head my-head/ -o out.csv

    LABELLED is a folder with one subfolder per class (the class is the subfolder's name)
    or a CSV with columns path,label (paths relative to the CSV's folder). Every class
    needs 2+ images. A nearest-centroid head (SimpleShot CL2N) and a logistic regression
    are compared by stratified k-fold cross-validation (k = min(5, smallest class)); the
    better is refitted on all photos and written to HEAD/ (head.safetensors, head.json,
    confusion.png). Exit 1 when some photos could not be read (they are skipped).
    """
    from treeclip.cache import CachePaths
    from treeclip.evaluate.fit import FitOptions, report_text, run_fit
    from treeclip.runtime.options import InferenceOptions

    options = InferenceOptions.for_verb("eval", device=device, batch_size=batch_size, workers=workers, resize=resize)
    run = run_fit(model, labelled, out_dir, options=options, fit=FitOptions(seed=seed, cs=_cs(cs)),
                  caches=CachePaths.default(cache_root, hub_dir), progress=not quiet)
    click.echo(report_text(run.result))
    sys.exit(run.exit_code)
