"""`treeclip predict` and `treeclip embed`. Only click, the standard library and light
constant modules are imported here (so `--help` answers at once); the work happens in
`treeclip.predict`."""

from __future__ import annotations

import sys
from typing import Callable

import click

from treeclip.model.registry import RESIZE_MODES
from treeclip.predict.options import FORMATS
from treeclip.runtime.options import BACKENDS
from treeclip.runtime.precision import PRECISIONS, VERB_DEFAULTS
from treeclip.taxonomy.taxon import RANKS, TEXT_TYPES




def _input_options(precision: str) -> Callable[[Callable], Callable]:
    """Options shared by predict and embed: where the images come from and how they run."""
    return lambda fn: _add_options(fn, precision)


def _add_options(fn: Callable, precision: str) -> Callable:
    options = [
        click.argument("images", nargs=-1),
        click.option("--files-from", "list_file", type=click.Path(dir_okay=False),
                     help="Text file with one image path per line (relative to the file's folder)."),
        click.option("--csv", "csv_file", type=click.Path(dir_okay=False),
                     help="CSV whose --column holds image paths (relative to --root or the CSV's folder)."),
        click.option("--column", default="file_name", show_default=True, help="Path column of --csv."),
        click.option("--root", type=click.Path(file_okay=False),
                     help="Folder relative --csv (or --detections) paths start from."),
        click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1)),
        click.option("--workers", default=None, type=click.IntRange(0),
                     help="Decoding processes (0 = decode in the main process) [default: cores - 2, so none on 2 cores]."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 or auto."),
        click.option("--precision", default=precision, show_default=True, type=click.Choice(PRECISIONS),
                     help="auto = bf16 where the hardware runs it natively (AMX/AVX512_BF16, CUDA), else fp32; "
                          "fast = int8 (ONNX Runtime) on CPUs, except bf16 where bf16 units have no int8 (VNNI) "
                          "beside them. fp32 is exact (open_clip's own pixels and numbers); bf16/int8 are faster "
                          "and near-exact (docs/predict.md#precision)."),
        click.option("--resize", default="crop", show_default=True, type=click.Choice(list(RESIZE_MODES)),
                     help="crop: the model's own preprocess (shorter side, centre crop); squash: a plain resize "
                          "to the model's square size, as pybioclip does (to compare with its numbers)."),
        click.option("--backend", default="auto", show_default=True, type=click.Choice(BACKENDS),
                     help="Who runs the fp32 and bf16 image tower on a CPU (int8 runs in ONNX Runtime): auto = "
                          "the fastest of torch, ONNX Runtime and OpenVINO whose embeddings hold the precision's bar "
                          "(fp32: within 1e-5 of torch's), measured once per model and machine "
                          "(docs/predict.md#backends)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
        click.option("--hub-dir", type=click.Path(file_okay=False),
                     help="A Hugging Face hub folder (models--ORG--NAME/, datasets--ORG--NAME/) to look in for "
                          "hf-hub:ORG/NAME before $HF_HUB_CACHE / ~/.cache/huggingface/hub [default: "
                          "$TREECLIP_HF_HUB]. Nothing is ever downloaded."),
        click.option("--cache", "cache_root", type=click.Path(file_okay=False),
                     help="Cache root: label embeddings in labels/, exported graphs in onnx/ "
                          "[default: $TREECLIP_CACHE or ~/.cache/treeclip]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def inference_options(verb: str, *, device: str, precision: str, batch_size: int, workers: int | None,
                      resize: str, backend: str = "auto", templates: str | None = None, compile_: bool = False):
    """The verb's `InferenceOptions` from its command-line values (checked here)."""
    from treeclip.runtime.options import InferenceOptions

    values = {"templates": templates} if templates is not None else {}
    return InferenceOptions.for_verb(verb, device=device, precision=precision, batch_size=batch_size,
                                     workers=workers, resize=resize, backend=backend, compile=compile_, **values)


def cache_paths(cache_root: str | None, hub_dir: str | None):
    """The `CachePaths` of `--cache` and `--hub-dir` (the environment's where not given)."""
    from treeclip.cache import CachePaths

    return CachePaths.default(cache_root, hub_dir)


def _detections(path: str | None, root: str | None, min_conf: float, categories: str, margin: float,
                md_out: str | None, output: str | None, fmt: str):
    """The `DetectionOptions` of --detections and its companions (None without it)."""
    from treeclip.errors import TreeclipError
    from treeclip.predict.detections import DetectionOptions

    if path is None:
        if md_out:
            raise TreeclipError("--md-out writes the classifications of --detections; give --detections")
        return None
    if md_out and (not output or fmt == "table"):
        raise TreeclipError("--md-out reads the finished rows back: give -o FILE in csv or jsonl")
    return DetectionOptions(path, root=root, min_conf=min_conf, categories=tuple(categories.split(",")),
                            margin=margin, md_out=md_out)


def _gather(images: tuple[str, ...], list_file: str | None, csv_file: str | None, column: str,
            root: str | None) -> list:
    from treeclip.errors import TreeclipError
    from treeclip.predict.inputs import gather

    items = gather(images, list_file=list_file, csv_file=csv_file, column=column, root=root)
    if not items:
        where = ", ".join(images) or list_file or csv_file or "nothing"
        raise TreeclipError(f"no images found in {where}")
    return items


@click.command()
@click.argument("model")
@_input_options(VERB_DEFAULTS["predict"])
@click.option("--rank", default="species", show_default=True, type=click.Choice(RANKS),
              help="Rank of the answers: species probabilities summed to it.")
@click.option("--k", default=5, show_default=True, type=click.IntRange(1), help="Answers per image.")
@click.option("--min-prob", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Leave out answers below this probability (each image keeps its best).")
@click.option("--taxa", help="Label taxa: CSV/Parquet table, a dir with taxa.parquet, ncbi:CLADE, or a "
                             "precomputed label set (txt_emb_species.npy/.json, their folder, or hf-hub:ORG/NAME of a "
                             "dataset repo in the local cache) [default: the model's own: its dir's label set or "
                             "taxa.parquet; for hf-hub:imageomics/bioclip(-2) the published TreeOfLife-10M (200M) set].")
@click.option("--ncbi-limit", type=click.IntRange(1), help="With --taxa ncbi:CLADE: at most this many species.")
@click.option("--subset", multiple=True, help="Keep only these taxa: RANK=NAME[,NAME...] (class=Insecta) or a "
                                                "species/taxa list file. Repeat to intersect.")
@click.option("--cls", "cls_spec", help="Custom labels instead of taxa: a comma list (CSV quoting for names "
                                         "with commas) or a file with one label per line.")
@click.option("--bins", type=click.Path(dir_okay=False), help="CSV label,bin: custom labels summed into bins.")
@click.option("--head", type=click.Path(file_okay=False),
              help="A head folder `treeclip fit` wrote for this model: classify among its classes.")
@click.option("--rollup", type=click.FloatRange(0, 1, min_open=True),
              help="Roll-up mode: answer at the deepest rank whose summed probability reaches this "
                   "threshold, else 'unknown'.")
@click.option("--templates", default="openai", show_default=True,
              help="Label templates: openai (80), bioclip (81), single, or a file with one per line.")
@click.option("--text-type", default="taxon_com", show_default=True, type=click.Choice(TEXT_TYPES),
              help="Name of each taxon in the templates (taxon_com = 7 ranks + common name, as BioCLIP).")
@click.option("--format", "fmt", default="csv", show_default=True, type=click.Choice(FORMATS))
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write here [default: stdout]. An existing "
                                                                       "CSV/JSONL output is resumed.")
@click.option("--overwrite", is_flag=True, help="Start --output afresh instead of resuming it.")
@click.option("--retry-errors", is_flag=True, help="When resuming, try the images whose rows are errors again.")
@click.option("--compile", "compile_", is_flag=True, help="Let torch.compile (inductor) compete as a backend of the image tower: compiles for "
                   "minutes on a small CPU, again in every new process; with --backend torch, always compile.")
@click.option("--detections", "detections_file", type=click.Path(dir_okay=False),
              help="A MegaDetector batch output (JSON): classify each detection on its crop, one row per "
                   "detection (detection_id, bbox, detection_conf columns); images with none get an empty row. "
                   "Its `file` paths start from --root (default: the JSON's folder).")
@click.option("--min-conf", default=0.2, show_default=True, type=click.FloatRange(0, 1),
              help="With --detections: the detections at least this confident.")
@click.option("--categories", default="animal", show_default=True,
              help="With --detections: the detection categories to classify (comma list, e.g. animal,person).")
@click.option("--crop-margin", default=0.1, show_default=True, type=click.FloatRange(0, 1),
              help="With --detections: context kept around each box, as a fraction of its size per side.")
@click.option("--md-out", type=click.Path(dir_okay=False),
              help="With --detections: also write the MegaDetector JSON with each detection's classifications "
                   "(the format Timelapse reads).")
def predict(model: str, images: tuple[str, ...], list_file: str | None, csv_file: str | None, column: str,
            root: str | None, batch_size: int, workers: int | None, device: str, precision: str, resize: str,
            backend: str, quiet: bool, hub_dir: str | None, cache_root: str | None, rank: str, k: int, min_prob: float,
            taxa: str | None, ncbi_limit: int | None, subset: tuple[str, ...], cls_spec: str | None,
            bins: str | None, head: str | None, rollup: float | None, templates: str, text_type: str, fmt: str,
            output: str | None, overwrite: bool, retry_errors: bool, compile_: bool, detections_file: str | None,
            min_conf: float, categories: str, crop_margin: float, md_out: str | None) -> None:
    """Classify IMAGES (files, folders, globs) with MODEL at any rank of the tree of life.

    \b
    treeclip predict runs/demo/model photos/ --rank family --k 3
    treeclip predict MODEL photos/ --taxa ncbi:Insecta --subset order=Lepidoptera -o out.csv
    treeclip predict MODEL a.jpg --cls "crow,\\"magpie, black-billed\\"" --format table
    treeclip predict MODEL photos/ --rollup 0.8 --format jsonl -o out.jsonl
    treeclip predict hf-hub:imageomics/bioclip-2 photos/ --rank family
    treeclip predict MODEL photos/ --head my-head/ --k 1     # a head from `treeclip fit`
    treeclip predict MODEL --detections md.json -o crops.csv --md-out md_classified.json

    MODEL is a model dir, `local-dir:DIR`, `hf-hub:ORG/NAME` (from the local Hugging Face
    cache, never downloaded; docs/predict.md#offline), a checkpoint or a registered name. Rows carry
    pybioclip's columns (file_name, kingdom..species, common_name, score; classification
    for --cls/--bins/--head) plus `error` for inputs that could not be read. Exit 1 when some
    inputs failed.
    """
    from treeclip.predict.options import AnswerOptions, LabelChoice, OutputOptions
    from treeclip.predict.runner import run_predict

    labels = LabelChoice(taxa=taxa, ncbi_limit=ncbi_limit, subset=subset, cls_spec=cls_spec, bins=bins,
                         text_type=text_type, head=head)
    answers = AnswerOptions(rank=rank, k=k, min_prob=min_prob, rollup=rollup)
    answers.for_labels(labels)  # --cls with --rank/--rollup fails here, before any image is read
    options = inference_options("predict", device=device, precision=precision, batch_size=batch_size,
                                workers=workers, resize=resize, backend=backend, templates=templates, compile_=compile_)
    detections = _detections(detections_file, root, min_conf, categories, crop_margin, md_out, output, fmt)
    items = _gather(images, list_file, csv_file, column, root) if detections is None else []
    code = run_predict(model, items, labels=labels, answers=answers,
                       output=OutputOptions(output, fmt, overwrite=overwrite, retry_errors=retry_errors),
                       options=options, caches=cache_paths(cache_root, hub_dir), detections=detections,
                       progress=not quiet)
    sys.exit(code)


@click.command()
@click.argument("model")
@_input_options(VERB_DEFAULTS["embed"])
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="emb.parquet (file_name, embedding, error) or emb.npy (+ emb.files.csv).")
@click.option("--normalize/--no-normalize", default=False, show_default=True,
              help="L2-normalise the embeddings (raw projection output otherwise, as pybioclip).")
@click.option("--overwrite", is_flag=True, help="Start --output afresh instead of resuming it.")
@click.option("--retry-errors", is_flag=True, help="When resuming, try the images that failed before again.")
@click.option("--chunk-size", default=1024, show_default=True, type=click.IntRange(1),
              help="Images per chunk kept beside the output as they are done (what a resume starts from).")
def embed(model: str, images: tuple[str, ...], list_file: str | None, csv_file: str | None, column: str,
          root: str | None, batch_size: int, workers: int | None, device: str, precision: str, resize: str,
          backend: str, quiet: bool, hub_dir: str | None, cache_root: str | None, output: str, normalize: bool, overwrite: bool,
          retry_errors: bool, chunk_size: int) -> None:
    """Write image embeddings of IMAGES (files, folders, globs) under MODEL to Parquet or .npy.

    \b
    treeclip embed runs/demo/model photos/ -o emb.parquet --normalize
    torchrun --nproc_per_node 4 -m treeclip embed MODEL photos/ -o emb.parquet

    Exact fp32 by default. A rerun with the same -o resumes (results are kept in chunks
    beside it as they come); under torchrun the inputs are split over the ranks.
    """
    from treeclip.predict.options import OutputOptions
    from treeclip.predict.runner import run_embed

    options = inference_options("embed", device=device, precision=precision, batch_size=batch_size,
                                workers=workers, resize=resize, backend=backend)
    sys.exit(run_embed(model, _gather(images, list_file, csv_file, column, root),
                       output=OutputOptions(output, overwrite=overwrite, retry_errors=retry_errors),
                       normalize=normalize, chunk=chunk_size, options=options,
                       caches=cache_paths(cache_root, hub_dir), progress=not quiet))
