"""open_clip's ViT image tower, rewritten for inference with the same weights: the graph
the int8 path exports to ONNX (`runtime.encoder.export_onnx`).

The torch fp32 and bf16 paths run open_clip's own module instead: there this rewrite gained
only 1.02-1.08x at one thread, batch 1 (benchmarks/text_and_vit_paths.py, docs/benchmarks.md),
under the 1.1x that pays for a copy kept in step with open_clip by hand. The export keeps it
for its smaller graph (7% fewer products, no fused attention op that ONNX lacks).

Exact in arithmetic (the same operations; only the rounding of fp32 sums may differ), each
shortcut checked against open_clip by the tests:

- the last block computes the class token only: the pooled output reads nothing else, and
  the other tokens are needed there only as keys and values (saves 10/12 of that block's
  matrix products for every patch token, ~7% of the tower);
- QuickGELU `h * sigmoid(1.702 h)` is one in-place `silu` pass: the 1.702 and its inverse
  are the scale factors of the two MLP products (one pass over the widest activation
  instead of three, and no copy of any weight);
- attention is PyTorch's fused `scaled_dot_product_attention` kernel;
- the patch embedding (a convolution whose stride is its kernel) is one matrix product over
  the flattened patches: in the int8 graph a quantized product instead of ONNX Runtime's
  slow `ConvInteger` (ViT-B-16, one thread: 118 -> 103 ms per image, the same integers).

`fast_visual(visual)` returns the module, or None for towers it does not cover (attention
pooling, layer scale, average pooling, ...), which are then exported as open_clip's module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QUICK_GELU = 1.702


def supports(visual: torch.nn.Module) -> bool:
    """Whether `visual` is a plain open_clip ViT (class-token pooling, standard blocks)."""
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer

    if type(visual) is not VisionTransformer or visual.attn_pool is not None:
        return False
    if visual.pool_type != "tok" or visual.final_ln_after_pool or not isinstance(visual.patch_dropout, torch.nn.Identity):
        return False
    for blk in visual.transformer.resblocks:
        if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
            return False
        if not (isinstance(blk.ls_1, torch.nn.Identity) and isinstance(blk.ls_2, torch.nn.Identity)):
            return False
        if not isinstance(blk.mlp.gelu, (QuickGELU, torch.nn.GELU)) or not blk.attn.batch_first:
            return False
    return visual.transformer.batch_first


class _Block(torch.nn.Module):
    """One residual attention block on copies of open_clip's weights."""

    def __init__(self, blk, class_token_only: bool = False, fold: bool = False) -> None:
        super().__init__()
        from open_clip.transformer import QuickGELU

        self.heads, self.class_token_only = blk.attn.num_heads, class_token_only
        self.ln_1, self.ln_2 = blk.ln_1, blk.ln_2
        fc, proj = blk.mlp.c_fc, blk.mlp.c_proj
        self.quick = isinstance(blk.mlp.gelu, QuickGELU)
        scale = QUICK_GELU if self.quick else 1.0
        d = blk.attn.embed_dim
        in_w, in_b = blk.attn.in_proj_weight.detach(), blk.attn.in_proj_bias.detach()
        # buffers, not attributes: an ONNX export keeps them as weights it can quantize
        # fold: scaled copies of the MLP weights (for an export, whose quantizer wants plain
        # products); else the factors are the products' alpha/beta and nothing is copied
        fc_w, fc_b, proj_w = (fc.weight * scale, fc.bias * scale, proj.weight / scale) if fold else \
            (fc.weight, fc.bias, proj.weight)
        self.scale = 1.0 if fold else scale
        weights = {"out_w": blk.attn.out_proj.weight, "out_b": blk.attn.out_proj.bias,
                   "fc_w": fc_w, "fc_b": fc_b, "proj_w": proj_w, "proj_b": proj.bias}
        if class_token_only:  # the query of the class token alone; keys and values of all
            weights.update(q_w=in_w[:d], q_b=in_b[:d], kv_w=in_w[d:], kv_b=in_b[d:])
        else:
            weights.update(in_w=in_w, in_b=in_b)
        for name, w in weights.items():  # views of the caller's weights unless folded
            self.register_buffer(name, w.detach())

    def _norm(self, ln, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        # QuickGELU(h) = silu(1.702 h) / 1.702
        s, h = self.scale, self._norm(self.ln_2, x).flatten(0, -2)
        h = torch.addmm(self.fc_b, h, self.fc_w.t(), beta=s, alpha=s) if s != 1 else F.linear(h, self.fc_w, self.fc_b)
        h = F.silu(h, inplace=True) if self.quick else F.gelu(h)
        out = torch.addmm(self.proj_b, h, self.proj_w.t(), alpha=1 / s) if s != 1 else F.linear(h, self.proj_w, self.proj_b)
        return out.view_as(x).add_(x)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        n, length, _ = t.shape
        return t.view(n, length, self.heads, t.shape[-1] // self.heads).transpose(1, 2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        a = a.transpose(1, 2).flatten(2)
        return F.linear(a, self.out_w, self.out_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, D) -> (N, L, D); with `class_token_only` (N, 1, D), the class token's row."""
        h = self._norm(self.ln_1, x)
        if not self.class_token_only:
            q, k, v = F.linear(h, self.in_w, self.in_b).chunk(3, dim=-1)
            return self._mlp(x + self._attend(q, k, v))
        k, v = F.linear(h, self.kv_w, self.kv_b).chunk(2, dim=-1)
        q = F.linear(h[:, :1], self.q_w, self.q_b)
        return self._mlp(x[:, :1] + self._attend(q, k, v))


class FastVisual(torch.nn.Module):
    """`visual(pixels)` as open_clip computes it, for a tower that `supports` accepts."""

    def __init__(self, visual: torch.nn.Module, *, fold: bool = False) -> None:
        super().__init__()
        self.conv1, self.ln_pre, self.ln_post = visual.conv1, visual.ln_pre, visual.ln_post
        self.register_buffer("class_embedding", visual.class_embedding.detach())
        self.register_buffer("positional_embedding", visual.positional_embedding.detach())
        self.register_buffer("proj", visual.proj.detach() if visual.proj is not None else None)
        blocks = visual.transformer.resblocks
        self.blocks = torch.nn.ModuleList(_Block(b, class_token_only=i == len(blocks) - 1, fold=fold)
                                          for i, b in enumerate(blocks))

    def _patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, patches, width): the patch embedding as one product where
        the patches do not overlap, else open_clip's convolution."""
        conv, (h, w) = self.conv1, pixels.shape[-2:]
        p, q = conv.kernel_size
        if (conv.stride, conv.dilation, conv.groups) != ((p, q), (1, 1), 1) or conv.padding not in ((0, 0), "valid") \
                or h % p or w % q:
            return conv(pixels).flatten(2).transpose(1, 2)
        x = pixels.unflatten(3, (w // q, q)).unflatten(2, (h // p, p))  # (N, C, rows, p, columns, q)
        x = x.permute(0, 2, 4, 1, 3, 5).flatten(1, 2).flatten(2)  # (N, patches, C*p*q), conv1's weight order
        return F.linear(x, conv.weight.flatten(1), conv.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self._patches(pixels)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = F.layer_norm(x, self.ln_pre.normalized_shape, self.ln_pre.weight, self.ln_pre.bias, self.ln_pre.eps)
        for blk in self.blocks:
            x = blk(x)
        pooled = x[:, 0]
        pooled = F.layer_norm(pooled, self.ln_post.normalized_shape, self.ln_post.weight, self.ln_post.bias,
                              self.ln_post.eps)
        return pooled @ self.proj if self.proj is not None else pooled


def fast_visual(visual: torch.nn.Module, *, fold: bool = False) -> FastVisual | None:
    """The inference rewrite of `visual` (sharing its weights; `fold=True` for an export:
    scaled copies of the MLP weights), or None where `supports` says no."""
    return FastVisual(visual, fold=fold) if supports(visual) else None
