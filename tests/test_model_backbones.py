"""Vision backbones (native, SigLIP, SigLIP2, CLIP, timm) and pretrained parts composed into a fresh model."""

import pytest
import torch
from PIL import Image
from transformers import Aimv2VisionConfig, Aimv2VisionModel, AutoConfig, AutoModelForCausalLM

from ovis_train.model import ModelConfig, build_model, load_model, model_components
from ovis_train.model.tokens import build_tiny_tokenizer


def noise_image(seed, size=64):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy())


# tiny shapes: ViTs use patch 8; timm's test_efficientnet has stride 32
@pytest.mark.parametrize(
    "vision, image_size, hidden_stride, expected_tokens",
    [
        ("native", 64, 2, 16),  # 8x8 patches -> 4x4
        ("native", 48, 2, 9),  # 6x6 patches -> 3x3
        ("siglip", 64, 2, 16),
        ("siglip2", 64, 1, 64),
        ("clip", 64, 2, 16),  # CLS dropped: 8x8 patches -> 4x4
        ("timm", 64, 1, 4),  # 2x2 feature map
        ("timm", 96, 1, 9),  # 3x3 feature map
    ],
)
def test_backbone_yields_expected_visual_tokens_and_round_trips(vision, image_size, hidden_stride, expected_tokens, tmp_path):
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(preset="tiny", vision=vision, image_size=image_size, hidden_stride=hidden_stride))
    assert bundle.processor.image_seq_length == expected_tokens
    inputs = bundle.processor(text=["<image>\nDescription: a", "two <image><image>"],
                              images=[noise_image(1), noise_image(2), noise_image(3)], return_tensors="pt", padding=True)
    assert inputs["pixel_values"].shape == (3, 3, image_size, image_size)
    with torch.no_grad():
        out = bundle.model.eval()(**inputs)
    assert out.image_outputs.pooler_output.shape[:2] == (3, expected_tokens)
    groups = model_components(bundle.model)
    assert len([k for k in groups if k.startswith("vit.blocks.")]) >= 2
    assert all(groups[k] for k in groups)
    bundle.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    with torch.no_grad():
        again = loaded.model.eval()(**inputs)
    torch.testing.assert_close(again.logits, out.logits, atol=0, rtol=0)
    assert loaded.processor.image_seq_length == expected_tokens


def test_feature_grid_not_divisible_by_hidden_stride_is_a_clear_error():
    with pytest.raises(ValueError, match=r"image_size=40 gives a 5x5 feature grid.*multiple of 16"):
        build_model(ModelConfig(preset="tiny", image_size=40, hidden_stride=2))


def test_plugged_backbone_brings_its_own_preprocessing():
    siglip = build_model(ModelConfig(preset="tiny", vision="siglip")).processor.image_processor
    timm = build_model(ModelConfig(preset="tiny", vision="timm", hidden_stride=1)).processor.image_processor
    native = build_model(ModelConfig(preset="tiny")).processor.image_processor
    assert list(siglip.image_mean) == [0.5, 0.5, 0.5]
    assert [round(m, 3) for m in timm.image_mean] == [0.485, 0.456, 0.406]
    assert [round(m, 3) for m in native.image_mean] == [0.481, 0.458, 0.408]  # OpenAI CLIP, as Ovis2


def test_timm_batchnorm_stays_in_eval_mode_during_training():
    bundle = build_model(ModelConfig(preset="tiny", vision="timm", hidden_stride=1))
    bundle.model.train()
    norms = [m for m in bundle.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.training for m in norms)
    assert bundle.model.model.language_model.training


