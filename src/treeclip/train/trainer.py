"""The `Trainer`: one training run as an object with explicit state.

    trainer = Trainer(cfg, info)          # model, optimizer, scaler, data plan
    trainer.resume(checkpoint)            # optional: weights, optimizer, RNG, step, best
    summary = trainer.run()               # loader, validator, the steps, the final model

What a run has done is `trainer.progress` (a `Progress`): the step, the best validation,
skipped samples, the last loss. Everything else is fixed by the config. The order of the
calls matters for exactness: the RNG state a checkpoint restores is the one the data
loader's workers are seeded from when `run` starts iterating.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from treeclip import fsutil
from treeclip.cache import CachePaths
from treeclip.model.factory import compact_text_vocabulary
from treeclip.runtime.precision import resolve_train_precision
from treeclip.train.classifier import OBJECTIVE_RANKS, ImageClassifier, RankHeads
from treeclip.train.config import TrainConfig
from treeclip.train.data import (Batch, BatchSampler, Plan, ShardIndex, ShardSamples, caption_token_ids, make_loader,
                                 split_shards)
from treeclip.log import get_logger, progress_bar
from treeclip.runtime.distributed import DistInfo, barrier
from treeclip.train.locks import check_trainable, lock_towers
from treeclip.train.loss import clamp_logit_scale
from treeclip.train.metrics import MetricsLog, ThroughputWindow, mean_across_ranks
from treeclip.train.optim import lr_at, make_optimizer, set_lr
from treeclip.train.replay import REPLAY_SEED, ReplaySamples, replay_batch_size, replay_projection, replay_shards
from treeclip.train.runs import run_identity
from treeclip.train.sources import Sources
from treeclip.train.state import load_checkpoint, read_meta, save_checkpoint, set_rng_state
from treeclip.train.step import Towers, to_device, train_step
from treeclip.train.order import TEXT_MODES, mix_seed
from treeclip.train.tracking import make_sinks
from treeclip.train.validate import Validator, has_val_split

log = get_logger(__name__)


@dataclass
class Progress:
    """What a run has done so far (all a checkpoint adds to the config, besides weights,
    optimizer and RNG states)."""

    step: int = 0                       # optimizer steps done
    best: dict | None = None            # the best validation so far: {"step", "zeroshot_top1", ...}
    last_val: dict | None = None        # the latest validation result
    skipped_samples: int = 0            # samples replaced because they could not be read
    loss: torch.Tensor = field(default_factory=lambda: torch.tensor(float("nan")))
    resumed_from: Path | None = None


class Trainer:
    """Set up on construction (model, optimizer, scaler, data plan); `resume`, then `run`.
    `step`, `validate`, `save` and `log_train` are the pieces `run` is made of."""

    def __init__(self, cfg: TrainConfig, info: DistInfo) -> None:
        from treeclip.model import create_model

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.info, self.device = cfg, info, info.device
        self.out = Path(cfg.out)
        self.progress = Progress()
        # several weighted training datasets (their taxa merged), or one
        self.sources = Sources.open([cfg.data, *cfg.extra_data], cfg.data_weights) if cfg.extra_data else None
        torch.manual_seed(cfg.seed)
        self.clip = create_model(cfg.model, pretrained=cfg.pretrained, seed=cfg.seed,
                                 hub_dir=CachePaths.default(hub=cfg.hub_dir).hub)
        self.model = self.clip.model.to(self.device)
        self.model.train()
        if cfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        # what the optimizer and checkpoints hold: the CLIP model, or its image tower and the
        # rank heads of a classification objective (the paper's objective ablation)
        self.classifier: ImageClassifier | None = None
        self.trained: torch.nn.Module = self.model
        if cfg.objective != "clip":
            from treeclip.data.dataset import read_taxa

            heads = RankHeads(self.clip.embed_dim, read_taxa(cfg.data), OBJECTIVE_RANKS[cfg.objective])
            self.classifier = self.trained = ImageClassifier(self.model, heads).to(self.device)
        elif cfg.compact_vocab:  # before the optimizer: it holds the compact rows
            compact_text_vocabulary(self.model, torch.unique(torch.cat(
                [caption_token_ids(d, self.clip.tokenizer) for d in [cfg.data, *cfg.extra_data]])))
        lock_towers(self.model, cfg)  # after the compact vocabulary (it is locked with the text tower), before the optimizer
        self.peft = None  # the peft.PeftModel around self.model with --lora-rank (adapters injected in place)
        if cfg.lora_rank:
            from treeclip.train.lora import apply_lora

            self.peft = apply_lora(self.model, cfg)  # after the locks: a locked tower gets no adapters
        check_trainable(self.trained)
        self.optimizer = make_optimizer(self.trained, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                        eps=cfg.eps)
        # experience replay: a second visual projection, trained beside the model, not exported
        self.replay_proj = replay_projection(self.model) if cfg.replay_data else None
        if self.replay_proj is not None:
            self.optimizer.add_param_group({"params": [self.replay_proj], "weight_decay": cfg.weight_decay})
        self.precision = resolve_train_precision(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" and self.device.type == "cuda" else None
        self.index = self.sources.index if self.sources else ShardIndex.build(split_shards(cfg.data, "train"))
        replay_n = replay_batch_size(cfg.batch_size, cfg.replay_ratio, info.world_size) if cfg.replay_data else 0
        self.replay_plan = self._replay_plan(replay_n) if replay_n else None
        self.plan = Plan(len(self.index), cfg.batch_size - replay_n, cfg.seed, world_size=info.world_size, rank=info.rank,
                         accum_steps=cfg.accum_steps, text_type=cfg.text_type, text_types=tuple(cfg.text_types),
                         shard_of=self.index.shard if cfg.dataset_resampled else None,
                         weights=self.sources.probabilities if self.sources else None)
        self.total_steps = (cfg.steps if cfg.steps is not None
                            else max(1, math.ceil(cfg.epochs * self.plan.batches_per_epoch)))
        # replaced when the run starts: the towers wrapped (DDP, compile) after a resume has
        # loaded the weights, the log cut back to the resumed step, the validator on rank 0
        self.towers: torch.nn.Module = (Towers(self.model, self.replay_proj) if self.classifier is None
                                        else self.classifier)
        self.replay_batches: Iterator[Batch] | None = None
        self.metrics = MetricsLog(self.out / "metrics.jsonl", resume_step=None, enabled=False)
        self.validator: Validator | None = None

    def _replay_plan(self, n: int) -> Plan:
        """The order of the replay samples: `n` of them per global batch, a function of (seed, step)."""
        self.replay_index = ShardIndex.build(replay_shards(self.cfg.replay_data))
        log.info(f"experience replay: {n} of {self.cfg.batch_size} samples per batch from "
                 f"{len(self.replay_index)} image-caption pairs")
        return Plan(len(self.replay_index), n, mix_seed(self.cfg.seed, REPLAY_SEED),
                    world_size=self.info.world_size, rank=self.info.rank)

    # -- resume --------------------------------------------------------------------------

    def resume(self, checkpoint: Path) -> None:
        """Continue from `checkpoint` (a `checkpoints/step-*` dir): weights, optimizer,
        gradient scaler, RNG states, the step and the best validation so far."""
        weights, state = load_checkpoint(checkpoint)
        self.trained.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.progress.step = int(state["step"])
        if self.replay_proj is not None:
            self._resume_replay(state, checkpoint)
        meta = read_meta(checkpoint)
        self.progress.best = meta.get("best")
        self.progress.loss = torch.tensor(float(meta.get("loss", float("nan"))))
        self.progress.resumed_from = checkpoint

    def _resume_replay(self, state: dict[str, Any], checkpoint: Path) -> None:
        """The replay projection and replay position of a checkpoint."""
        from treeclip.errors import TreeclipError

        if "replay_proj" not in state or int(state.get("replay_step", -1)) != self.progress.step:
            raise TreeclipError(f"{checkpoint}: no experience replay state (was the run started without --replay-data?)")
        with torch.no_grad():
            self.replay_proj.copy_(state["replay_proj"])

    # -- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train from the current step to the last, validating and checkpointing as the
        config says; then the final validation, checkpoint and model. Returns the summary."""
        cfg = self.cfg
        batches = self._start()
        bar = progress_bar(self.total_steps, initial=self.progress.step, unit="step", desc="train",
                           enabled=self.info.is_main and cfg.progress)
        window = ThroughputWindow()
        for _ in range(self.progress.step, self.total_steps):
            t0 = time.perf_counter()
            micro = [to_device(next(batches), self.device) for _ in range(cfg.accum_steps)]
            replay = to_device(next(self.replay_batches), self.device) if self.replay_batches is not None else None
            t1 = time.perf_counter()
            if cfg.text_type in TEXT_MODES:  # what the mixing drew, for the trackers
                window.add_text_types(self.progress.step + 1, self.plan.text_types_for(self.progress.step))
            lr = self.step(micro, replay)
            window.add(cfg.batch_size, t1 - t0, time.perf_counter() - t1, float(self.progress.loss))
            done = self.progress.step
            if done % cfg.log_every == 0 or done == self.total_steps:
                record = self.log_train(window, lr)
                bar.set_postfix(loss=f"{record['loss']:.3f}", sps=f"{record['samples_per_s']:.0f}")
                window = ThroughputWindow()
            bar.update(1)
            if cfg.val_every and done % cfg.val_every == 0 and done != self.total_steps:
                self.validate(done)
            if cfg.save_every and done % cfg.save_every == 0 and done != self.total_steps:
                self.save(done)
        bar.close()
        return self.finish()

    def _start(self) -> Iterator[Batch]:
        """The run dir (config.json, metrics.jsonl cut back to the resumed step), the
        towers, the validator and the batches from the current step on."""
        cfg, info, resumed = self.cfg, self.info, self.progress.resumed_from
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            run_identity(self.out, cfg.as_dict()).write()
        resume_step = self.progress.step if resumed else None
        sinks = make_sinks(cfg.report_to, self.out, resume_step=resume_step, text_types=cfg.text_types,
                           config=cfg.as_dict()) if info.is_main else []
        self.metrics = MetricsLog(self.out / "metrics.jsonl", resume_step=resume_step, enabled=info.is_main,
                                  sinks=sinks)
        if info.is_main and resumed is not None:
            log.info(f"resuming {self.out} at step {self.progress.step} from {resumed}")
        if info.distributed:
            self.towers = torch.nn.parallel.DistributedDataParallel(
                self.towers, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.towers = torch.compile(self.towers)
        transform = self.clip.train_transform() if cfg.augment else self.clip.preprocess
        samples = ShardSamples(self.index, transform, seed=cfg.seed, augment=cfg.augment,
                               draft_size=self.clip.image_size, cache_images=cfg.cache_images,
                               relabel=self.sources.relabel if self.sources else None)
        loader = make_loader(samples, BatchSampler(self.plan, self.progress.step, self.total_steps),
                             self.clip.tokenizer, workers=cfg.workers, pin_memory=self.device.type == "cuda")
        if self.replay_plan is not None:
            replay = ReplaySamples(self.replay_index, self.clip.preprocess, draft_size=self.clip.image_size)
            self.replay_batches = iter(make_loader(
                replay, BatchSampler(self.replay_plan, self.progress.step, self.total_steps), self.clip.tokenizer,
                workers=cfg.workers, pin_memory=self.device.type == "cuda"))
        if info.is_main and has_val_split(cfg.data):
            self.validator = Validator(cfg.data, self.clip, cfg, classifier=self.classifier)
        return iter(loader)

    def step(self, micro: list[Batch], replay: Batch | None = None) -> float:
        """One optimizer step on this rank's micro-batches of the next global batch (and
        its replay samples, with experience replay); returns the learning rate it used."""
        cfg = self.cfg
        lr = lr_at(self.progress.step, base_lr=cfg.lr, warmup=cfg.warmup, total_steps=self.total_steps,
                   min_lr=cfg.min_lr)
        set_lr(self.optimizer, lr)
        with self._dropout_rng():
            self.progress.loss = train_step(self.towers, micro, self.optimizer, scaler=self.scaler,
                                            taxon_aware=cfg.loss == "taxon-aware", precision=self.precision,
                                            device=self.device, classifier=self.classifier is not None,
                                            replay=replay, replay_weight=cfg.replay_loss_weight)
        clamp_logit_scale(self.model if self.classifier is None else self.classifier.heads)
        self.progress.skipped_samples += sum(b.failures for b in micro)
        self.progress.step += 1
        return lr

    def _dropout_rng(self):
        """LoRA dropout draws from an RNG seeded by (seed, step, rank), forked so the
        global stream is untouched: a resumed run drops out the same units even though
        its loader has drawn from the global RNG at another point."""
        import contextlib

        if not self.cfg.lora_dropout:
            return contextlib.nullcontext()
        cuda = [self.device] if self.device.type == "cuda" else []
        ctx = torch.random.fork_rng(devices=cuda, device_type="cuda" if cuda else "cpu")
        seed = (self.cfg.seed * 1_000_003 + self.progress.step) * 4099 + self.info.rank

        @contextlib.contextmanager
        def seeded():
            with ctx:
                torch.manual_seed(seed)
                yield
        return seeded()

    def log_train(self, window: ThroughputWindow, lr: float) -> dict[str, Any]:
        """Write the train line of the steps in `window` (the loss averaged over ranks:
        every rank must call this)."""
        done = self.progress.step
        samples_per_s = window.samples_per_s()
        record = {"type": "train", "step": done, "samples": done * self.cfg.batch_size,
                  "epoch": round(done / self.plan.batches_per_epoch, 4), "loss": mean_across_ranks(window.mean_loss),
                  "lr": lr, "logit_scale": float(self.model.logit_scale.detach().exp()),
                  "samples_per_s": samples_per_s, "data_s": window.data_s, "compute_s": window.compute_s,
                  "text_type": self.cfg.text_type, "skipped_samples": self.progress.skipped_samples,
                  **window.text_type_fields(self.cfg.text_types)}
        self.metrics.write(record)
        return record

    def validate(self, step: int) -> dict | None:
        """Validate on rank 0 (others wait); keep the best model by the validator's score
        (zero-shot top-1, or a classifier's top-1) in
        `OUT/best/`. Returns the result (None without a val split, and on other ranks)."""
        result = None
        if self.validator is not None:
            result = self.validator(self.device)
            self.metrics.write({"type": "val", "step": step, **result})
            best, score = self.progress.best, self.validator.score
            if best is None or result[score] > best[score]:
                self.progress.best = {"step": step, **result}
                self._save_model(self.out / "best", {"architecture": self.cfg.model, "best": self.progress.best})
        barrier()
        self.progress.last_val = result
        return result

    def save(self, step: int) -> None:
        """Checkpoint `step` on rank 0 (others wait), keeping the newest `keep_checkpoints`."""
        if self.info.is_main:
            save_checkpoint(self.out, step, self.trained, self.optimizer, self.scaler,
                            meta={"best": self.progress.best, "config": self.cfg.as_dict(),
                                  "loss": float(self.progress.loss)},
                            keep=self.cfg.keep_checkpoints, extra=self._replay_state(step))
            self.metrics.flush()  # the trackers hold what the checkpoint does
        barrier()

    def _replay_state(self, step: int) -> dict[str, Any] | None:
        """What a checkpoint holds of experience replay: the projection and the replay
        position (the step: the replay order is a function of (seed, step))."""
        if self.replay_proj is None:
            return None
        return {"replay_proj": self.replay_proj.detach().to("cpu").clone(), "replay_step": step}

    def finish(self) -> dict[str, Any]:
        """The final validation and checkpoint, `OUT/model/` and `OUT/summary.json`."""
        self.validate(self.total_steps)
        self.save(self.total_steps)
        final_loss = mean_across_ranks(float(self.progress.loss))  # every rank's local loss -> the global batch's
        summary = {"steps": self.total_steps, "samples": self.total_steps * self.cfg.batch_size,
                   "final_loss": final_loss, "precision": self.precision,
                   "skipped_samples": self.progress.skipped_samples, "model_dir": str(self.out / "model"),
                   **(self.progress.last_val or {})}
        if self.info.is_main:
            self._save_model(self.out / "model",
                             {"architecture": self.cfg.model, "train": self.cfg.as_dict(), "summary": summary})
            if self.cfg.label_set and self.classifier is None:
                self._write_label_sets()
            fsutil.write_json_atomic(self.out / "summary.json", summary)
        self.metrics.close()
        barrier()
        return summary

    def _save_model(self, out: Path, meta: dict) -> None:
        """A model dir of the current weights (with the classifier heads of a
        classification objective)."""
        from treeclip.model import save_model

        self.clip.name = self.out.resolve().name
        if self.peft is not None:  # the LoRA merged into a plain open_clip model, the adapter beside it
            from dataclasses import replace

            from treeclip.train.lora import merged_copy, save_adapter

            merged = replace(self.clip, model=merged_copy(self.peft), _fingerprint=None)
            save_model(merged, out, meta={**meta, "objective": self.cfg.objective, "lora": "merged; adapter in lora/"})
            save_adapter(self.peft, out)
            return
        save_model(self.clip, out, meta={**meta, "objective": self.cfg.objective})
        if self.classifier is not None:
            from treeclip.model.heads import save_heads

            heads = self.classifier.heads
            save_heads(out, heads.export_state(), objective=self.cfg.objective, ranks=heads.ranks,
                       classes=heads.classes)

    def _write_label_sets(self) -> None:
        """The training taxa and their label embeddings in `model/` and `best/` (once, at
        the end: a best model found mid-run is not encoded for every new best)."""
        from treeclip.model import load_model
        from treeclip.runtime.labelsets import write_model_labels

        write_model_labels(self.clip, self.out / "model", self.cfg.data, progress=self.cfg.progress)
        best = self.out / "best"
        if (best / "open_clip_model.safetensors").is_file():
            write_model_labels(load_model(str(best)), best, self.cfg.data, progress=self.cfg.progress)
