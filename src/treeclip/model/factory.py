"""Build open_clip models from configs, and `ClipModel`: a model with its preprocessing,
tokenizer and the encoders every stage uses.

Models are plain open_clip `CLIP` modules built from a config dict (no global registration
in open_clip), so an exported directory loads with `open_clip.create_model_and_transforms
('local-dir:DIR')` and nothing from treeclip.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from treeclip.errors import TreeclipError
from treeclip.model.registry import RESIZE_MODES, get_config

PRECISIONS = ("fp32", "bf16", "fp16")


def build_clip(config: dict, *, precision: str = "fp32") -> torch.nn.Module:
    """An open_clip `CLIP` module with random weights from `{"model_cfg", "preprocess_cfg"}`.

    The global torch RNG decides the initial weights; seed it first for a reproducible model."""
    from open_clip.model import CLIP, CustomTextCLIP, convert_weights_to_lp, get_cast_dtype, set_model_preprocess_cfg

    if precision not in PRECISIONS:
        raise TreeclipError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    model_cfg = copy.deepcopy(config["model_cfg"])
    custom_text = model_cfg.pop("custom_text", False) or "hf_model_name" in model_cfg.get("text_cfg", {})
    cls = CustomTextCLIP if custom_text else CLIP
    model = cls(**model_cfg, cast_dtype=get_cast_dtype(precision))
    if precision != "fp32":
        # open_clip's "pure" low precision: matmul weights cast, LayerNorms compute in fp32
        convert_weights_to_lp(model, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    set_model_preprocess_cfg(model, config["preprocess_cfg"])
    return model


def count_parameters(config: dict) -> int:
    """Parameter count of a config, without allocating its weights (meta device)."""
    with torch.device("meta"):
        model = build_clip(config)
    return sum(p.numel() for p in model.parameters())


def make_tokenizer(config: dict):
    """open_clip's BPE tokenizer at the config's context length (list[str] -> LongTensor)."""
    from open_clip.tokenizer import SimpleTokenizer

    text_cfg = config["model_cfg"].get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        raise TreeclipError("Hugging Face text towers are not supported by treeclip; use a CLIP text tower")
    return SimpleTokenizer(context_length=text_cfg.get("context_length", 77))


def make_transform(config: dict, *, train: bool = False, aug: dict | None = None) -> Callable:
    """The image transform (PIL -> normalised tensor); `train=True` adds open_clip's random
    resized crop (scale 0.9-1.0 unless `aug` says otherwise)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp = dict(config["preprocess_cfg"])
    pp["mean"], pp["std"] = tuple(pp["mean"]), tuple(pp["std"])
    return image_transform_v2(PreprocessCfg(**pp), is_train=train, aug_cfg=aug)


def trim_padding(tokens: torch.Tensor) -> torch.Tensor:
    """Drop the padding columns every row has at its end. Exact for CLIP's causal text
    tower: no token attends to a later position, so trailing padding never changes the
    features read at the end-of-text token."""
    nonpad = (tokens != 0).any(dim=0).nonzero()
    length = int(nonpad[-1]) + 1 if len(nonpad) else 1
    return tokens[:, :length]


def length_groups(lengths: list[int], max_groups: int = 3) -> list[int]:
    """Cut points (lengths) that split captions into at most `max_groups` groups, each
    padded only to its own longest caption: the fewest padded tokens, where a group
    also costs 5% of the unsplit batch's tokens (one more pass through the tower)."""
    n, longest = len(lengths), max(lengths)
    counts = torch.bincount(torch.as_tensor(lengths), minlength=longest + 1).tolist()
    uniq = [length for length in range(longest + 1) if counts[length]]
    below = [0]  # captions no longer than uniq[i]
    for length in uniq:
        below.append(below[-1] + counts[length])
    penalty = 0.05 * n * longest

    def cost(cuts: tuple[int, ...]) -> float:  # cuts: indices into uniq of each group's longest
        total, prev = 0.0, 0
        for c in cuts:
            total += uniq[c] * (below[c + 1] - below[prev]) + penalty
            prev = c + 1
        return total

    last = len(uniq) - 1
    options = [(last,)] + [(i, last) for i in range(last)]
    if max_groups >= 3:
        options += [(i, j, last) for i in range(last) for j in range(i + 1, last)]
    return [uniq[c] for c in min(options, key=cost)]


