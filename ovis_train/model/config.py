"""`ModelConfig`: what to build, as a Hydra-friendly dataclass (plain types; `None` = take the preset's value)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ovis_train.errors import ConfigError

VISION_KINDS = ("native", "siglip", "siglip2", "clip", "timm")
CONNECTORS = ("vet", "mlp")
TOKENIZE_FUNCTIONS = ("softmax", "gumbel_argmax", "st_argmax", "gelu")  # gelu: the softmax ablation (modeling.py)
DTYPES = ("float32", "bfloat16", "float16")
VET_INITS = ("normal", "text_embeddings")


@dataclass
class ModelConfig:
    preset: str = "tiny"  # tiny | demo | ovis2_1b | ovis2_2b | ovis2_5_2b (see presets.py)
    init_from: str | None = None  # an existing Ovis2 / ovis-train export (folder or hub id): load it instead
    pretrained: bool = True  # False: the preset's shapes with random weights (benchmarks, no download)
    # language model: hub id or folder of any transformers causal LM; gguf_file names a GGUF file in it
    llm: str | None = None
    gguf_file: str | None = None
    # vision tower: native = transformers' Ovis2 ViT (AIMv2-style); others plug in as its feature extractor
    vision: str | None = None
    vision_name_or_path: str | None = None  # HF folder/hub id (native: an AIMv2 vision model), or timm model name
    vision_weights: str | None = None  # timm only: a state-dict file loaded by position (shape-checked)
    image_size: int | None = None
    hidden_stride: int | None = None
    # visual vocabulary K (VET rows), of which the last num_indicator_tokens are indicator rows
    visual_vocab_size: int | None = None
    num_indicator_tokens: int | None = None  # preset's; 5 for Ovis2 (and by default), 4 for Ovis2.5
    connector: str = "vet"  # vet | mlp (the standard 2-layer projector, for the ablation)
    # how the VET's visual rows start: normal (Ovis2's N(0, 0.02)) | text_embeddings (copies of random text
    # tokens' embeddings, at the LLM's scale: P1 learns much faster) | from:<export> (warm start from a trained
    # VET of another size: rows split or merged, vet_init.py); None = the preset's
    vet_init: str | None = None
    tokenize_function: str = "softmax"  # softmax | gumbel_argmax | st_argmax | gelu (GELU in place of the softmax)
    softmax_fp32: bool = True  # visual softmax in fp32 whatever the model dtype (as Ovis2.5 does)
    max_crops: int | None = None  # Ovis2 multi-crop grid size limit; 1 = one crop per image
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    # memory-efficient visual path: head -> softmax -> VET in chunks of this many visual tokens, recomputed
    # in backward (chunked_visual.py; same outputs and gradients); null = plain. Saves ~4 [tokens, K] fp32
    # tensors (1 GiB each at 4096 tokens, K=65536) for ~1 extra head matmul. Not with ZeRO-3/FSDP-sharded towers.
    visual_chunk_size: int | None = None

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**data)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_config(cfg: ModelConfig) -> None:
    """Raise a ConfigError naming the bad key and the fix. Expects a resolved config (presets applied)."""
    _require(cfg.vision in VISION_KINDS, f"model.vision={cfg.vision!r}: choose one of {VISION_KINDS}")
    _require(cfg.connector in CONNECTORS, f"model.connector={cfg.connector!r}: choose one of {CONNECTORS}")
    _require(
        cfg.tokenize_function in TOKENIZE_FUNCTIONS,
        f"model.tokenize_function={cfg.tokenize_function!r}: choose one of {TOKENIZE_FUNCTIONS}",
    )
    _require(
        cfg.vet_init in VET_INITS or cfg.vet_init.startswith("from:"),
        f"model.vet_init={cfg.vet_init!r}: choose one of {VET_INITS} or from:<export folder> (warm start)",
    )
    _require(
        not (cfg.vet_init.startswith("from:") and (cfg.connector != "vet" or cfg.init_from)),
        f"model.vet_init={cfg.vet_init} starts a fresh VET model's head and VET from another one's: it needs "
        f"model.connector=vet (got {cfg.connector}) and no init_from (got {cfg.init_from})",
    )
    _require(cfg.dtype in DTYPES, f"model.dtype={cfg.dtype!r}: choose one of {DTYPES}")
    _require(
        cfg.num_indicator_tokens is not None and cfg.num_indicator_tokens >= 1,
        f"model.num_indicator_tokens={cfg.num_indicator_tokens}: must be >= 1 (Ovis2 uses 5, Ovis2.5 uses 4)",
    )
    if cfg.connector == "vet":
        _require(
            cfg.visual_vocab_size is not None and cfg.visual_vocab_size > cfg.num_indicator_tokens,
            f"model.visual_vocab_size={cfg.visual_vocab_size} must be larger than "
            f"model.num_indicator_tokens={cfg.num_indicator_tokens} (the last rows of the VET are indicator rows, "
            f"the rest are the visual vocabulary): set model.visual_vocab_size to e.g. "
            f"{max(1024, 2 * cfg.num_indicator_tokens)}",
        )
    for key in ("image_size", "hidden_stride", "max_crops"):
        value = getattr(cfg, key)
        _require(value is not None and value >= 1, f"model.{key}={value}: must be a positive integer")
    if cfg.visual_chunk_size is not None:
        _require(cfg.visual_chunk_size >= 1, f"model.visual_chunk_size={cfg.visual_chunk_size}: tokens per chunk, >= 1 (or null)")
        _require(
            cfg.connector == "vet" and cfg.tokenize_function == "softmax" and cfg.softmax_fp32,
            "model.visual_chunk_size chunks the softmax VET path only: it needs model.connector=vet, "
            f"model.tokenize_function=softmax and model.softmax_fp32=true (got {cfg.connector}, "
            f"{cfg.tokenize_function}, softmax_fp32={cfg.softmax_fp32}); or set model.visual_chunk_size=null",
        )
    _require(
        cfg.gguf_file is None or cfg.llm is not None,
        "model.gguf_file is set but model.llm is not: set model.llm to the folder that holds the GGUF file",
    )
    _require(
        cfg.vision_weights is None or cfg.vision == "timm",
        f"model.vision_weights is only for model.vision=timm (got vision={cfg.vision!r}); use "
        "model.vision_name_or_path for transformers vision models",
    )
