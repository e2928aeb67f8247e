"""`treeclip train`: CLIP on taxonomic text, one CPU to many GPUs (torchrun / srun)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from treeclip.runtime.precision import TRAIN_PRECISIONS
from treeclip.taxonomy.taxon import TEXT_TYPES
from treeclip.train.config import LOSSES, OBJECTIVES

TEXT_CHOICES = ("mixed", "mixed-sample", *TEXT_TYPES)  # the mixing modes (train.order.TEXT_MODES) or one type


@click.command("train")
@click.argument("data", type=click.Path(file_okay=False), required=False)
@click.option("--extra-data", multiple=True, type=click.Path(file_okay=False),
              help="Another training dataset (repeatable); the sources' taxa are merged (clip objective only).")
@click.option("--data-weights", help="One weight per source (DATA, then each --extra-data), e.g. 1,4: each "
              "source's share of a batch is its size x its weight, drawn from the seed (upsampling factors).")
@click.option("--replay-data", help="Experience replay (BioCLIP 2): a webdataset of jpg + txt pairs (a dir of "
              ".tar shards, one .tar, or a brace pattern), mixed into each batch through a second projection.")
@click.option("--replay-ratio", type=float, help="Share of each global batch drawn from --replay-data (default 0.25).")
@click.option("--replay-loss-weight", type=float, help="Weight of the replay contrastive loss (default 1.0).")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Run dir: checkpoints, metrics.jsonl, model/.")
@click.option("--preset", help="Named recipe: bioclip (the paper's) or cpu-demo.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file of settings (overrides the preset).")
@click.option("--model", help="Registered model name (see `treeclip models`). Default tiny-vit-64.")
@click.option("--pretrained", help="Initial weights: open_clip checkpoint file, model dir, local-dir:DIR or "
              "hf-hub:ORG/NAME (read from the local Hugging Face cache, never downloaded); --model must be its "
              "architecture (e.g. bioclip-vit-b-16 for hf-hub:imageomics/bioclip).")
@click.option("--hub-dir", type=click.Path(file_okay=False),
              help="A Hugging Face hub folder (models--ORG--NAME/) to look in for hf-hub:ORG/NAME before "
                   "$HF_HUB_CACHE / ~/.cache/huggingface/hub [default: $TREECLIP_HF_HUB].")
@click.option("--lock-image", is_flag=True, default=None, help="Freeze the image tower (LiT; open_clip's lock_image_tower).")
@click.option("--lock-image-unlocked-groups", type=int,
              help="With --lock-image: leave its last N layer groups trainable (1 = the projection only).")
@click.option("--lock-image-freeze-bn-stats", is_flag=True, default=None,
              help="With --lock-image: also freeze BatchNorm running statistics (timm towers; a ViT has none).")
@click.option("--lock-text", is_flag=True, default=None, help="Freeze the text tower (open_clip's lock_text_tower).")
@click.option("--lock-text-unlocked-layers", type=int,
              help="With --lock-text: leave its last N layer groups trainable (1 = the projection only).")
@click.option("--lock-text-freeze-layer-norm/--no-lock-text-freeze-layer-norm", default=None,
              help="With --lock-text: LayerNorms of locked layers frozen too (default, and the only choice "
                   "open_clip's built-in text tower supports).")
@click.option("--lora-rank", type=int, help="LoRA adapters of rank R through peft (pip install 'treeclip[lora]'): "
              "base weights frozen, adapters and logit_scale train, merged into model/ on export (adapter alone in "
              "model/lora/). 0 = off (default).")
@click.option("--lora-alpha", type=float, help="LoRA scaling alpha (delta = alpha/R * B A) [default: 2R].")
@click.option("--lora-dropout", type=float, help="Dropout on the LoRA input of module targets [default: 0].")
@click.option("--lora-targets", help="Comma-separated layer names to adapt in the unlocked towers, peft's matching; "
              "names ending in _weight/.weight are weight targets [default: in_proj_weight,c_fc,c_proj: attention "
              "q/k/v and both MLP layers].")
@click.option("--report-to", help="Also log the metrics.jsonl records to: tensorboard (OUT/tensorboard/), "
              "wandb (offline, OUT/wandb/), or both comma-separated. Needs the package installed.")
@click.option("--steps", type=int, help="Optimizer steps (or use --epochs).")
@click.option("--epochs", type=float, help="Passes over the training split (or use --steps).")
@click.option("--batch-size", type=int, help="GLOBAL batch per step, split over processes and --accum.")
@click.option("--accum", "accum_steps", type=int, help="Gradient accumulation steps (exact: whole-batch contrastive loss).")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--warmup", type=int, help="Linear warmup steps before the cosine decay.")
@click.option("--weight-decay", type=float, help="AdamW weight decay (not on gains, biases, logit scale).")
@click.option("--text-type", type=click.Choice(TEXT_CHOICES), help="mixed: one type per batch (BioCLIP); "
              "mixed-sample: one per sample; or a fixed type.")
@click.option("--objective", type=click.Choice(OBJECTIVES),
              help="clip (default): contrastive on text; ce: cross-entropy over species; hier-ce: one head per "
                   "rank, losses summed (the paper's objective ablation: same image tower, no text).")
@click.option("--loss", type=click.Choice(LOSSES), help="taxon-aware: same-taxon pairs are not negatives.")
@click.option("--precision", type=click.Choice(TRAIN_PRECISIONS),
              help="Mixed precision: auto = bf16 autocast where bf16 is native (CUDA, AVX512_BF16/AMX), else fp32; "
                   "fp16 uses a grad scaler on GPU (on a CPU it runs, and is reported as, bf16). Default fp32.")
@click.option("--grad-checkpointing/--no-grad-checkpointing", default=None, help="Recompute activations to save memory.")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model.")
@click.option("--augment/--no-augment", default=None, help="Random resized crop during training.")
@click.option("--dataset-resampled/--no-dataset-resampled", default=None,
              help="Draw shards with replacement (open_clip_train's --dataset-resampled); exact on resume.")
@click.option("--compact-vocab/--no-compact-vocab", default=None,
              help="Train only the token-embedding rows the dataset's captions use (saved with the full vocabulary).")
@click.option("--cache-images/--no-cache-images", default=None,
              help="Decode and resize the training images once and keep them in memory (small datasets).")
@click.option("--workers", type=int, help="Data loader worker processes per training process.")
@click.option("--threads", type=int, help="torch CPU threads per process.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Default auto.")
@click.option("--seed", type=int, help="Seed of weights init, data order and text types.")
@click.option("--save-every", type=int, help="Checkpoint every N steps (and always at the end).")
@click.option("--val-every", type=int, help="Validate every N steps (and at the end).")
@click.option("--val-samples", type=int, help="Validation samples to score.")
@click.option("--log-every", type=int, help="Write a metrics line every N steps (default 10).")
@click.option("--label-set/--no-label-set", default=None,
              help="Write the training taxa and their label embeddings (taxa.parquet, txt_emb_species.npy/.json) "
                   "into model/ and best/, so `treeclip predict RUN/model photos/` needs no --taxa. Default on.")
@click.option("--resume", help="`latest` (the newest readable checkpoint in --out) or a checkpoint dir.")
@click.option("--overwrite", is_flag=True, help="Clear the run files of another run in --out first.")
@click.option("--allow-changed-settings", "allow_changes", is_flag=True,
              help="Resume even with settings other than the run's own (e.g. more --steps).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(data: str | None, out: str | None, preset: str | None, config_file: str | None, resume: str | None,
          overwrite: bool, allow_changes: bool, no_progress: bool, compile_: bool | None, **flags: object) -> None:
    """Train a CLIP model on a treeclip dataset DATA (a dir made by `treeclip data`).

    \b
    Examples:
      treeclip train data/synth --out runs/demo --preset cpu-demo
      torchrun --nproc_per_node 2 -m treeclip train data/synth --out runs/ddp --preset cpu-demo
      treeclip train --out runs/demo --resume latest

    A run dir holds one run: a fresh run into a used --out is refused (--overwrite clears
    it), and a resume keeps the run's own settings (--allow-changed-settings to change
    ones that alter the result). A damaged latest checkpoint is passed over for the one
    before it.
    """
    from treeclip.errors import TreeclipError
    from treeclip.train.config import make_config

    if not out:
        raise TreeclipError("--out is required (the run dir)")
    overrides = {k: v for k, v in flags.items() if v is not None and v != ()}
    if compile_ is not None:
        overrides["compile"] = compile_
    if no_progress:
        overrides["progress"] = False
    saved = Path(out) / "config.json"
    if resume and saved.is_file() and not preset and not config_file:
        # resume with the run's own settings; flags given now still win
        base = json.loads(saved.read_text(encoding="utf-8"))
        base.update(overrides)
        if "steps" in overrides:
            base["epochs"] = None
        if "epochs" in overrides:
            base["steps"] = None
        overrides = base
        data = data or base.get("data")
    if not data:
        raise TreeclipError("give the dataset dir DATA")
    overrides.update(data=str(data), out=str(out))
    cfg = make_config(preset=preset, config_file=config_file, **overrides)

    from treeclip.train.loop import train as run

    summary = run(cfg, resume=resume, overwrite=overwrite, allow_changes=allow_changes)
    click.echo(json.dumps(summary))
