"""`build_model(cfg)`: compose a fresh Ovis model from (pretrained) parts, or load an existing one.

Each part is allocated once: the Ovis2 skeleton is built with its parameters on the meta device, the
pretrained LLM and vision backbone are put in place, and only what is still empty (visual head, VET, and
the parts that start random) is then allocated and initialised, as transformers would have done."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import Ovis2Config, Ovis2Processor

from ovis_train.errors import ConfigError

from .bundle import ModelBundle, load_model
from .config import ModelConfig
from .language import load_language_model
from .modeling import OvisModel
from .presets import get_preset, resolve_config
from .tokens import ATOM_TOKEN, indicator_tokens
from .vet_init import FROM_EXPORT, init_vet_from_export, init_vet_from_text_embeddings
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
    with init_empty_weights():  # parameters on the meta device (buffers stay real: rotary tables, ids)
        model = OvisModel(config)
    # pretrained parts take their places in the skeleton: no copy, no second allocation
    if lm is not None:
        model.model.language_model, model.lm_head = lm.base_model, lm.get_output_embeddings()
    if backbone is not None:
        model.model.vision_tower.transformer = backbone
    materialize(model)
    if backbone is None and cfg.vision_name_or_path and cfg.pretrained:
        load_aimv2_into(model.model.vision_tower.transformer, cfg.vision_name_or_path)
    if cfg.vet_init == "text_embeddings":
        init_vet_from_text_embeddings(model, tokenizer)
    elif cfg.vet_init.startswith(FROM_EXPORT):
        init_vet_from_export(model, cfg.vet_init[len(FROM_EXPORT):])
    model.to(dtype)
    processor = Ovis2Processor(
        image_processor=image_processor(cfg, backbone),
        tokenizer=tokenizer,
        image_seq_length=visual_tokens_per_crop(model),
    )
    return ModelBundle(model=model, tokenizer=tokenizer, processor=processor, config=cfg)


@torch.no_grad()
def materialize(model: OvisModel) -> None:
    """Allocate the parameters still on the meta device and initialise them as a plain build would:
    torch's own init (``reset_parameters``), then transformers' init for what it covers. Modules that
    are already real (the pretrained parts) are marked initialised, so neither touches them."""
    empty = []
    for module in model.modules():
        params = dict(module.named_parameters(recurse=False))
        if any(p.is_meta for p in params.values()):
            empty.append(module)
            module._is_hf_initialized = getattr(module, "_torch_init_only", False)  # the meta build set it
            for name, p in params.items():  # its buffers are real already (init_empty_weights leaves them)
                module._parameters[name] = nn.Parameter(torch.empty_like(p, device="cpu"), p.requires_grad)
        elif params or list(module.buffers(recurse=False)):
            module._is_hf_initialized = True
    model.tie_weights()  # materialising gave tied names separate tensors: tie them again
    for module in empty:
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        elif not _transformers_initialises(module):
            raise RuntimeError(f"{type(module).__name__} has no initialisation after a meta-device build; "
                               "give it reset_parameters or teach build.materialize about it")
    model.initialize_weights()


def _transformers_initialises(module: nn.Module) -> bool:
    """Norms are set by transformers' generic init (weight 1, bias 0) whatever their class is called."""
    return any(kind in type(module).__name__ for kind in ("RMSNorm", "LayerNorm"))


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
