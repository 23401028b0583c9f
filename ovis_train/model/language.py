"""The language side of a fresh model: a pretrained causal LM (hub id, folder or GGUF) with its
tokenizer, or a randomly initialised one of the preset's shape; image tokens added, embeddings resized."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ovis_train.errors import ConfigError

from .config import ModelConfig
from .presets import Preset
from .tokens import add_image_tokens, build_tiny_tokenizer


def load_language_model(cfg: ModelConfig, preset: Preset, dtype: torch.dtype):
    """-> (causal LM or None, text config, tokenizer with image tokens). None: build it randomly."""
    if cfg.llm is not None and cfg.pretrained:
        source = dict(gguf_file=cfg.gguf_file) if cfg.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(cfg.llm, **source)
        lm: PreTrainedModel = AutoModelForCausalLM.from_pretrained(cfg.llm, dtype=dtype, **source)
        if cfg.gguf_file and getattr(lm.config, "quantization_config", None) is not None:
            # GGUF weights arrive dequantized to plain tensors; left in the config, the GGUF marker makes a
            # reloaded export "quantized" and unsavable (P2 could not export what it loaded from P1)
            del lm.config.quantization_config
        add_image_tokens(tokenizer)
        if len(tokenizer) > lm.config.vocab_size:
            lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        return lm, lm.config, tokenizer
    if preset.text_config is None:
        raise ConfigError(
            f"model.preset={cfg.preset!r} has no random-init LLM shape: set model.pretrained=true "
            "(or use preset=tiny)"
        )
    # random weights: the offline tiny BPE stands in for the real tokenizer (ids fit any vocab)
    tokenizer = build_tiny_tokenizer()
    shape = dict(preset.text_config)
    shape["vocab_size"] = max(shape.get("vocab_size", 0), len(tokenizer))
    text_config = AutoConfig.for_model(**shape)
    return None, text_config, tokenizer
