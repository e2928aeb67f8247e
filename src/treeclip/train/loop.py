"""The training loop: CLIP on taxonomic text, one CPU process to many GPUs on many nodes.

    from treeclip.train import TrainConfig, train
    train(make_config(preset="cpu-demo", data="data/synth", out="runs/demo"))

Outputs in `out`: `config.json`, `metrics.jsonl` (one JSON object per log line),
`checkpoints/step-*/` (for `--resume`), `model/` (the final model, a dir that plain
open_clip loads) and `best/` (the model with the best validation zero-shot accuracy).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from treeclip import fsutil
from treeclip.errors import TreeclipError
from treeclip.runtime.precision import autocast as precision_autocast
from treeclip.runtime.precision import resolve_train_precision
from treeclip.train.config import TrainConfig
from treeclip.train.data import Batch, BatchSampler, Plan, ShardIndex, ShardSamples, make_loader, split_shards
from treeclip.train.distributed import DistInfo, barrier, cleanup, init_distributed
from treeclip.train.loss import clamp_logit_scale, contrastive_loss
from treeclip.train.optim import lr_at, make_optimizer, set_lr
from treeclip.train.state import find_checkpoint, load_checkpoint, save_checkpoint, set_rng_state


class Towers(torch.nn.Module):
    """Both encoders in one module (what DistributedDataParallel wraps): normalised
    image features, normalised features of each distinct caption mapped back to the
    samples, and the log temperature."""

    def __init__(self, clip_model: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip_model

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor, caption_index: torch.Tensor):
        from treeclip.model.factory import encode_tokens

        images = F.normalize(self.clip.encode_image(pixels), dim=-1)
        texts = F.normalize(encode_tokens(self.clip, tokens), dim=-1)[caption_index]
        return images, texts, self.clip.logit_scale


def _to(batch: Batch, device: torch.device) -> Batch:
    nb = device.type == "cuda"
    batch.pixels = batch.pixels.to(device, non_blocking=nb)
    batch.tokens = batch.tokens.to(device, non_blocking=nb)
    batch.caption_index = batch.caption_index.to(device, non_blocking=nb)
    batch.labels = batch.labels.to(device, non_blocking=nb)
    return batch


def train_step(towers: torch.nn.Module, batches: list[Batch], optimizer: torch.optim.Optimizer, *,
               scaler=None, taxon_aware: bool = False, precision: str = "fp32",
               device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """One optimizer step on a global batch given as this rank's micro-batches.

    With several micro-batches (gradient accumulation) the contrastive loss still sees the
    whole batch: features of all micro-batches are first computed without gradients, then
    each micro-batch is recomputed with gradients against the others' cached features
    (exact for models without dropout). The log temperature gets its gradient once."""
    optimizer.zero_grad(set_to_none=True)
    autocast = precision_autocast(precision, device)
    labels = torch.cat([b.labels for b in batches])

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    if len(batches) == 1:
        b = batches[0]
        with autocast:
            images, texts, scale = towers(b.pixels, b.tokens, b.caption_index)
        loss = contrastive_loss(images.float(), texts.float(), scale.float(), labels, taxon_aware=taxon_aware)
        backward(loss)
    else:
        with torch.no_grad(), autocast:
            cached = [towers(b.pixels, b.tokens, b.caption_index)[:2] for b in batches]
        last = len(batches) - 1
        for j, b in enumerate(batches):
            sync = towers.no_sync() if hasattr(towers, "no_sync") and j < last else contextlib.nullcontext()
            with sync:
                with autocast:
                    images, texts, scale = towers(b.pixels, b.tokens, b.caption_index)
                all_images = torch.cat([images if i == j else c[0] for i, c in enumerate(cached)]).float()
                all_texts = torch.cat([texts if i == j else c[1] for i, c in enumerate(cached)]).float()
                if j > 0:  # the temperature's gradient is taken once, at j = 0
                    scale = scale.detach() + 0.0 * scale
                loss = contrastive_loss(all_images, all_texts, scale.float(), labels, taxon_aware=taxon_aware)
                backward(loss)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach()


class MetricsLog:
    """metrics.jsonl: appended line by line; on resume, lines after the resumed step go."""

    def __init__(self, path: Path, *, resume_step: int | None, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            fsutil.write_text_atomic(path, "".join(line + "\n" for line in kept))
        elif resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


class Validator:
    """Validation loss and zero-shot top-1 on the first `n` samples of the val split
    (rank 0 only; captions of text type `text_type`)."""

    def __init__(self, data: str, clip, cfg: TrainConfig) -> None:
        from treeclip.data.dataset import read_taxa

        self.clip, self.cfg = clip, cfg
        self.index = ShardIndex.build(split_shards(data, "val"))
        n = min(cfg.val_samples, len(self.index))
        samples = ShardSamples(self.index, clip.preprocess, draft_size=clip.image_size)
        self.items = [(i, cfg.val_text_type, 0) for i in range(n)]
        self.samples = samples
        self.class_captions = [t.caption(cfg.val_text_type) for t in read_taxa(data)]

    @torch.no_grad()
    def __call__(self, device: torch.device) -> dict[str, float]:
        from treeclip.train.data import Collate

        model = self.clip.model
        model.eval()
        towers = Towers(model)
        collate = Collate(self.clip.tokenizer)
        bs = min(256, max(2, self.cfg.batch_size))
        losses, weights, correct, total = [], [], 0, 0
        classes = self.clip.encode_texts(self.class_captions).to(device)
        for lo in range(0, len(self.items), bs):
            chunk = self.items[lo:lo + bs]
            if len(chunk) < 2:
                break
            batch = _to(collate([self.samples[it] for it in chunk]), device)
            images, texts, scale = towers(batch.pixels, batch.tokens, batch.caption_index)
            losses.append(float(contrastive_loss(images.float(), texts.float(), scale.float(), distributed=False)))
            weights.append(len(chunk))
            pred = (images.float() @ classes.T).argmax(dim=-1)
            correct += int((pred == batch.labels).sum())
            total += len(chunk)
        model.train()
        val_loss = sum(l * w for l, w in zip(losses, weights)) / max(1, sum(weights))
        return {"val_loss": val_loss, "zeroshot_top1": correct / max(1, total), "val_samples": total,
                "val_classes": len(self.class_captions)}


def train(cfg: TrainConfig, *, resume: str | None = None) -> dict[str, Any]:
    """Run (or resume) training as `cfg` says; returns a summary dict. Joins the process
    group when launched by torchrun/srun."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info, resume)
    finally:
        cleanup()


