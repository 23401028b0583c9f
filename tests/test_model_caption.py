"""Captioning with a saved model: a tiny model taught two captions must say them back."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

from image_labels import mask_image_labels

from ovis_train.model import ModelConfig, build_model, load_model
from ovis_train.model.caption import DEFAULT_PROMPT, caption

CAPTIONS = {"red": "a red circle", "blue": "a blue square"}


def solid(colour):
    return Image.new("RGB", (48, 48), {"red": (230, 20, 20), "blue": (20, 20, 230)}[colour])


@pytest.fixture(scope="module")
def taught_model(tmp_path_factory):
    """Tiny model trained (all parameters, ~1 s) until it maps each solid image to its caption."""
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(preset="tiny"))
    tok = bundle.tokenizer
    texts = [DEFAULT_PROMPT + CAPTIONS[c] + tok.eos_token for c in CAPTIONS]
    batch = bundle.processor(text=texts, images=[solid(c) for c in CAPTIONS], return_tensors="pt", padding=True)
    prompt_len = bundle.processor(text=[DEFAULT_PROMPT], images=[solid("red")], return_tensors="pt")["input_ids"].shape[1]
    labels = mask_image_labels(batch["input_ids"].clone(), batch["input_ids"], tok)
    labels[:, :prompt_len] = -100
    labels[batch["attention_mask"] == 0] = -100
    model = bundle.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.05:
            break
    path = tmp_path_factory.mktemp("taught")
    bundle.save_pretrained(path)
    return str(path)


def test_greedy_captions_of_a_saved_model(taught_model):
    assert caption(taught_model, [solid("red"), solid("blue"), solid("red")]) == [
        CAPTIONS["red"], CAPTIONS["blue"], CAPTIONS["red"]
    ]


def test_sampling_is_reproducible_with_a_seed_and_varies_with_temperature(taught_model):
    bundle = load_model(taught_model)
    images = [solid("red")] * 6
    hot = dict(sample=True, temperature=5.0, max_new_tokens=8)
    first = caption(bundle, images, seed=3, **hot)
    assert caption(bundle, images, seed=3, **hot) == first
    assert len(set(first)) > 1  # at a high temperature six samples are not all the same
    assert caption(bundle, images, sample=True, temperature=0.05, seed=4) == [CAPTIONS["red"]] * 6


def test_caption_prompt_needs_one_image_marker(taught_model):
    with pytest.raises(ValueError, match="exactly one <image>"):
        caption(taught_model, [solid("red")], prompt="Description:")


def test_caption_cli(taught_model, tmp_path):
    paths = []
    for colour in ("blue", "red"):
        paths.append(str(tmp_path / f"{colour}.png"))
        solid(colour).save(paths[-1])
    out = subprocess.run(
        [sys.executable, "-m", "ovis_train.model.caption", "--model", taught_model, *paths],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout.splitlines()
    assert out == [f"{paths[0]}\t{CAPTIONS['blue']}", f"{paths[1]}\t{CAPTIONS['red']}"]