def test_native_tower_takes_aimv2_weights_with_identical_features(tmp_path):
    torch.manual_seed(0)
    aimv2 = Aimv2VisionModel(Aimv2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=64,
        qkv_bias=True, mlp_bias=True,
    )).eval()
    aimv2.save_pretrained(tmp_path)
    bundle = build_model(ModelConfig(preset="tiny", vision_name_or_path=str(tmp_path)))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = bundle.model.model.vision_tower.transformer(pixels).last_hidden_state
        theirs = aimv2(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(ours, theirs)


def test_pretrained_llm_is_composed_with_image_tokens_added(tmp_path):
    # a "pretrained" LLM whose tokenizer lacks the image tokens: build_model must add them and resize
    tokenizer = build_tiny_tokenizer(with_image_tokens=False)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  tie_word_embeddings=True)
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(config).eval()
    llm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    bundle = build_model(ModelConfig(preset="tiny", llm=str(tmp_path)))
    ids = tokenizer("a red circle", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = bundle.model.eval()(input_ids=ids).logits
        theirs = llm(input_ids=ids).logits
    torch.testing.assert_close(ours[..., : config.vocab_size], theirs)
    model_config = bundle.model.config
    assert model_config.image_token_id >= config.vocab_size
    assert max(model_config.visual_indicator_token_ids) < model_config.vocab_size == len(bundle.tokenizer)
    assert bundle.model.get_input_embeddings().num_embeddings == len(bundle.tokenizer)
    assert bundle.model.lm_head.weight is bundle.model.get_input_embeddings().weight


@pytest.mark.parametrize("vision", ["siglip", "siglip2", "clip"])
def test_pretrained_hf_backbone_gives_last_block_features_before_the_final_norm(vision, tmp_path):
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    from ovis_train.model.backbones import HF_BACKBONES

    config_cls, model_cls = HF_BACKBONES[vision]
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
    size = {"num_patches": 64} if vision == "siglip2" else {"image_size": 64}
    torch.manual_seed(0)
    reference = model_cls(config_cls(**shape, **size)).eval()
    torch.nn.init.normal_(reference.post_layernorm.weight)  # a final norm that would change the features
    reference.save_pretrained(tmp_path)
    bundle = build_model(ModelConfig(preset="tiny", vision=vision, vision_name_or_path=str(tmp_path)))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = bundle.model.model.vision_tower.transformer(pixels).last_hidden_state
        if vision == "siglip2":
            patches = torch.stack([convert_image_to_patches(p, 8) for p in pixels])
            theirs = reference(pixel_values=patches, pixel_attention_mask=torch.ones(2, 64, dtype=torch.long),
                               spatial_shapes=torch.tensor([[8, 8], [8, 8]]), output_hidden_states=True)
        else:
            theirs = reference(pixel_values=pixels, output_hidden_states=True)
    last_block = theirs.hidden_states[-1][:, 1:] if vision == "clip" else theirs.hidden_states[-1]
    torch.testing.assert_close(ours, last_block)
    if vision != "clip":  # SigLIP's last_hidden_state went through the final norm; CLIP only norms the CLS
        assert not torch.allclose(ours, theirs.last_hidden_state)
    assert not any("post_layernorm" in n or ".head." in n for n in model_components(bundle.model)["vit"])
    if vision != "siglip2":  # a fixed-resolution ViT cannot silently run at another size
        with pytest.raises(ValueError, match="trained at image_size=64: set model.image_size=64"):
            build_model(ModelConfig(preset="tiny", vision=vision, vision_name_or_path=str(tmp_path), image_size=96))


def test_mlp_connector_with_plugged_backbone_touches_every_visual_parameter_without_images():
    bundle = build_model(ModelConfig(preset="tiny", vision="siglip", connector="mlp"))
    text = bundle.processor(text=["only words"], return_tensors="pt")
    bundle.model.train()
    bundle.model(**text, labels=text["input_ids"]).loss.backward()
    groups = model_components(bundle.model)
    params = dict(bundle.model.named_parameters())
    for name in groups["vit"] + groups["visual_head"] + groups["vet"]:
        assert params[name].grad is not None and torch.all(params[name].grad == 0), name