def encode_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Unnormalised text features of a CLIP model, each caption computed on its own
    length, not the padded context: captions of similar length are encoded together
    (`length_groups`), each group trimmed to its longest. Exact for CLIP's causal text
    tower (no token attends to a later one, so padding never changes the features read
    at the end-of-text token); mixed text types (13-token common names beside 47-token
    taxonomic names) cost about half the text compute of one padded batch.

    Follows open_clip's `CLIP.encode_text` op for op. Other towers fall back to
    `encode_text`."""
    if not hasattr(model, "token_embedding") or getattr(model, "text_pool_type", "argmax") != "argmax":
        return model.encode_text(tokens)
    # argmax pooling: the end-of-text id is the largest id in every caption
    lengths = tokens.argmax(dim=-1) + 1
    cuts = length_groups(lengths.tolist()) if len(tokens) > 1 else [int(lengths.max())]
    if len(cuts) == 1:
        return _encode_trimmed(model, tokens[:, :cuts[0]])
    order = torch.argsort(lengths, stable=True)
    sorted_lengths = lengths[order].tolist()
    parts, lo = [], 0
    for cut in cuts:
        hi = lo
        while hi < len(sorted_lengths) and sorted_lengths[hi] <= cut:
            hi += 1
        parts.append(_encode_trimmed(model, tokens[order[lo:hi], :cut]))
        lo = hi
    return torch.cat(parts)[torch.argsort(order)]


def _encode_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`CLIP.encode_text` on `tokens` cut to their own length (positional embeddings and
    causal mask cut to match)."""
    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


class CompactEmbedding(torch.nn.Module):
    """A token embedding that trains only the rows of the token ids a dataset's captions use.

    Token ids stay those of the full BPE vocabulary everywhere (the stock tokenizer, the
    argmax pooling at the end-of-text id, which must stay the largest id); this module
    maps each id to its row. Ids outside the set read the full matrix's rows, which stay
    as they were (in a full-vocabulary model they get no gradient either). Training then
    touches a (kept ids x width) matrix instead of (49,408 x width): a smaller embedding
    gradient and a smaller optimizer step. Its state dict is the full matrix under the
    stock key, with the trained rows scattered back, so checkpoints and exported model
    dirs are plain open_clip and load into a compact or a full model alike. The full
    matrix and the id map are plain tensors, not buffers, so DistributedDataParallel
    does not broadcast them every step."""

    def __init__(self, full: torch.Tensor, ids: torch.Tensor) -> None:
        super().__init__()
        full = full.detach()
        ids = torch.unique(ids.to(torch.long).cpu())  # sorted
        if len(ids) and (int(ids[0]) < 0 or int(ids[-1]) >= full.shape[0]):
            raise TreeclipError(f"token ids must be in [0, {full.shape[0]}) for a compact vocabulary")
        self.ids = ids.to(full.device)
        self.weight = torch.nn.Parameter(full[self.ids].clone())
        self.base = full.clone()
        rows = torch.full((full.shape[0],), -1, dtype=torch.long)
        rows[ids] = torch.arange(len(ids))
        self.rows = rows.to(full.device)

    @property
    def num_embeddings(self) -> int:
        return int(self.base.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.base.shape[1])

    def _apply(self, fn, recurse: bool = True):  # move the plain tensors with the module
        super()._apply(fn, recurse)
        self.base, self.rows, self.ids = fn(self.base), fn(self.rows), fn(self.ids)
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = self.rows[tokens]
        out = F.embedding(rows.clamp(min=0), self.weight)
        outside = rows < 0
        if bool(outside.any()):  # ids no training caption uses (e.g. words of other templates)
            out = torch.where(outside.unsqueeze(-1), F.embedding(tokens, self.base).to(out.dtype), out)
        return out

    def full_weight(self) -> torch.Tensor:
        """The (vocabulary x width) matrix with the trained rows in place."""
        full = self.base.clone()
        full[self.ids] = self.weight.detach().to(full.dtype)
        return full

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        destination[prefix + "weight"] = self.full_weight()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        full = state_dict[key]
        if tuple(full.shape) != tuple(self.base.shape):
            error_msgs.append(f"size mismatch for {key}: {tuple(full.shape)} in the checkpoint, "
                              f"{tuple(self.base.shape)} in the model")
            return
        with torch.no_grad():
            self.base.copy_(full)
            self.weight.copy_(full.to(self.base.device)[self.ids])


def compact_text_vocabulary(model: torch.nn.Module, token_ids: torch.Tensor) -> torch.nn.Module:
    """Make `model`'s token embedding train only `token_ids` (see `CompactEmbedding`), in
    place, before the optimizer is made. Exact: the same ids give the same embeddings."""
    emb = model.token_embedding
    if isinstance(emb, CompactEmbedding):
        return model
    model.token_embedding = CompactEmbedding(emb.weight, token_ids)
    return model


