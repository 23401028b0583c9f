"""The visual path (head -> LayerNorm -> softmax -> pad indicators -> probs @ VET), optionally chunked
over tokens with recomputation in backward.

Why: the plain path keeps several `[tokens, K]` tensors alive until backward (the head output, the
fp32 LayerNorm output, the fp32 probabilities, the padded copy and its cast to the table dtype). With
K = 65536 and 4,096 visual tokens each one is 1 GiB in fp32, several times the size of the head and
the VET themselves. Chunked (`ChunkedVisualPath`, a custom autograd Function), forward keeps only its
inputs; backward recomputes one chunk's head + LayerNorm + softmax at a time, writes the gradients
by hand and accumulates the parameter gradients in place, so at most one chunk's `[chunk, K]`
tensors and one set of parameter gradients exist. Cost: one more head matmul per token (7 instead
of 6 matmuls of the head/VET size). Outputs and gradients equal the plain path's
(tests/test_model_chunked_visual.py).

    embeddings = visual_embeddings(features, tower.head_linear, tower.head_norm, table.weight,
                                   n_indicators, chunk_size=1024)   # chunk_size=None: plain path

The chunked path computes LayerNorm and softmax in fp32 (as Ovis2.5 and ovis-train's default
`softmax_fp32` do) whatever the parameter dtype, and casts the probabilities to the table dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def _plain(features: torch.Tensor, head_linear: nn.Module, head_norm: nn.Module, table: torch.Tensor,
           n_indicators: int) -> torch.Tensor:
    """transformers' Ovis2 softmax tokenizer + VET, op for op (the softmax runs in the dtype the norm
    returns: fp32 with ovis-train's Float32LayerNorm)."""
    probs = torch.softmax(head_norm(head_linear(features)), dim=-1)
    # indicator columns get probability 0: visual tokens never put mass on them
    probs = nn.functional.pad(probs, (0, n_indicators))
    return probs.to(table.dtype) @ table


def _head(x, weight, norm_weight, norm_bias, eps):
    """One chunk: (probs, logits, mean, rstd) of softmax(LayerNorm(x @ weight.T)), LayerNorm and softmax
    in fp32, with the same ATen kernels autograd uses on the plain path."""
    logits = (x @ weight.t()).float()
    normalised, mean, rstd = torch.native_layer_norm(logits, logits.shape[-1:], norm_weight.float(),
                                                     norm_bias.float(), eps)
    return torch.softmax(normalised, dim=-1), logits, mean, rstd


