"""`build_model(cfg)`: compose a fresh Ovis model from (pretrained) parts, or load an existing one."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from transformers import Ovis2Config, Ovis2Processor

from ovis_train.errors import ConfigError

from .bundle import ModelBundle, load_model
from .config import ModelConfig
from .language import load_language_model
from .modeling import OvisModel
from .presets import get_preset, resolve_config
from .tokens import ATOM_TOKEN, indicator_tokens
from .vet_init import init_vet_from_text_embeddings
from .vision import image_processor, load_aimv2_into, make_backbone, vision_config


def build_model(cfg: ModelConfig | Mapping) -> ModelBundle:
    """A fresh model composed from the config's parts, or the `init_from` checkpoint. `cfg` may also be a
    dict / Hydra DictConfig with ModelConfig keys."""
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_dict(dict(cfg))
    cfg = resolve_config(cfg)
    dtype = getattr(torch, cfg.dtype)
    if cfg.init_from:
        bundle = load_model(cfg.init_from, dtype=dtype)
        bundle.config = bundle.config or cfg
        return bundle
    preset = get_preset(cfg.preset)
    lm, text_config, tokenizer = load_language_model(cfg, preset, dtype)
    backbone = make_backbone(cfg, preset, dtype)
    config = Ovis2Config(
        vision_config=vision_config(cfg, preset, backbone),
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(ATOM_TOKEN),
        visual_indicator_token_ids=tokenizer.convert_tokens_to_ids(indicator_tokens(cfg.num_indicator_tokens)),
        vocab_size=text_config.vocab_size,
        hidden_size=text_config.hidden_size,
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", True),
        ovis_train={
            "connector": cfg.connector,
            "softmax_fp32": cfg.softmax_fp32,
            "visual_chunk_size": cfg.visual_chunk_size,
            "backbone": backbone.spec if backbone is not None else None,
        },
    )
    config._attn_implementation = cfg.attn_implementation
    model = OvisModel(config)
    # pretrained parts replace the freshly built (random) ones: no copy, no second allocation
    if lm is not None:
        model.model.language_model, model.lm_head = lm.base_model, lm.get_output_embeddings()
    if backbone is not None:
        model.model.vision_tower.transformer = backbone
    elif cfg.vision_name_or_path and cfg.pretrained:
        load_aimv2_into(model.model.vision_tower.transformer, cfg.vision_name_or_path)
    if cfg.vet_init == "text_embeddings":
        init_vet_from_text_embeddings(model, tokenizer)
    model.to(dtype)
    processor = Ovis2Processor(
        image_processor=image_processor(cfg, backbone),
        tokenizer=tokenizer,
        image_seq_length=visual_tokens_per_crop(model),
    )
    return ModelBundle(model=model, tokenizer=tokenizer, processor=processor, config=cfg)


@torch.no_grad()
def visual_tokens_per_crop(model: OvisModel) -> int:
    """Visual tokens one crop yields after the hidden-stride merge (the feature grid is measured on a
    blank crop). The grid side must be a multiple of the stride: transformers' merge pads wrongly."""
    vision = model.config.vision_config
    blank = torch.zeros(1, vision.num_channels, vision.image_size, vision.image_size, dtype=model.dtype)
    n_features = model.model.vision_tower.transformer(blank).last_hidden_state.shape[1]
    side, stride = math.isqrt(n_features), vision.hidden_stride
    if side * side != n_features or side % stride:
        patch = vision.image_size // max(side, 1)
        raise ConfigError(
            f"model.image_size={vision.image_size} gives a {side}x{side} feature grid, which "
            f"model.hidden_stride={stride} does not divide: set model.image_size to a multiple of "
            f"{patch * stride} (patch {patch} x stride {stride})"
        )
    return (side // stride) ** 2
