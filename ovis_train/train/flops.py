"""Model FLOPs of a training step, and the hardware peak they are compared with (MFU).

Contract: ``FlopCounter(model)`` reads the model's shapes and which parameters train (build it after
the freeze plan is applied, before any wrapper shards the weights); ``counter.count(shape)`` returns
the FLOPs of one forward + backward over a batch of that shape, per component ("vit", "head+vet",
"llm", "lm_head"). ``batch_shape(batch)`` reads the shape from a collated batch. Imports torch only,
so benchmarks can use it on machines without the training stack.

What is counted (model FLOPs, as in PaLM / nanoGPT MFU, not hardware FLOPs):
- matmuls only: 2 x in x out per token for every Linear (and for the ViT's patch embedding); norms,
  activations, softmax and embedding look-ups are left out;
- attention: 4 x width x L^2 per layer and sample (QK^T and AV), bidirectional in the ViT (L =
  patches of one crop), causal in the LLM, where it counts half (2 x width x L^2). L is each
  sample's own length, so padding is not credited and packed samples are not charged for each other;
- backward: weight gradients (1x the forward) only for weights that train (LoRA: the adapters only);
  input gradients (1x) of a layer's matmuls where anything before that layer trains (a frozen LLM
  under a trained VET still runs its whole backward for input gradients; a frozen ViT under nothing
  trainable runs none; the first trained layer's own internal input gradients are left out, so the
  count errs low, never high); the attention product's backward (2x its forward) wherever gradients
  pass through it;
- recomputation is not credited: activation checkpointing and the chunked VET path cost more
  hardware FLOPs for the same model FLOPs;
- visual head + VET per visual token: head 2 x in x (K - indicators), VET 2 x (K - indicators) x
  hidden (the indicator rows are looked up, not multiplied);
- lm_head only at the positions whose logits the loss computes (the trainer's ``logits_to_keep``).
Timm (CNN) backbones are counted by running one crop through torch's FlopCounterMode once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

IGNORE_INDEX = -100

# Dense bf16 peak TFLOP/s (no sparsity) by device-name fragment; the first match wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (names like "NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)


def peak_tflops(device: torch.device | str | None = None, override: float | None = None) -> float | None:
    """The dense bf16 peak of ``device`` in TFLOP/s: ``override`` if given, else the table above;
    None for CPUs and unknown GPUs (then no MFU is reported)."""
    if override:
        return float(override)
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_BF16_TFLOPS if fragment in name), None)


def perf_metrics(flops: float, seconds: float, peak: float | None) -> dict:
    """``perf/tflops`` (this device's model TFLOP/s over the step) and, given a peak, ``perf/mfu``."""
    tflops = flops / seconds / 1e12
    return {"perf/tflops": tflops, **({"perf/mfu": tflops / peak} if peak else {})}


@dataclass(frozen=True)
class StepShape:
    """What one batch asks of the model."""

    crops: int  # images (crops) through the vision tower
    lengths: tuple[int, ...]  # tokens of each sample (no padding; packed samples each on their own)
    logit_positions: int  # positions whose logits are computed (rows x kept columns)

    def __add__(self, other: StepShape) -> StepShape:
        return StepShape(self.crops + other.crops, self.lengths + other.lengths,
                         self.logit_positions + other.logit_positions)


def sample_lengths(batch: dict) -> tuple[int, ...]:
    """Per-sample token counts: from ``position_ids`` restarting at 0 in packed rows (each restart
    starts a sample), else from the attention mask's rows."""
    if "position_ids" in batch and "attention_mask" not in batch:
        lengths = []
        for row in batch["position_ids"].tolist():
            starts = [i for i, p in enumerate(row) if p == 0] + [len(row)]
            lengths += [b - a for a, b in zip(starts, starts[1:])]
        return tuple(lengths)
    if "attention_mask" in batch:
        return tuple(int(n) for n in batch["attention_mask"].sum(1).tolist())
    return (batch["input_ids"].shape[1],) * batch["input_ids"].shape[0]


def batch_shape(batch: dict) -> StepShape:
    pixels = batch.get("pixel_values")
    crops = 0 if pixels is None else int(pixels.shape[0])
    targets = batch["labels"][:, 1:]
    kept_columns = int((targets != IGNORE_INDEX).any(0).sum())  # the loss's logits_to_keep
    return StepShape(crops, sample_lengths(batch), kept_columns * targets.shape[0])


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


class _Stack:
    """A sequence of layers over the same tokens: per layer its matmul weights (in x out) in total and
    of the trainable ones, and whether the layer trains."""

    def __init__(self, layers: Sequence[nn.Module]):
        self.weights = [sum(m.in_features * m.out_features for m in _linears(layer)) for layer in layers]
        self.trained_weights = [sum(m.in_features * m.out_features for m in _linears(layer) if m.weight.requires_grad)
                                for layer in layers]
        self.trains = [_trains(layer) for layer in layers]

    def train_flops(self, tokens: float, attention_forward: float, upstream: bool) -> tuple[float, bool]:
        """Forward + backward FLOPs of the stack, and whether anything up to its output trains."""
        total = 0.0
        for weights, trained, trains in zip(self.weights, self.trained_weights, self.trains):
            forward = 2 * weights * tokens
            total += forward + attention_forward
            total += 2 * trained * tokens  # weight gradients
            if upstream:
                total += forward  # input gradients
            if upstream or trains:
                total += 2 * attention_forward
            upstream = upstream or trains
        return total, upstream


class FlopCounter:
    """Model FLOPs of training steps of ``model`` (an ``OvisModel``); see the module docstring."""

    def __init__(self, model: nn.Module):
        model = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
        config, vision = model.config, model.config.vision_config
        tower = model.model.vision_tower
        extractor = tower.transformer
        blocks = extractor.blocks() if hasattr(extractor, "blocks") else list(extractor.encoder.layers)
        self.patches = (vision.image_size // vision.patch_size) ** 2  # per crop
        self.visual_tokens = self.patches // vision.hidden_stride**2  # per crop, after the merge
        in_blocks = {id(m) for block in blocks for m in block.modules()}
        outside = [m for m in extractor.modules() if id(m) not in in_blocks]  # patch embedding, norms
        self.embedding_trains = any(p.requires_grad for m in outside for p in m.parameters(recurse=False))
        self.vit_trains = _trains(extractor)
        self.block_trains = [_trains(block) for block in blocks]
        if getattr(extractor, "spec", {}).get("kind") == "timm":
            self.vit = None
            self.timm_block_flops, self.timm_other_flops = _timm_forward_flops(extractor, blocks, vision.image_size)
        else:
            self.vit = _Stack(blocks)
            # the patch embedding: a Conv2d with stride = kernel (one dot product per patch) or a Linear
            patch = [m for m in outside if isinstance(m, (nn.Conv2d, nn.Linear))]
            self.patch_weights = sum(m.weight.numel() for m in patch)
            self.patch_trained = sum(m.weight.numel() for m in patch if m.weight.requires_grad)
            vit_config = getattr(getattr(extractor, "model", None), "config", vision)
            self.vit_attention_width = vit_config.hidden_size

        head = [m for name, m in tower.named_modules() if isinstance(m, nn.Linear) and not name.startswith("transformer")]
        self.head_weights = sum(m.in_features * m.out_features for m in head)
        self.head_trained = sum(m.in_features * m.out_features for m in head if m.weight.requires_grad)
        head_params = [p for name, p in tower.named_parameters() if not name.startswith("transformer")]
        self.head_trains = any(p.requires_grad for p in head_params)
        table = model.model.visual_embeddings_table
        self.vet_rows = vision.vocab_size - vision.num_visual_indicator_tokens
        self.vet_width = table.weight.shape[1]
        self.vet_trains = table.weight.requires_grad

        text = config.text_config
        language = model.model.language_model
        self.llm = _Stack(language.layers)
        self.llm_other_trains = any(p.requires_grad for name, p in language.named_parameters() if not name.startswith("layers."))
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.llm_attention_width = text.num_attention_heads * head_dim
        self.lm_head_weights = model.lm_head.in_features * model.lm_head.out_features
        self.lm_head_trains = model.lm_head.weight.requires_grad

    def count(self, shape: StepShape) -> dict[str, float]:
        """FLOPs of one forward + backward over a batch of ``shape``, per component."""
        flops = {}
        patches = shape.crops * self.patches
        if self.vit is not None:
            upstream = self.embedding_trains
            embedding = 2 * self.patch_weights * patches + 2 * self.patch_trained * patches
            attention = 4 * self.vit_attention_width * self.patches**2 * shape.crops  # bidirectional, per crop
            blocks, upstream = self.vit.train_flops(patches, attention, upstream)
            flops["vit"] = embedding + blocks
        else:  # timm (CNN): forward measured per crop; the same backward rules, block by block
            upstream = self.embedding_trains
            total = self.timm_other_flops * shape.crops * (1 + self.embedding_trains)
            for forward, trains in zip(self.timm_block_flops, self.block_trains):
                total += forward * shape.crops * (1 + upstream + trains)
                upstream = upstream or trains
            flops["vit"] = total
        upstream = upstream or self.vit_trains

        tokens = shape.crops * self.visual_tokens
        head = 2 * self.head_weights * tokens
        vet = 2 * self.vet_rows * self.vet_width * tokens
        total = head + 2 * self.head_trained * tokens + (head if upstream else 0)
        upstream = upstream or self.head_trains
        total += vet + (vet if self.vet_trains else 0) + (vet if upstream else 0)
        flops["head+vet"] = total
        upstream = upstream or self.vet_trains or self.llm_other_trains

        attention = 2 * self.llm_attention_width * sum(n * n for n in shape.lengths)  # causal: half of 4 w L^2
        flops["llm"], upstream = self.llm.train_flops(sum(shape.lengths), attention, upstream)
        lm_head = 2 * self.lm_head_weights * shape.logit_positions
        flops["lm_head"] = lm_head * (1 + upstream + self.lm_head_trains)
        return flops

    def total(self, batches: Sequence[dict]) -> float:
        """FLOPs of one optimizer step over these micro-batches."""
        return sum(sum(self.count(batch_shape(b)).values()) for b in batches)


def _timm_forward_flops(extractor: nn.Module, blocks: list[nn.Module], image_size: int) -> tuple[list[float], float]:
    """Forward FLOPs of one crop per block (and outside the blocks), counted by torch on one zero image."""
    from torch.utils.flop_counter import FlopCounterMode

    parameter = next(extractor.parameters())
    per_block, hooks = [0.0] * len(blocks), []
    with FlopCounterMode(display=False) as counter:
        def before(index):
            return lambda module, args: per_block.__setitem__(index, -counter.get_total_flops())

        def after(index):
            return lambda module, args, output: per_block.__setitem__(index, per_block[index] + counter.get_total_flops())

        for i, block in enumerate(blocks):
            hooks += [block.register_forward_pre_hook(before(i)), block.register_forward_hook(after(i))]
        was_training = extractor.training
        extractor.eval()
        try:
            with torch.no_grad():
                extractor(torch.zeros(1, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype))
        finally:
            extractor.train(was_training)
            for hook in hooks:
                hook.remove()
        total = float(counter.get_total_flops())
    return per_block, total - sum(per_block)
