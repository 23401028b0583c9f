"""The FLOP counter equals a hand count on the tiny preset, in P1 and P2, and follows the batch shape."""

from __future__ import annotations

import pytest
import torch

from ovis_train.model import ModelConfig, build_model, model_components
from ovis_train.train.flops import FlopCounter, StepShape, batch_shape, peak_tflops, sample_lengths
from ovis_train.train.freeze import FreezeRule, resolve_freeze

P1 = [FreezeRule("vit.blocks.-1", trainable=True), FreezeRule("vit", trainable=False),
      FreezeRule("visual_head", trainable=True), FreezeRule("vet", trainable=True),
      FreezeRule("lm_head", trainable=False), FreezeRule("llm", trainable=False)]
P2 = [FreezeRule(name, trainable=True) for name in ("vit", "visual_head", "vet", "lm_head", "llm")]


@pytest.fixture(scope="module")
def tiny():
    return build_model(ModelConfig(preset="tiny")).model


def counter_for(model, rules) -> FlopCounter:
    resolve_freeze(model, rules, model_components(model), 1e-4, 0.0).apply()
    return FlopCounter(model)


# The tiny preset's shapes, written out (conf: ovis_train/model/presets.py "tiny"):
# ViT: 64 px images, patch 8 -> 8 x 8 = 64 patches per crop, width 32, MLP 64, 2 blocks, 2 heads;
# hidden stride 2 -> 16 visual tokens per crop; K = 256 rows, 5 of them indicators -> 251 visual rows;
# LLM: 2 Llama layers, width 64, MLP 128, 4 heads x 16 = 64 attention width, 2 KV heads (k/v: 64 -> 32);
# vocabulary 518 (the tiny BPE tokenizer + image tokens), lm_head 64 -> 518.
PATCHES, VIT_W, VIT_MLP = 64, 32, 64
VIT_BLOCK = 4 * VIT_W * VIT_W + 3 * VIT_W * VIT_MLP  # q, k, v, out + gate, up, down
PATCH_EMBED = 3 * 8 * 8 * VIT_W  # Conv2d(3, 32, kernel 8, stride 8): one dot product per patch
VISUAL_TOKENS = 16
HEAD = 4 * VIT_W * 251  # head_linear: 2 x 2 merged patches of width 32 -> 251 visual words
VET = 251 * 64
LLM_LAYER = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128
LLM_ATTN_W = 64
LM_HEAD = 64 * 518


def hand_count(phase: str, crops: int, lengths: list[int], logit_positions: int) -> dict[str, float]:
    patches, visual, tokens = crops * PATCHES, crops * VISUAL_TOKENS, sum(lengths)
    vit_attention = 4 * VIT_W * PATCHES**2 * crops  # bidirectional, per crop
    llm_attention = 2 * LLM_ATTN_W * sum(n * n for n in lengths)  # causal: half of 4 w L^2, per sample
    embed = 2 * PATCH_EMBED * patches
    block = 2 * VIT_BLOCK * patches
    head, vet = 2 * HEAD * visual, 2 * VET * visual
    llm = 2 * (2 * LLM_LAYER * tokens)  # two layers' forward
    lm_head = 2 * LM_HEAD * logit_positions
    if phase == "p1":
        # frozen embedding and block 0: forward only; block 1 trains: forward + weight gradients (no input
        # gradients: nothing before it trains) + attention backward (2x its forward)
        vit = embed + block + vit_attention + (block + vit_attention) + block + 2 * vit_attention
        head_vet = 3 * head + 3 * vet  # forward + weight gradients + input gradients (the ViT block trains)
        llm_total = llm + llm + 3 * 2 * llm_attention  # frozen: forward + input gradients; attention 3x
        return {"vit": vit, "head+vet": head_vet, "llm": llm_total, "lm_head": 2 * lm_head}
    # p2: everything trains; the patch embedding gets weight but not input gradients (pixels)
    vit = 2 * embed + 2 * (3 * block + 3 * vit_attention)
    return {"vit": vit, "head+vet": 3 * head + 3 * vet, "llm": 3 * llm + 3 * 2 * llm_attention,
            "lm_head": 3 * lm_head}


@pytest.mark.parametrize("phase", ["p1", "p2"])
def test_count_on_tiny_equals_the_hand_count(tiny, phase):
    counter = counter_for(tiny, P1 if phase == "p1" else P2)
    shape = StepShape(crops=3, lengths=(30, 25, 41), logit_positions=3 * 12)
    assert counter.count(shape) == hand_count(phase, 3, [30, 25, 41], 36)