@dataclass
class ClipModel:
    """An open_clip CLIP model with what it needs to be used: `preprocess` (PIL -> tensor,
    eval transform), `tokenizer` (list[str] -> LongTensor) and its config."""

    model: torch.nn.Module = field(repr=False)
    name: str
    config: dict
    preprocess: Callable = field(repr=False, default=None)
    tokenizer: Callable = field(repr=False, default=None)
    _fingerprint: str | None = field(repr=False, default=None)

    def __post_init__(self) -> None:
        if self.preprocess is None:
            self.preprocess = make_transform(self.config)
        if self.tokenizer is None:
            self.tokenizer = make_tokenizer(self.config)

    def preprocess_for(self, resize: str = "crop") -> Callable:
        """The eval transform with the image resized as `resize` says: `crop` (the model's
        own: shorter side to the input size, then the centre crop) or `squash` (a plain
        resize to the square input size, no crop: what pybioclip does)."""
        if resize not in RESIZE_MODES:
            raise TreeclipError(f"unknown resize {resize!r}; expected one of {', '.join(RESIZE_MODES)}")
        if resize == "crop":
            return self.preprocess
        return make_transform({**self.config, "preprocess_cfg": {**self.config["preprocess_cfg"],
                                                                 "resize_mode": RESIZE_MODES[resize]}})

    # -- shape of the model --------------------------------------------------------
    @property
    def image_size(self) -> int:
        size = self.config["preprocess_cfg"]["size"]
        return size if isinstance(size, int) else size[0]

    @property
    def embed_dim(self) -> int:
        return int(self.config["model_cfg"]["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.config["model_cfg"]["text_cfg"].get("context_length", 77))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype if hasattr(self.model.visual, "conv1") else torch.float32

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def load_weights(self, source, *, hub_dir=None) -> None:
        """Load weights from a file, a model dir, `local-dir:DIR` or `hf-hub:ORG/NAME`
        (the local cache, `hub_dir` searched first) (strict: every weight must fit); the
        fingerprint is recomputed on next use."""
        from treeclip.model.weights import load_state_into

        load_state_into(self.model, source, name=self.name, hub_dir=hub_dir)
        self._fingerprint = None

    def train_transform(self, aug: dict | None = None) -> Callable:
        """The training transform (random resized crop; see `make_transform`)."""
        return make_transform(self.config, train=True, aug=aug)

    # -- identity ------------------------------------------------------------------
    def fingerprint(self, *, refresh: bool = False) -> str:
        """sha256 hex of the config and every weight (name, dtype, shape, bytes); cached,
        `refresh=True` recomputes after the weights changed (training)."""
        if self._fingerprint is None or refresh:
            h = hashlib.sha256()
            h.update(json.dumps(self.config["model_cfg"], sort_keys=True).encode())
            h.update(json.dumps(self.config["preprocess_cfg"], sort_keys=True).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                t = tensor.detach().cpu().contiguous().reshape(-1)
                h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # -- encoders (inference) ------------------------------------------------------
    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 image embeddings of a preprocessed batch (N, 3, H, W)."""
        was_training = self.model.training
        self.model.eval()
        try:
            x = pixels.to(self.device, dtype=self.dtype)
            return F.normalize(self.model.encode_image(x).float(), dim=-1)
        finally:
            self.model.train(was_training)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised float32 text embeddings, `batch_size` captions at a time."""
        was_training = self.model.training
        self.model.eval()
        try:
            out = [torch.empty(0, self.embed_dim)]
            for i in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[i:i + batch_size])).to(self.device)
                out.append(F.normalize(encode_tokens(self.model, tokens).float(), dim=-1).cpu())
            return torch.cat(out)
        finally:
            self.model.train(was_training)

    def logit_scale(self) -> float:
        """exp(logit_scale): the temperature zero-shot logits are multiplied by."""
        return float(self.model.logit_scale.detach().float().exp().item())


def create_model(name: str, *, pretrained: str | None = None, seed: int = 0,
                 precision: str = "fp32", device: str | torch.device = "cpu",
                 hub_dir: str | Path | None = None) -> ClipModel:
    """A registered (or open_clip built-in) architecture, randomly initialised from `seed`,
    or initialised from `pretrained`: a local open_clip checkpoint file (`.safetensors`,
    or `.bin`/`.pt`/`.pth` read with `torch.load(weights_only=True)`), a model dir,
    `local-dir:DIR` or `hf-hub:ORG/NAME` (the local Hugging Face cache, `hub_dir` searched
    first; never downloaded) whose weights fit the architecture. A pretrained source with
    an `open_clip_config.json` must describe the same architecture as `name`."""
    config = get_config(name)
    config.pop("description", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_clip(config, precision=precision)
    clip = ClipModel(model=model, name=name, config=config)
    if pretrained:
        from treeclip.model.weights import architecture_differences

        clip.load_weights(pretrained, hub_dir=hub_dir)  # first: a shape mismatch is the clearer error
        differ = architecture_differences(config["model_cfg"], pretrained, hub_dir=hub_dir)
        if differ:
            raise TreeclipError(f"{pretrained}: its open_clip_config.json is not model {name!r} (differs in "
                                f"{', '.join(differ[:6])}); pick the --model that matches it")
    clip.model.to(device)
    return clip
