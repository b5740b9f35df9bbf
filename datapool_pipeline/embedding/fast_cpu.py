"""The fast CPU path for open_clip image towers (the torch runtimes of runtimes.py build on it).

`nn.MultiheadAttention` is replaced by one fused QKV `Linear` + `scaled_dot_product_attention` (same
maths, fewer copies), and the last block of a class-token ViT runs for that token only. `quantize_int8`
turns every `Linear` into a dynamic int8 one (the `int8` runtime). Which runtime is fastest on which CPU,
and by how much, is measured in benchmarks/bench_embedding.py (docs/performance.md, Embedding).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


class FusedSelfAttention(nn.Module):
    """Drop-in for `nn.MultiheadAttention`: self-attention runs fused (no attention weights returned);
    cross-attention (query is not key) is delegated to the original module unchanged."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        d = mha.embed_dim
        self.heads = mha.num_heads
        self.batch_first = mha.batch_first
        self.qkv = nn.Linear(d, 3 * d, bias=mha.in_proj_bias is not None)
        self.qkv.weight = mha.in_proj_weight  # shared with `original`, not copied
        if mha.in_proj_bias is not None:
            self.qkv.bias = mha.in_proj_bias
        self.original = mha  # cross-attention (query is not key, e.g. attentional pooling) uses it as is
        self.out = nn.Linear(d, d, bias=mha.out_proj.bias is not None)
        self.out.weight = mha.out_proj.weight
        if mha.out_proj.bias is not None:
            self.out.bias = mha.out_proj.bias

    def forward(
        self, query: torch.Tensor, key: object = None, value: object = None, need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            return self.original(query, key, value, need_weights=need_weights, attn_mask=attn_mask)
        x = query if self.batch_first else query.transpose(0, 1)
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        o = self.out(o.transpose(1, 2).reshape(b, n, d))
        return (o if self.batch_first else o.transpose(0, 1)), None


class ClassTokenLastBlock(nn.Module):
    """The last residual block of a ViT pooled by its class token, computed for that token only.

    Keys and values still come from every token, but the attention output projection, LayerNorm 2
    and the MLP run on one token instead of all (49 of 50 for ViT-B-32: ~6% of the tower's FLOPs).
    The class token's output is the same computation as in the full block; other tokens are dropped.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        blk = self.block
        attn: FusedSelfAttention = blk.attn
        h = blk.ln_1(x)
        b, n, d = h.shape
        qkv = attn.qkv(h).reshape(b, n, 3, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0][:, :, :1], qkv[1], qkv[2])
        y = x[:, :1] + blk.ls_1(attn.out(o.transpose(1, 2).reshape(b, 1, d)))
        return y + blk.ls_2(blk.mlp(blk.ln_2(y)))


def class_token_only_last_block(visual: nn.Module) -> bool:
    """Use ClassTokenLastBlock when `visual` is an open_clip VisionTransformer whose output is its
    class token (no attentional pooling, no token outputs) and the last block is a plain one."""
    transformer = getattr(visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if (
        blocks is None or len(blocks) == 0
        or getattr(visual, "pool_type", None) != "tok"
        or getattr(visual, "attn_pool", None) is not None
        or getattr(visual, "output_tokens", True)
        or not getattr(transformer, "batch_first", False)
    ):
        return False
    last = blocks[-1]
    if type(last).__name__ != "ResidualAttentionBlock" or hasattr(last, "ln_1_kv"):
        return False
    if not isinstance(getattr(last, "attn", None), FusedSelfAttention):
        return False
    blocks[-1] = ClassTokenLastBlock(last)
    return True


def fuse_attention(module: nn.Module) -> int:
    """Replace self-attention modules in place; returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MultiheadAttention) and child._qkv_same_embed_dim and child.bias_k is None:
            setattr(module, name, FusedSelfAttention(child))
            replaced += 1
        else:
            replaced += fuse_attention(child)
    return replaced


def quantize_int8(module: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every Linear (weights per tensor, activations per batch)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=False)


def optimize_visual_for_cpu(visual: nn.Module, precision: str = "fp32") -> nn.Module:
    """The image tower prepared for CPU inference at `precision` (fp32 stays numerically fp32)."""
    visual = visual.eval()
    fuse_attention(visual)
    class_token_only_last_block(visual)
    if precision == "int8":
        visual = quantize_int8(visual)
    return visual


def set_cpu_threads() -> None:
    """Use every core the process may use (runtimes.cpu_threads: affinity and a container's CPU quota);
    torch's default can be lower inside containers, or higher than the quota."""
    from datapool_pipeline.embedding.runtimes import cpu_threads

    cores = cpu_threads()
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