def test_shape_is_read_from_a_collated_batch_without_padding_credit():
    ids = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    labels = torch.full((2, 6), -100)
    labels[0, 4:] = 7  # the loss keeps columns 3 and 4 (label shifted by one) for both rows
    labels[1, 5] = 7
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": torch.zeros(2, 3, 64, 64)}
    assert batch_shape(batch) == StepShape(crops=2, lengths=(6, 3), logit_positions=2 * 2)
    # packed rows (no attention mask, positions restart at 0 per sample): each sample's own length
    packed = {"input_ids": ids, "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 2, 3]])}
    assert sample_lengths(packed) == (3, 3, 2, 4)


def test_packing_charges_attention_per_sample_not_per_row(tiny):
    counter = counter_for(tiny, P2)
    one_row = counter.count(StepShape(crops=0, lengths=(64,), logit_positions=0))["llm"]
    two_samples = counter.count(StepShape(crops=0, lengths=(32, 32), logit_positions=0))["llm"]
    # same tokens, so the same matmuls; attention (forward + 2x backward) in each of the 2 layers:
    # 2 x 3 x 2 x 64 x (64^2 - 2 x 32^2) less
    assert one_row - two_samples == 2 * 3 * 2 * LLM_ATTN_W * (64**2 - 2 * 32**2)


def test_frozen_everything_before_the_lm_head_runs_no_backward(tiny):
    rules = [FreezeRule("lm_head", trainable=True), FreezeRule("vit", trainable=False),
             FreezeRule("visual_head", trainable=False), FreezeRule("vet", trainable=False)]
    # lm_head is tied to the input embeddings, which sit in "llm": training it trains the LLM's input
    # (the tied check wants one setting for both names: the rest of the LLM is frozen by a rule that skips them)
    tied = FreezeRule(r"re:model\.language_model\.embed_tokens\.weight", trainable=True)
    rest = FreezeRule(r"re:model\.language_model\.(?!embed_tokens\.).*", trainable=False)
    counter = counter_for(tiny, rules + [tied, rest])
    flops = counter.count(StepShape(crops=1, lengths=(20,), logit_positions=5))
    assert flops["vit"] == 2 * PATCH_EMBED * PATCHES + 2 * (2 * VIT_BLOCK * PATCHES + 4 * VIT_W * PATCHES**2)
    assert flops["head+vet"] == 2 * HEAD * VISUAL_TOKENS + 2 * VET * VISUAL_TOKENS


def test_peak_table_and_override():
    assert peak_tflops("cpu") is None
    assert peak_tflops("cpu", override=123.0) == 123.0


def test_timm_backbone_forward_is_counted_by_torch():
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(ModelConfig(preset="tiny", vision="timm")).model
    frozen = [FreezeRule("vit", trainable=False), FreezeRule("visual_head", trainable=True),
              FreezeRule("vet", trainable=True), FreezeRule("lm_head", trainable=False), FreezeRule("llm", trainable=False)]
    counter = counter_for(model, frozen)
    with torch.no_grad(), FlopCounterMode(display=False) as torch_count:
        model.model.vision_tower.transformer(torch.zeros(1, 3, 64, 64))
    # a frozen CNN under nothing trainable: forward only, once per crop
    assert counter.count(StepShape(crops=2, lengths=(10, 10), logit_positions=2))["vit"] == 2 * torch_count.get_total_flops()
    p1 = counter_for(model, P1).count(StepShape(crops=2, lengths=(10, 10), logit_positions=2))["vit"]
    assert p1 > 2 * torch_count.get_total_flops()  # the last stage trains: its weight gradients on top


def test_a_tiny_training_run_logs_the_counted_tflops_and_mfu(tmp_path, tmp_path_factory, monkeypatch, capsys):
    from ovis_train.data import build_stream
    from ovis_train.train.config import compose
    from ovis_train.train.loop import train
    from ovis_train.run import RunDir

    monkeypatch.setenv("OVIS_TRAIN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    cfg = compose(["model=tiny", "phase=p1", "data=synthetic", "logger=none", f"run_dir={tmp_path / 'run'}",
                   "trainer.max_steps=2", "trainer.export=false", "trainer.peak_tflops=0.5"])
    rows = RunDir(train(cfg)).read_metrics()
    assert "tflops=" in capsys.readouterr().err  # the progress bar shows it

    bundle = build_model(cfg.model)  # the same model and first batch, counted here
    counter = counter_for(bundle.model, cfg.phase.rules)
    first = next(iter(build_stream(cfg.data, bundle, 0, 1, "train")))
    assert rows[0]["perf/tflops"] * rows[0]["step_seconds"] * 1e12 == pytest.approx(counter.total([first]), rel=1e-9)
    for row in rows:
        assert row["perf/tflops"] > 0 and row["perf/mfu"] == pytest.approx(row["perf/tflops"] / 0.5)


def test_lora_adapters_get_weight_gradients_the_frozen_base_does_not():
    from peft import LoraConfig, get_peft_model

    model = build_model(ModelConfig(preset="tiny")).model
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=r".*language_model.*(q|k|v|o|gate|up|down)_proj"))
    flops = FlopCounter(lora).count(StepShape(crops=1, lengths=(20, 12), logit_positions=8))
    tokens, attention = 32, 2 * LLM_ATTN_W * (20**2 + 12**2)
    # rank-4 A (in x 4) and B (4 x out) on the 7 projections: 4 x sum(in + out) per layer
    adapters = 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))
    forward = 2 * (LLM_LAYER + adapters) * tokens
    # layer 0: nothing before it trains (peft froze the VET): forward + adapter weight gradients +
    # attention backward; layer 1: the same plus input gradients (layer 0's adapters train)
    layer0 = forward + attention + 2 * adapters * tokens + 2 * attention
    layer1 = layer0 + forward
    assert flops["llm"] == layer0 + layer1
    assert flops["lm_head"] == 2 * (2 * LM_HEAD * 8)  # frozen: forward + input gradients
    assert flops["head+vet"] == 2 * HEAD * VISUAL_TOKENS + 2 * VET * VISUAL_TOKENS  # frozen, nothing upstream
