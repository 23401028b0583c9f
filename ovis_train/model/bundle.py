"""`ModelBundle` (model + tokenizer + processor) and saving / loading it.

An export folder is a plain transformers Ovis2 folder (config.json, model.safetensors, tokenizer
and processor files) plus `ovis_train.json` (the ModelConfig it was built from). With the native
vision tower and the VET connector it loads with `Ovis2ForConditionalGeneration.from_pretrained`
and `AutoProcessor.from_pretrained` without ovis_train; plugged backbones, the mlp connector and the
gelu tokenize function need `load_model` (their options live in config.json under `ovis_train` and
`vision_config.tokenize_function`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from transformers import AutoProcessor

from .config import ModelConfig
from .modeling import OvisModel

METADATA_FILE = "ovis_train.json"


@dataclass
class ModelBundle:
    model: OvisModel
    tokenizer: object
    processor: object
    config: ModelConfig | None = None  # what it was built from (None for a plain Ovis2 checkpoint)

    def save_pretrained(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)  # writes the tokenizer too
        metadata = {"model_config": self.config.to_dict() if self.config else None}
        with open(os.path.join(path, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2)


def load_model(path_or_hub_id: str, dtype: str | torch.dtype | None = None) -> ModelBundle:
    """Load an ovis-train export or any transformers Ovis2 checkpoint (folder or hub id)."""
    kwargs = {"dtype": getattr(torch, dtype) if isinstance(dtype, str) else dtype} if dtype else {}
    model = OvisModel.from_pretrained(path_or_hub_id, **kwargs)
    processor = AutoProcessor.from_pretrained(path_or_hub_id)
    config = None
    metadata_path = os.path.join(path_or_hub_id, METADATA_FILE)
    if os.path.isfile(metadata_path):
        with open(metadata_path) as f:
            saved = json.load(f).get("model_config")
        config = ModelConfig.from_dict(saved) if saved else None
    return ModelBundle(model=model, tokenizer=processor.tokenizer, processor=processor, config=config)
