"""Validation during training: contrastive loss and zero-shot top-1 on the `val` split."""

from __future__ import annotations

from pathlib import Path

import torch

from treeclip.train.config import TrainConfig
from treeclip.train.data import Collate, ShardIndex, ShardSamples, split_shards
from treeclip.train.loss import contrastive_loss
from treeclip.train.step import Towers, to_device


def has_val_split(data: str | Path) -> bool:
    """Whether the dataset dir has a `val` split with shards."""
    from treeclip.data.dataset import read_manifest

    split = read_manifest(data).get("splits", {}).get("val")
    return bool(split and split.get("shards"))


class Validator:
    """Validation loss and zero-shot top-1 on the first `n` samples of the val split
    (rank 0 only; captions of text type `text_type`). With a `classifier` (a
    classification objective): its cross-entropy and species top-1 instead. `score`
    names the result that picks the best model."""

    def __init__(self, data: str, clip, cfg: TrainConfig, classifier=None) -> None:
        from treeclip.data.dataset import read_taxa

        self.clip, self.cfg, self.classifier = clip, cfg, classifier
        self.score = "zeroshot_top1" if classifier is None else "top1"
        self.index = ShardIndex.build(split_shards(data, "val"))
        n = min(cfg.val_samples, len(self.index))
        self.samples = ShardSamples(self.index, clip.preprocess, draft_size=clip.image_size)
        self.items = [(i, cfg.val_text_type, 0) for i in range(n)]
        self.class_captions = [t.caption(cfg.val_text_type) for t in read_taxa(data)]

    def _batches(self, device: torch.device):
        collate = Collate(self.clip.tokenizer)
        bs = min(256, max(2, self.cfg.batch_size))
        for lo in range(0, len(self.items), bs):
            chunk = self.items[lo:lo + bs]
            if len(chunk) < 2:
                break
            yield to_device(collate([self.samples[it] for it in chunk]), device)

    @torch.no_grad()
    def __call__(self, device: torch.device) -> dict[str, float]:
        if self.classifier is not None:
            from treeclip.train.classifier import classifier_validation

            return {**classifier_validation(self.classifier, self._batches(device)),
                    "val_classes": len(self.class_captions)}
        model = self.clip.model
        model.eval()
        towers = Towers(model)
        losses, weights, correct, total = [], [], 0, 0
        classes = self.clip.encode_texts(self.class_captions).to(device)
        for batch in self._batches(device):
            images, texts, scale = towers(batch.pixels, batch.tokens, batch.caption_index)
            losses.append(float(contrastive_loss(images.float(), texts.float(), scale.float(), distributed=False)))
            weights.append(len(batch))
            pred = (images.float() @ classes.T).argmax(dim=-1)
            correct += int((pred == batch.labels).sum())
            total += len(batch)
        model.train()
        val_loss = sum(l * w for l, w in zip(losses, weights)) / max(1, sum(weights))
        return {"val_loss": val_loss, "zeroshot_top1": correct / max(1, total), "val_samples": total,
                "val_classes": len(self.class_captions)}
