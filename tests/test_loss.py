"""The contrastive losses on hand-built features with known values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from treeclip.train.loss import LOGIT_SCALE_MAX, clamp_logit_scale, contrastive_loss


def _log(x: float) -> torch.Tensor:
    return torch.tensor(math.log(x))


def test_orthogonal_pairs_have_the_closed_form_loss():
    # two orthogonal pairs, scale s: each row is softmax([s, 0]) -> loss = log(1 + e^-s)
    feats = torch.eye(2)
    for s in (1.0, 10.0):
        loss = contrastive_loss(feats, feats, _log(s))
        assert loss.item() == pytest.approx(math.log(1 + math.exp(-s)), rel=1e-3)


def test_hand_computed_three_pairs():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    sims = img @ txt.T  # rows: [1,0,0], [0,1,1], [.6,.8,.8]
    row = [-1 + math.log(math.e + 2), -1 + math.log(1 + 2 * math.e), -0.8 + math.log(math.exp(.6) + 2 * math.exp(.8))]
    col_logits = sims.T  # columns of the image-text matrix
    col = [-(col_logits[i, i].item()) + math.log(sum(math.exp(v) for v in col_logits[i].tolist())) for i in range(3)]
    expected = (sum(row) / 3 + sum(col) / 3) / 2
    assert contrastive_loss(img, txt, _log(1.0)).item() == pytest.approx(expected, rel=1e-6)


def test_plain_loss_is_open_clips_clip_loss_bit_for_bit():
    """On one process the plain loss is open_clip's `ClipLoss(local_loss=True,
    gather_with_grad=True)` (given exp of the log temperature): the same value and the
    same gradients, to the bit."""
    from open_clip.loss import ClipLoss

    from treeclip.train.loss import ContrastiveLoss

    assert issubclass(ContrastiveLoss, ClipLoss)
    g = torch.Generator().manual_seed(0)
    raw_img, raw_txt = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    results = []
    for loss_fn in (lambda i, t, s: contrastive_loss(i, t, s),
                    lambda i, t, s: ClipLoss(local_loss=True, gather_with_grad=True)(i, t, s.exp())):
        img, txt = raw_img.clone().requires_grad_(True), raw_txt.clone().requires_grad_(True)
        scale = torch.tensor(2.3, requires_grad=True)
        loss = loss_fn(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), scale)
        loss.backward()
        results.append((loss.detach(), img.grad, txt.grad, scale.grad))
    for ours, theirs in zip(*results):
        assert torch.equal(ours, theirs)


def test_taxon_aware_does_not_count_same_taxon_pairs_as_negatives():
    # samples 0 and 1 are one taxon with the same caption: the plain loss cannot go below
    # log 2 for them, the taxon-aware loss goes to 0 as the scale grows
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    txt = img.clone()
    labels = torch.tensor([7, 7, 3])
    scale = _log(100.0)
    plain = contrastive_loss(img, txt, scale)
    aware = contrastive_loss(img, txt, scale, labels, taxon_aware=True)
    assert plain.item() == pytest.approx(2 / 3 * math.log(2), rel=1e-3)
    assert aware.item() == pytest.approx(0.0, abs=1e-6)
    # with all-distinct labels the two losses are the same
    distinct = torch.tensor([0, 1, 2])
    feats = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert contrastive_loss(feats, feats.flip(0), scale, distinct, taxon_aware=True).item() == pytest.approx(
        contrastive_loss(feats, feats.flip(0), scale).item(), rel=1e-6)
    with pytest.raises(ValueError):
        contrastive_loss(img, txt, scale, taxon_aware=True)


def test_logit_scale_gradient_and_clamp():
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    feats = torch.eye(3)
    contrastive_loss(feats, feats, scale).backward()
    assert scale.grad is not None and scale.grad.item() < 0  # perfect alignment: sharpen

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logit_scale = torch.nn.Parameter(torch.tensor(7.0))

    holder = Holder()
    clamp_logit_scale(holder)
    assert holder.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)
