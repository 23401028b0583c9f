"""The uint8 fast image path against the model's own Ovis2ImageProcessor, for every preset's processor."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ovis_train.data.images import ImagePreparer, normalize_pixels, stack_image_inputs
from ovis_train.model import PRESETS, ModelConfig
from ovis_train.model.backbones import _PREPROCESSING, TimmBackbone
from ovis_train.model.vision import image_processor


def preset_processor(name: str):
    """The processor build_model gives the preset (backbone preprocessing included), without its weights."""
    defaults = PRESETS[name].defaults
    cfg = ModelConfig(image_size=defaults["image_size"], max_crops=defaults["max_crops"])
    if defaults["vision"] == "native":
        backbone = None
    elif defaults["vision"] == "timm":
        backbone = TimmBackbone(defaults["vision_name_or_path"])
    else:
        backbone = SimpleNamespace(preprocessing=lambda: dict(_PREPROCESSING[defaults["vision"]]))
    return image_processor(cfg, backbone)


def photo(rng, width, height):
    """Smooth field + noise: resampling sees both gradients and edges."""
    coarse = Image.fromarray((rng.random((5, 7, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-40, 40, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


# down- and up-sampling, wide and tall (different multi-crop grids), one side up and one down
SIZES = [(640, 400), (90, 700), (48, 48), (1200, 500), (300, 300)]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_fast_path_equals_the_processor_within_one_level(preset):
    processor = preset_processor(preset)
    rng = np.random.default_rng(0)
    images = [photo(rng, w, h) for w, h in SIZES]
    reference = processor(images, return_tensors="pt")
    prepared = ImagePreparer(processor).prepare(images, processor.max_patches if processor.crop_to_patches else 1)
    assert [list(grid) for _, grid in prepared] == reference["grids"].tolist()
    if processor.crop_to_patches:  # the multi-crop path really ran: several grids, thumbnails included
        assert len({grid for _, grid in prepared}) > 2
    batch = stack_image_inputs([inputs for inputs, _ in prepared])
    assert batch["pixel_values"].dtype == torch.uint8  # what workers ship
    pixels = normalize_pixels(batch)["pixel_values"]
    assert pixels.shape == reference["pixel_values"].shape and pixels.dtype == torch.float32
    # in uint8 levels: (difference in normalised units) * std * 255
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1) * 255
    levels = ((pixels - reference["pixel_values"]).abs() * std).max().item()
    assert levels <= 1.0 + 1e-3, f"{preset}: {levels:.2f} uint8 levels from the processor"


def test_normalize_refuses_uint8_without_constants():
    with pytest.raises(ValueError, match="pixel_mean"):
        normalize_pixels({"pixel_values": torch.zeros(1, 3, 4, 4, dtype=torch.uint8)})


def test_float_pixels_pass_unchanged():
    pixels = torch.randn(1, 3, 4, 4)
    assert normalize_pixels({"pixel_values": pixels})["pixel_values"] is pixels


def test_training_loss_on_uint8_batches_equals_processor_pixels(tmp_path):
    """The stream ships uint8; the loss's input preparation normalises on the device: same loss (and
    same gradient) as the processor's float pixels, and a different one if the pixels were left raw."""
    from ovis_train.data import DataConfig, SourceConfig, build_stream, write_synthetic_shards
    from ovis_train.model import build_model
    from ovis_train.train.loss import token_loss_sum

    torch.manual_seed(0)
    bundle = build_model(ModelConfig(preset="tiny"))
    shards = write_synthetic_shards(str(tmp_path), n_samples=4, samples_per_shard=4, image_size=48)
    cfg = DataConfig(sources=[SourceConfig(urls=shards, template="<image>\nDescription:\n")], batch_size=4,
                     shuffle=False, epochs=1)
    batch = next(iter(build_stream(cfg, bundle)))
    assert batch["pixel_values"].dtype == torch.uint8
    reference = dict(batch, pixel_values=normalize_pixels(batch)["pixel_values"])
    for key in ("pixel_mean", "pixel_std"):
        reference.pop(key)
    shipped = token_loss_sum(bundle.model, batch, "cpu")
    expected = token_loss_sum(bundle.model, reference, "cpu")
    torch.testing.assert_close(shipped, expected, rtol=0, atol=0)
    raw = dict(reference, pixel_values=batch["pixel_values"].float())  # what skipping the normalisation gives
    assert not torch.allclose(token_loss_sum(bundle.model, raw, "cpu"), expected)
