"""Training configuration: defaults, then a named preset, then a TOML file, then flags.

Presets are TOML files in `presets/` (`bioclip`: the paper's recipe; `cpu-demo`: a tiny
model on 2 CPU cores). Every field can be set in a config file or by a flag.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treeclip.errors import TreeclipError
from treeclip.runtime.precision import TRAIN_PRECISIONS
from treeclip.taxonomy.taxon import MIXED_TEXT_TYPES

PRESET_DIR = Path(__file__).with_name("presets")
LOSSES = ("clip", "taxon-aware")
OBJECTIVES = ("clip", "ce", "hier-ce")
TRACKERS = ("tensorboard", "wandb")


@dataclass
class TrainConfig:
    """Everything a run needs; `batch_size` is the GLOBAL batch of one optimizer step,
    split over processes and accumulation steps, so a recipe means the same thing on any
    number of machines."""

    data: str = ""
    extra_data: tuple[str, ...] = ()   # more training datasets, taxa merged (train.sources)
    data_weights: tuple[float, ...] = ()   # one per source (data, then extra_data): share = size x weight
    replay_data: str | None = None     # experience replay: webdataset of jpg + txt pairs (train.replay)
    replay_ratio: float = 0.25         # share of each global batch drawn from replay_data
    replay_loss_weight: float = 1.0    # weight of the replay contrastive loss
    out: str = ""
    model: str = "tiny-vit-64"
    pretrained: str | None = None      # init weights: file, model dir, local-dir:DIR or hf-hub:ORG/NAME (local cache)
    hub_dir: str | None = None         # hub folder searched first for hf-hub: (else $TREECLIP_HF_HUB)
    # partial fine-tuning, open_clip_train's flags (open_clip's lock_image_tower/lock_text_tower)
    lock_image: bool = False           # freeze the image tower...
    lock_image_unlocked_groups: int = 0   # ...but its last N layer groups
    lock_image_freeze_bn_stats: bool = False  # also freeze BatchNorm running stats (timm towers; a ViT has none)
    lock_text: bool = False            # freeze the text tower...
    lock_text_unlocked_layers: int = 0    # ...but its last N layer groups
    lock_text_freeze_layer_norm: bool = True  # LayerNorms of locked layers frozen too (open_clip's default;
                                              # its built-in text tower supports only this)
    # LoRA through peft (train/lora.py): base weights frozen, adapters (+ logit_scale) train, merged on export
    lora_rank: int = 0                 # 0: off
    lora_alpha: float | None = None    # None: 2 * lora_rank
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("in_proj_weight", "c_fc", "c_proj")  # module or weight names (peft's matching)
    seed: int = 0
    batch_size: int = 256
    accum_steps: int = 1
    steps: int | None = None           # optimizer steps; or
    epochs: float | None = None        # passes over the training split
    lr: float = 1e-4
    min_lr: float = 0.0
    warmup: int = 1000
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    text_type: str = "mixed"           # mixed (per batch) | mixed-sample | a fixed text type
    text_types: tuple[str, ...] = MIXED_TEXT_TYPES
    objective: str = "clip"            # clip | ce | hier-ce (classification baselines, see train.classifier)
    loss: str = "clip"                 # clip | taxon-aware (the contrastive loss of the clip objective)
    precision: str = "fp32"            # fp32 | bf16 | fp16 | auto (autocast; fp16 with a scaler on GPU)
    grad_checkpointing: bool = False
    compile: bool = False
    augment: bool = False              # open_clip's random resized crop (0.9-1.0)
    dataset_resampled: bool = False    # shards drawn with replacement (open_clip_train's --dataset-resampled)
    compact_vocab: bool = False        # train only the token-embedding rows the captions use (saved full)
    cache_images: bool = False         # decode + resize training images once, keep them in memory
    workers: int = 1
    threads: int | None = None         # torch CPU threads per process
    device: str = "auto"               # auto | cpu | cuda
    save_every: int = 500
    keep_checkpoints: int = 2
    val_every: int = 0                 # 0: validate only at the end (if there is a val split)
    val_samples: int = 1000
    val_text_type: str = "taxon_com"   # BioCLIP is queried with taxon + common name
    log_every: int = 10
    label_set: bool = True             # write taxa.parquet + txt_emb_species.{npy,json} into model/ and best/
    progress: bool = True
    report_to: tuple[str, ...] = ()    # trackers fed the metrics.jsonl records: tensorboard, wandb (offline)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"], d["text_types"], d["report_to"] = list(self.betas), list(self.text_types), list(self.report_to)
        d["extra_data"], d["data_weights"] = list(self.extra_data), list(self.data_weights)
        d["lora_targets"] = list(self.lora_targets)
        return d

    def validate(self) -> "TrainConfig":
        if self.objective not in OBJECTIVES:
            raise TreeclipError(f"unknown objective {self.objective!r}; expected {', '.join(OBJECTIVES)}")
        if self.loss not in LOSSES:
            raise TreeclipError(f"unknown loss {self.loss!r}; expected {', '.join(LOSSES)}")
        if self.precision not in TRAIN_PRECISIONS:
            raise TreeclipError(f"unknown precision {self.precision!r}; expected one of {', '.join(TRAIN_PRECISIONS)}")
        if (self.steps is None) == (self.epochs is None):
            raise TreeclipError("give the run length as exactly one of steps or epochs")
        if self.batch_size < 2 or self.accum_steps < 1:
            raise TreeclipError("batch size must be >= 2 and accumulation steps >= 1")
        self._validate_locks()
        self._validate_sources()
        self._validate_lora()
        unknown = [t for t in self.report_to if t not in TRACKERS]
        if unknown:
            raise TreeclipError(f"--report-to: unknown tracker {unknown[0]!r}; expected {', '.join(TRACKERS)}")
        return self

    def _validate_locks(self) -> None:
        """The lock options: counts >= 0, and a tower's sub-options only with its lock."""
        for flag, value in (("--lock-image-unlocked-groups", self.lock_image_unlocked_groups),
                            ("--lock-text-unlocked-layers", self.lock_text_unlocked_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TreeclipError(f"{flag}: expected a count >= 0, got {value!r}")
        if not self.lock_image and (self.lock_image_unlocked_groups or self.lock_image_freeze_bn_stats):
            raise TreeclipError("--lock-image-unlocked-groups / --lock-image-freeze-bn-stats need --lock-image")
        if not self.lock_text and self.lock_text_unlocked_layers:
            raise TreeclipError("--lock-text-unlocked-layers needs --lock-text")


    def _validate_sources(self) -> None:
        """Weighted sources and experience replay: what they can be combined with."""
        n = 1 + len(self.extra_data)
        if self.data_weights and len(self.data_weights) != n:
            raise TreeclipError(f"--data-weights: {len(self.data_weights)} weight(s) for {n} data source(s)")
        if any(not w > 0 for w in self.data_weights):
            raise TreeclipError("--data-weights: every weight must be > 0")
        if self.extra_data and self.objective != "clip":
            raise TreeclipError(f"--extra-data works with the clip objective only (the {self.objective} heads "
                                "are sized for one dataset's taxa)")
        if self.extra_data and self.dataset_resampled:
            raise TreeclipError("--extra-data draws samples with replacement already; drop --dataset-resampled")
        if not self.replay_data:
            return
        if not 0 < self.replay_ratio < 1:
            raise TreeclipError(f"--replay-ratio: expected a share in (0, 1), got {self.replay_ratio}")
        if self.replay_loss_weight < 0:
            raise TreeclipError("--replay-loss-weight must be >= 0")
        for bad, why in ((self.objective != "clip", f"the {self.objective} objective"),
                         (self.accum_steps > 1, "--accum"), (self.compact_vocab, "--compact-vocab")):
            if bad:
                raise TreeclipError(f"--replay-data does not work with {why}")

    def _validate_lora(self) -> None:
        """The LoRA options: a rank >= 0, and the others only with a rank."""
        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 0:
            raise TreeclipError(f"--lora-rank: expected a rank >= 0 (0 = off), got {self.lora_rank!r}")
        if not self.lora_rank:
            if self.lora_alpha is not None or self.lora_dropout or \
                    tuple(self.lora_targets) != TrainConfig.lora_targets:
                raise TreeclipError("--lora-alpha / --lora-dropout / --lora-targets need --lora-rank > 0")
            return
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise TreeclipError(f"--lora-alpha: expected a number > 0, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TreeclipError(f"--lora-dropout: expected a probability in [0, 1), got {self.lora_dropout!r}")
        if not self.lora_targets or not all(isinstance(t, str) and t for t in self.lora_targets):
            raise TreeclipError("--lora-targets: expected comma-separated module or weight names")
        if self.objective != "clip":
            raise TreeclipError(f"--lora-rank: LoRA trains the CLIP objective only, not --objective {self.objective}")
        if self.replay_data:  # replay's second projection reads the tower around peft's wrappers: not tried
            raise TreeclipError("--lora-rank does not work with --replay-data yet")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise TreeclipError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise TreeclipError(f"{path}: not valid TOML ({err})") from None


def load_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise TreeclipError(f"unknown preset {name!r}; presets: {', '.join(list_presets())}")
    return read_toml(path)


def make_config(*, preset: str | None = None, config_file: str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults <- preset <- config file <- overrides (None values are ignored).
    A preset may also be named in the config file (`preset = "cpu-demo"`)."""
    from_file = read_toml(config_file) if config_file else {}
    preset = preset or from_file.pop("preset", None)
    values: dict[str, Any] = {}
    if preset:
        values.update(load_preset(preset))
    values.update(from_file)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "steps" in overrides and overrides["steps"] is not None:
        values.pop("epochs", None)
    if "epochs" in overrides and overrides["epochs"] is not None:
        values.pop("steps", None)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = config_file or f"preset {preset}"
        raise TreeclipError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    if isinstance(values.get("report_to"), str):  # "tensorboard,wandb" (open_clip_train's spelling)
        values["report_to"] = [t for t in values["report_to"].split(",") if t]
    if isinstance(values.get("data_weights"), str):  # "1,4"
        try:
            values["data_weights"] = [float(w) for w in values["data_weights"].split(",") if w.strip()]
        except ValueError:
            raise TreeclipError(f"--data-weights: expected numbers like 1,4, got {values['data_weights']!r}") from None
    if isinstance(values.get("lora_targets"), str):  # "in_proj_weight,c_fc"
        values["lora_targets"] = [t.strip() for t in values["lora_targets"].split(",") if t.strip()]
    for key in ("betas", "text_types", "report_to", "extra_data", "data_weights", "lora_targets"):
        if key in values:
            values[key] = tuple(values[key])
    return TrainConfig(**values).validate()