def _train(cfg: TrainConfig, info: DistInfo, resume: str | None) -> dict[str, Any]:
    from treeclip.model import create_model, save_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    device = info.device
    checkpoint = find_checkpoint(out, resume) if resume else None
    if resume and resume != "latest" and checkpoint is None:
        raise TreeclipError(f"{resume}: no checkpoint to resume from")

    torch.manual_seed(cfg.seed)
    clip = create_model(cfg.model, pretrained=cfg.pretrained, seed=cfg.seed)
    model = clip.model.to(device)
    model.train()
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    optimizer = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
    precision = resolve_train_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None

    index = ShardIndex.build(split_shards(cfg.data, "train"))
    plan = Plan(len(index), cfg.batch_size, cfg.seed, world_size=info.world_size, rank=info.rank,
                accum_steps=cfg.accum_steps, text_type=cfg.text_type, text_types=tuple(cfg.text_types))
    total_steps = cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * plan.batches_per_epoch))

    start_step, best = 0, None
    if checkpoint is not None:
        weights, state = load_checkpoint(checkpoint)
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_step = int(state["step"])
        from treeclip.train.state import read_meta

        best = read_meta(checkpoint).get("best")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        fsutil.write_json_atomic(out / "config.json", cfg.as_dict())
    log = MetricsLog(out / "metrics.jsonl", resume_step=start_step if checkpoint else None, enabled=info.is_main)
    if info.is_main and checkpoint is not None:
        print(f"treeclip: resuming {out} at step {start_step} from {checkpoint}", file=sys.stderr)

    towers: torch.nn.Module = Towers(model)
    if info.distributed:
        towers = torch.nn.parallel.DistributedDataParallel(
            towers, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        towers = torch.compile(towers)

    transform = clip.train_transform() if cfg.augment else clip.preprocess
    samples = ShardSamples(index, transform, seed=cfg.seed, augment=cfg.augment, draft_size=clip.image_size)
    loader = make_loader(samples, BatchSampler(plan, start_step, total_steps), clip.tokenizer,
                         workers=cfg.workers, pin_memory=device.type == "cuda")
    validator = None
    if info.is_main and _has_val(cfg.data):
        validator = Validator(cfg.data, clip, cfg)

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
               disable=not (info.is_main and cfg.progress), desc="train")
    batches = iter(loader)
    window = {"t": time.perf_counter(), "samples": 0, "data": 0.0, "compute": 0.0, "loss": 0.0, "n": 0}
    failures, last_val = 0, None
    loss = torch.tensor(float("nan"))
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        micro = [_to(next(batches), device) for _ in range(cfg.accum_steps)]
        t1 = time.perf_counter()
        lr = lr_at(step, base_lr=cfg.lr, warmup=cfg.warmup, total_steps=total_steps, min_lr=cfg.min_lr)
        set_lr(optimizer, lr)
        loss = train_step(towers, micro, optimizer, scaler=scaler, taxon_aware=cfg.loss == "taxon-aware",
                          precision=precision, device=device)
        clamp_logit_scale(model)
        t2 = time.perf_counter()
        failures += sum(b.failures for b in micro)
        done = step + 1
        window["samples"] += cfg.batch_size
        window["data"] += t1 - t0
        window["compute"] += t2 - t1
        window["loss"] += float(loss)
        window["n"] += 1
        if done % cfg.log_every == 0 or done == total_steps:
            elapsed = time.perf_counter() - window["t"]
            record = {"type": "train", "step": done, "samples": done * cfg.batch_size,
                      "epoch": round(done / plan.batches_per_epoch, 4), "loss": _mean_across_ranks(window["loss"] / window["n"]),
                      "lr": lr, "logit_scale": float(model.logit_scale.detach().exp()),
                      "samples_per_s": window["samples"] / elapsed, "data_s": window["data"], "compute_s": window["compute"],
                      "text_type": cfg.text_type, "skipped_samples": failures}
            log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", sps=f"{record['samples_per_s']:.0f}")
            window = {"t": time.perf_counter(), "samples": 0, "data": 0.0, "compute": 0.0, "loss": 0.0, "n": 0}
        bar.update(1)
        if cfg.val_every and done % cfg.val_every == 0 and done != total_steps:
            best, last_val = _validate(validator, device, done, log, out, clip, cfg, best)
        if cfg.save_every and done % cfg.save_every == 0 and done != total_steps:
            _save(out, done, model, optimizer, scaler, cfg, best, info)
    bar.close()
    if start_step < total_steps or last_val is None:
        best, last_val = _validate(validator, device, total_steps, log, out, clip, cfg, best)
    _save(out, total_steps, model, optimizer, scaler, cfg, best, info)
    final_loss = _mean_across_ranks(float(loss))  # every rank's local loss -> the global batch's
    summary = {"steps": total_steps, "samples": total_steps * cfg.batch_size, "final_loss": final_loss,
               "precision": precision,
               "skipped_samples": failures, "model_dir": str(out / "model"), **(last_val or {})}
    if info.is_main:
        clip.name = out.resolve().name
        save_model(clip, out / "model", meta={"architecture": cfg.model, "train": cfg.as_dict(), "summary": summary})
        fsutil.write_json_atomic(out / "summary.json", summary)
    barrier()
    return summary


def _has_val(data: str) -> bool:
    from treeclip.data.dataset import read_manifest

    split = read_manifest(data).get("splits", {}).get("val")
    return bool(split and split.get("shards"))


def _mean_across_ranks(value: float) -> float:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _validate(validator, device, step, log, out, clip, cfg, best):
    """Validate on rank 0 (others wait); keep the best model by zero-shot top-1."""
    result = None
    if validator is not None:
        from treeclip.model import save_model

        result = validator(device)
        log.write({"type": "val", "step": step, **result})
        if best is None or result["zeroshot_top1"] > best["zeroshot_top1"]:
            best = {"step": step, **result}
            clip.name = out.resolve().name
            save_model(clip, out / "best", meta={"architecture": cfg.model, "best": best})
    barrier()
    return best, result


def _save(out, step, model, optimizer, scaler, cfg, best, info) -> None:
    if info.is_main:
        save_checkpoint(out, step, model, optimizer, scaler, meta={"best": best, "config": cfg.as_dict()},
                        keep=cfg.keep_checkpoints)
    barrier()