def _accumulate(buffer: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """buffer += a @ b, in place when the dtypes allow (no parameter-sized temporary)."""
    if a.dtype == buffer.dtype:
        buffer.addmm_(a, b)
    else:  # bf16 autocast with fp32 parameters: accumulate in the parameter's precision
        buffer.add_(a @ b)


class ChunkedVisualPath(torch.autograd.Function):
    """out = softmax(LayerNorm(x @ W.T)) @ table[:K - n_ind], chunk by chunk; backward recomputes.
    `mm_dtype`: the dtype of the matmuls (the autocast dtype under autocast, else the parameters')."""

    @staticmethod
    def forward(ctx, x, weight, norm_weight, norm_bias, table, eps: float, n_indicators: int, chunk_size: int,
                mm_dtype: torch.dtype, observe):
        ctx.save_for_backward(x, weight, norm_weight, norm_bias, table)
        ctx.eps, ctx.chunk_size, ctx.mm_dtype = eps, chunk_size, mm_dtype
        with torch.autocast(x.device.type, enabled=False):
            x_mm, weight_mm = x.to(mm_dtype), weight.to(mm_dtype)
            # the padded indicator columns would only add exact zeros: multiply by the visual rows alone
            visual_rows = table[: weight.shape[0]].to(mm_dtype)
            out = x.new_empty(x.shape[0], table.shape[1], dtype=mm_dtype)
            for start in range(0, x.shape[0], chunk_size):
                probs = _head(x_mm[start: start + chunk_size], weight_mm, norm_weight, norm_bias, eps)[0]
                if observe is not None:
                    observe(probs)
                torch.matmul(probs.to(mm_dtype), visual_rows, out=out[start: start + chunk_size])
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return ChunkedVisualPath._backward(ctx, grad_out) + (None,) * 5

    @staticmethod
    def _backward(ctx, grad_out):
        x, weight, norm_weight, norm_bias, table = ctx.saved_tensors
        needs, mm_dtype, n_visual = ctx.needs_input_grad, ctx.mm_dtype, weight.shape[0]
        x_mm, weight_mm, visual_rows = x.to(mm_dtype), weight.to(mm_dtype), table[:n_visual].to(mm_dtype)
        grad_out, gamma = grad_out.to(mm_dtype), norm_weight.float()
        # parameter gradients are accumulated in place: no per-chunk parameter-sized temporaries
        grad_x = torch.empty_like(x) if needs[0] else None
        grad_weight = torch.zeros_like(weight) if needs[1] else None
        grad_gamma = torch.zeros_like(gamma) if needs[2] else None
        grad_beta = torch.zeros_like(gamma) if needs[3] else None
        grad_table = torch.zeros_like(table) if needs[4] else None
        norm_mask = [any(needs[:2]), needs[2], needs[3]]  # which LayerNorm gradients to compute
        for start in range(0, x.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            x_chunk, grad_chunk = x_mm[rows], grad_out[rows]
            probs, logits, mean, rstd = _head(x_chunk, weight_mm, norm_weight, norm_bias, ctx.eps)
            if grad_table is not None:
                _accumulate(grad_table[:n_visual], probs.to(mm_dtype).t(), grad_chunk)
            if not any(norm_mask):
                continue
            grad_probs = (grad_chunk @ visual_rows.t()).float()
            grad_normalised = torch._softmax_backward_data(grad_probs, probs, -1, torch.float32)
            del probs, grad_probs
            grad_logits, chunk_gamma, chunk_beta = torch.ops.aten.native_layer_norm_backward(
                grad_normalised, logits, logits.shape[-1:], mean, rstd, gamma, norm_bias.float(), norm_mask)
            del grad_normalised, logits
            if grad_gamma is not None:
                grad_gamma += chunk_gamma
            if grad_beta is not None:
                grad_beta += chunk_beta
            if grad_logits is None:
                continue
            grad_logits = grad_logits.to(mm_dtype)
            if grad_x is not None:
                grad_x[rows] = grad_logits @ weight_mm
            if grad_weight is not None:
                _accumulate(grad_weight, grad_logits.t(), x_chunk)
        as_param = lambda grad, param: None if grad is None else grad.to(param.dtype)  # noqa: E731
        return grad_x, grad_weight, as_param(grad_gamma, norm_weight), as_param(grad_beta, norm_bias), grad_table


def visual_embeddings(features: torch.Tensor, head_linear: nn.Linear, head_norm: nn.LayerNorm, table: torch.Tensor,
                      n_indicators: int, chunk_size: int | None = None,
                      observe: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Merged ViT features `[..., D]` -> visual embeddings `[..., H]`. `table` is the VET weight `[K, H]`
    (the last `n_indicators` rows are indicator rows). `chunk_size`: tokens per chunk, None = plain.
    `observe(probs)`: called with the fp32 probabilities `[tokens, K - n_indicators]` (per chunk when
    chunked; no grad), e.g. for visual-vocabulary statistics."""
    if chunk_size is None:
        if observe is None:
            return _plain(features, head_linear, head_norm, table, n_indicators)
        probs = torch.softmax(head_norm(head_linear(features)), dim=-1)
        observe(probs.detach().reshape(-1, probs.shape[-1]))
        return nn.functional.pad(probs, (0, n_indicators)).to(table.dtype) @ table
    if chunk_size < 1:
        raise ValueError(f"model.visual_chunk_size={chunk_size}: must be a positive number of tokens (or null)")
    if head_linear.bias is not None or head_norm.weight is None or head_norm.bias is None:
        raise ValueError("the chunked visual path expects Ovis's head: Linear without bias, LayerNorm with affine")
    flat = features.reshape(-1, features.shape[-1])
    device_type = features.device.type
    mm_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else table.dtype
    out = ChunkedVisualPath.apply(flat, head_linear.weight, head_norm.weight, head_norm.bias, table,
                                  head_norm.eps, n_indicators, chunk_size, mm_dtype, observe)
    return out.reshape(*features.shape[:-1], table.shape[-1])


def merge_hidden_stride(hidden: torch.Tensor, stride: int) -> torch.Tensor:
    """[n, L, D] ViT features -> [n, L / s^2, D * s^2] (transformers' Ovis2 merge, zero-padding a grid
    side that the stride does not divide)."""
    if stride <= 1:
        return hidden
    n, length, dim = hidden.shape
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError("Token sequence length must be a perfect square")
    pad = (stride - side % stride) % stride
    hidden = nn.functional.pad(hidden, (0, 0, 0, pad, 0, pad))
    side += pad
    hidden = hidden.reshape(n, side // stride, stride, side // stride, stride, dim).permute(0, 1, 3, 2, 4, 5)
    return hidden.reshape(n, -1, stride * stride * dim)


def chunked_image_features(model, pixel_values: torch.Tensor, chunk_size: int):
    """What `Ovis2Model.get_image_features` returns (VET embeddings as `pooler_output`, the indicator
    rows as `visual_indicator_features`), with the visual path chunked. The softmax probabilities are
    never materialised whole and the vision tower's forward (and its hooks) does not run: whoever
    wants the probabilities sets `model.vision_tower.visual_probs_observer = fn(probs_chunk)`.
    Parameters are read directly, not through module calls: not for ZeRO-3 / FSDP-sharded towers."""
    from transformers.models.ovis2.modeling_ovis2 import BaseModelOutputWithVisualIndicatorFeatures

    tower, table = model.vision_tower, model.visual_embeddings_table
    merged = merge_hidden_stride(tower.transformer(pixel_values)[0], tower.config.hidden_stride)
    n_indicators = tower.num_visual_indicator_tokens
    embeddings = visual_embeddings(merged, tower.head_linear, tower.head_norm, table.weight, n_indicators, chunk_size,
                                   observe=getattr(tower, "visual_probs_observer", None))
    indicator_ids = torch.arange(table.num_embeddings - n_indicators, table.num_embeddings, device=table.weight.device)
    return BaseModelOutputWithVisualIndicatorFeatures(
        last_hidden_state=merged, pooler_output=embeddings, visual_indicator_features=table(indicator_ids))
