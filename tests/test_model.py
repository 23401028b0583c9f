"""Model core on transformers' Ovis2: VET, fp32 softmax, freezing, placeholders, image-free batches,
export / load round trips, component map. Tiny random models, CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from image_labels import mask_image_labels

from ovis_train.model import ModelConfig, build_model, load_model, model_components
from ovis_train.model.tokens import ATOM_TOKEN, INDICATOR_TOKENS

N_VISUAL = 16  # tiny preset: 64 px, patch 8 -> 8x8 patches, hidden stride 2 -> 4x4 tokens


def red_image(size=(40, 30)):
    return Image.new("RGB", size, (220, 30, 30))


def noise_image(seed, size=64):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="tiny"))


@pytest.fixture(scope="module")
def batch(tiny):
    return tiny.processor(
        text=["<image>\nDescription: a red circle", "a <image> and <image> side"],
        images=[noise_image(1), red_image(), noise_image(2)],
        return_tensors="pt",
        padding=True,
    )


def visual_parameter_names(model):
    groups = model_components(model)
    return groups["vit"] + groups["visual_head"] + groups["vet"]


# ---------------------------------------------------------------------------------------------- config


def test_config_rejects_visual_vocab_not_above_indicator_count():
    with pytest.raises(ValueError, match=r"visual_vocab_size=5 .*num_indicator_tokens=5.*set model.visual_vocab_size"):
        build_model(ModelConfig(preset="tiny", visual_vocab_size=5))


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="model.connector='linear'"):
        build_model(ModelConfig(connector="linear"))
    with pytest.raises(ValueError, match="model.preset='huge'"):
        build_model(ModelConfig(preset="huge"))


def test_model_config_is_a_hydra_structured_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.from_dotlist(["visual_vocab_size=64", "connector=vet"]))
    bundle = build_model(cfg)
    assert bundle.model.model.visual_embeddings_table.num_embeddings == 64
    assert bundle.config.visual_vocab_size == 64 and bundle.config.hidden_stride == 2  # preset filled the rest
    with pytest.raises(ValueError, match="unknown model config key"):
        build_model({"preset": "tiny", "visual_vocab": 64})


# ---------------------------------------------------------------------------------------------- VET


def _seeded_build(seed, **changes):
    torch.manual_seed(seed)
    return build_model(ModelConfig(preset="tiny", **changes))


def test_vet_init_text_embeddings_starts_visual_rows_as_text_token_embeddings():
    normal, texty = _seeded_build(3), _seeded_build(3, vet_init="text_embeddings")
    n_visual = texty.model.config.vision_config.vocab_size - texty.model.config.vision_config.num_visual_indicator_tokens
    rows = texty.model.model.visual_embeddings_table.weight.detach()
    embeddings = texty.model.get_input_embeddings().weight.detach()
    # every visual row is exactly one token's embedding, never a special (image / indicator / eos) token's
    matches = (rows[:n_visual, None, :] == embeddings[None]).all(-1)
    assert bool(matches.any(1).all())
    special = sorted(set(texty.tokenizer.all_special_ids))
    assert not bool(matches[:, special].any())
    assert matches.any(0).sum() > n_visual // 2  # drawn at random: many distinct tokens, not one copied row
    # only the visual rows differ from Ovis2's init: indicator rows and every other weight are untouched
    normal_rows = normal.model.model.visual_embeddings_table.weight.detach()
    assert torch.equal(rows[n_visual:], normal_rows[n_visual:])
    assert not torch.equal(rows[:n_visual], normal_rows[:n_visual])
    others = {k: v for k, v in texty.model.state_dict().items() if "visual_embeddings_table" not in k}
    assert all(torch.equal(v, normal.model.state_dict()[k]) for k, v in others.items())


def test_vet_init_follows_the_seed_and_rejects_unknown_values():
    def rows(seed):
        return _seeded_build(seed, vet_init="text_embeddings").model.model.visual_embeddings_table.weight

    assert torch.equal(rows(5), rows(5)) and not torch.equal(rows(5), rows(6))
    with pytest.raises(ValueError, match="model.vet_init='zeros': choose one of"):
        build_model(ModelConfig(preset="tiny", vet_init="zeros"))
    assert build_model(ModelConfig(preset="tiny")).config.vet_init == "normal"  # Ovis2's own unless asked


def test_vet_one_hot_probabilities_equal_integer_lookup(tiny):
    table = tiny.model.model.visual_embeddings_table
    ids = torch.tensor([[0, 3, 255], [17, 250, 128]])
    one_hot = torch.nn.functional.one_hot(ids, table.num_embeddings).float()
    assert torch.equal(table(one_hot), table(ids))


def test_soft_probabilities_are_zero_on_indicator_rows(tiny, batch):
    table = tiny.model.model.visual_embeddings_table
    seen = []
    hook = table.register_forward_hook(lambda m, args, out: seen.append(args[0]) if args[0].is_floating_point() else None)
    try:
        with torch.no_grad():
            tiny.model(**batch)
    finally:
        hook.remove()
    (probs,) = seen
    n_ind = tiny.model.config.vision_config.num_visual_indicator_tokens
    assert probs.shape == (3, N_VISUAL, 256)
    assert torch.all(probs[..., -n_ind:] == 0)
    assert torch.all(probs[..., :-n_ind] > 0)  # a real softmax, not a one-hot
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, N_VISUAL))


@pytest.mark.parametrize("softmax_fp32, expected", [(True, torch.float32), (False, torch.bfloat16)])
def test_bf16_model_computes_visual_softmax_in_fp32_when_asked(softmax_fp32, expected, batch):
    bundle = build_model(ModelConfig(preset="tiny", dtype="bfloat16", softmax_fp32=softmax_fp32))
    assert bundle.model.model.visual_embeddings_table.weight.dtype == torch.bfloat16
    with torch.no_grad():
        probs = bundle.model.model.vision_tower(batch["pixel_values"].bfloat16()).pooler_output
        logits = bundle.model(**batch).logits
    assert probs.dtype == expected
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------- gradients


def test_frozen_llm_gets_no_grads_while_head_vet_and_last_block_do(batch):
    bundle = build_model(ModelConfig(preset="tiny"))
    model, groups = bundle.model, model_components(bundle.model)
    frozen = set(groups["llm"] + groups["lm_head"])
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    labels = mask_image_labels(batch["input_ids"].clone(), batch["input_ids"], bundle.tokenizer)
    model.train()
    model(**batch, labels=labels).loss.backward()
    params = dict(model.named_parameters(remove_duplicate=False))
    last_block = [n for n in groups if n.startswith("vit.blocks.")][-1]
    for key in ("visual_head", "vet", last_block):
        assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in groups[key]), key
    assert all(params[n].grad is None for n in frozen)


def test_text_only_batch_gives_zero_grads_on_every_visual_parameter(tiny):
    model = tiny.model
    model.zero_grad(set_to_none=True)
    text = tiny.processor(text=["no picture here", "nor here"], return_tensors="pt", padding=True)
    out = model(**text, labels=text["input_ids"])
    out.loss.backward()
    params = dict(model.named_parameters(remove_duplicate=False))
    names = visual_parameter_names(model)
    assert len(names) > 20
    for name in names:
        assert params[name].grad is not None, f"{name} untouched: DDP would hang"
        assert torch.all(params[name].grad == 0), name
    assert params["lm_head.weight"].grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    with torch.no_grad():  # the touch adds exactly zero
        reference = model.model.language_model(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        torch.testing.assert_close(model(**text).logits, model.lm_head(reference.last_hidden_state))


def test_text_only_forward_runs_the_visual_path_in_image_order_without_grad_but_not_when_decoding(tiny):
    """ZeRO-3 gathers parameters module by module: a text-only scoring forward (held-out loss, no grad) must
    call the same modules in the same order as an image forward; generation's decoding steps call none."""
    model = tiny.model
    watched = {"embed": model.model.language_model.embed_tokens, "vit": model.model.vision_tower,
               "vet": model.model.visual_embeddings_table, "llm": model.model.language_model.layers[0]}
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_, n=name: calls.append(n)) for name, m in watched.items()]
    try:
        image = tiny.processor(text=["<image> a"], images=[Image.new("RGB", (64, 64))], return_tensors="pt")
        text = tiny.processor(text=["no picture here"], return_tensors="pt")
        with torch.no_grad():
            model(**image, use_cache=False)
            with_image, calls[:] = list(calls), []
            model(**text, use_cache=False)
            text_only, calls[:] = list(calls), []
            out = model(**text, use_cache=True)
            calls[:] = []
            model(input_ids=text["input_ids"][:, -1:], cache=out.cache, use_cache=True)
            decoding = list(calls)
    finally:
        for hook in hooks:
            hook.remove()
    assert with_image == text_only == ["embed", "vit", "vet", "vet", "llm"]
    assert decoding == ["embed", "llm"]


# ---------------------------------------------------------------------------------------------- placeholders


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _image_block(tokenizer):
    start, grid, _, _, end = tokenizer.convert_tokens_to_ids(list(INDICATOR_TOKENS))
    return [start] + [tokenizer.convert_tokens_to_ids(ATOM_TOKEN)] * N_VISUAL + [grid, end]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_placeholder_expansion_and_labels_for_0_1_2_images(tiny, padding_side):
    tok = tiny.tokenizer
    block = _image_block(tok)
    texts = ["plain text", "<image>\nDescription: a red", "a <image> b <image> c"]
    expected_ids = [
        _ids(tok, "plain text"),
        block + _ids(tok, "\nDescription: a red"),
        _ids(tok, "a ") + block + _ids(tok, " b ") + block + _ids(tok, " c"),
    ]
    is_image = [[False] * len(e) for e in expected_ids]
    is_image[1][: len(block)] = [True] * len(block)
    start_b = len(_ids(tok, "a "))
    start_c = start_b + len(block) + len(_ids(tok, " b "))
    is_image[2][start_b : start_b + len(block)] = [True] * len(block)
    is_image[2][start_c : start_c + len(block)] = [True] * len(block)

    out = tiny.processor(
        text=texts, images=[red_image(), noise_image(3), noise_image(4)], return_tensors="pt",
        padding=True, padding_side=padding_side,
    )
    width = max(map(len, expected_ids))
    pad = tok.pad_token_id
    for row, (ids, image_mask) in enumerate(zip(expected_ids, is_image)):
        fill = width - len(ids)
        want_ids = [pad] * fill + ids if padding_side == "left" else ids + [pad] * fill
        want_mask = [0] * fill + [1] * len(ids) if padding_side == "left" else [1] * len(ids) + [0] * fill
        labels = [-100 if m else i for i, m in zip(ids, image_mask)]
        want_labels = [-100] * fill + labels if padding_side == "left" else labels + [-100] * fill
        assert out["input_ids"][row].tolist() == want_ids
        assert out["attention_mask"][row].tolist() == want_mask
        got_labels = mask_image_labels(out["input_ids"].masked_fill(out["attention_mask"] == 0, -100), out["input_ids"], tok)
        assert got_labels[row].tolist() == want_labels
    assert out["pixel_values"].shape == (3, 3, 64, 64)
    with torch.no_grad():
        assert torch.isfinite(tiny.model(**out).logits).all()


def test_left_and_right_padding_give_the_same_logits(tiny):
    texts = ["short <image> x", "a much longer <image> text with more words"]
    images = [noise_image(5), noise_image(6)]
    with torch.no_grad():
        logits = {}
        for side in ("left", "right"):
            out = tiny.processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side=side)
            logits[side] = tiny.model(**out).logits[out["attention_mask"].bool()]
    torch.testing.assert_close(logits["left"], logits["right"], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- components


def test_component_map_covers_every_parameter_once_in_contract_order(tiny):
    groups = model_components(tiny.model)
    keys = list(groups)
    assert keys == ["vit.blocks.0", "vit.blocks.1", "vit", "visual_head", "vet", "llm", "lm_head"]
    top = [n for k in ("vit", "visual_head", "vet", "llm", "lm_head") for n in groups[k]]
    all_names = [n for n, _ in tiny.model.named_parameters(remove_duplicate=False)]
    assert sorted(top) == sorted(all_names)
    assert groups["lm_head"] == ["lm_head.weight"]
    assert set(groups["vit.blocks.1"]) < set(groups["vit"])
    assert all(".encoder.layers.1." in n for n in groups["vit.blocks.1"])
    assert groups["vet"] == ["model.visual_embeddings_table.weight"]


# ---------------------------------------------------------------------------------------------- export


_FRESH_PROCESS_LOAD = r"""
import sys, torch
from PIL import Image
from transformers import AutoProcessor, Ovis2ForConditionalGeneration
path, image_path, out_path = sys.argv[1:]
model = Ovis2ForConditionalGeneration.from_pretrained(path).eval()
processor = AutoProcessor.from_pretrained(path)
inputs = processor(text=["<image>\nDescription:"], images=[Image.open(image_path)], return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
assert "ovis_train" not in sys.modules
torch.save({"input_ids": inputs["input_ids"], "logits": logits}, out_path)
"""


def test_native_export_loads_with_plain_transformers_in_a_fresh_process(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "export")
    image_path = tmp_path / "image.png"
    noise_image(7).save(image_path)
    result = tmp_path / "result.pt"
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_LOAD, str(tmp_path / "export"), str(image_path), str(result)],
        check=True, env=env, cwd=tmp_path, timeout=120,
    )
    fresh = torch.load(result)
    inputs = tiny.processor(text=["<image>\nDescription:"], images=[Image.open(image_path)], return_tensors="pt")
    with torch.no_grad():
        logits = tiny.model(**inputs).logits
    assert torch.equal(fresh["input_ids"], inputs["input_ids"])
    torch.testing.assert_close(fresh["logits"], logits, atol=0, rtol=0)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["architectures"] == ["Ovis2ForConditionalGeneration"]
    assert load_model(str(tmp_path / "export")).config == tiny.config


def _roundtrip_logits(bundle, tmp_path):
    inputs = bundle.processor(text=["<image>\nDescription: a"], images=[noise_image(8)], return_tensors="pt")
    bundle.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    with torch.no_grad():
        return bundle.model.eval()(**inputs).logits, loaded.model.eval()(**inputs).logits, loaded


def test_mlp_connector_trains_and_round_trips(tmp_path, batch):
    torch.manual_seed(1)
    bundle = build_model(ModelConfig(preset="tiny", connector="mlp"))
    groups = model_components(bundle.model)
    assert any(".projector." in n for n in groups["visual_head"])
    assert bundle.model.model.visual_embeddings_table.num_embeddings == 5  # indicator rows only
    bundle.model.train()
    bundle.model(**batch, labels=batch["input_ids"]).loss.backward()
    params = dict(bundle.model.named_parameters())
    assert all(params[n].grad.abs().sum() > 0 for n in groups["visual_head"] + groups["vet"])
    before, after, loaded = _roundtrip_logits(bundle, tmp_path)
    assert type(loaded.model.model.vision_tower.projector).__name__ == "MlpProjector"
    torch.testing.assert_close(before, after, atol=0, rtol=0)


@pytest.mark.parametrize("connector", ["vet", "mlp"])
def test_generation_sees_the_same_image_features_as_forward(connector):
    # generate() pre-encodes images through the inner model's get_image_features: it must be the connector's
    torch.manual_seed(2)
    bundle = build_model(ModelConfig(preset="tiny", connector=connector))
    with torch.no_grad():
        for p in bundle.model.model.vision_tower.parameters():  # make the image matter for the next token
            p.mul_(5.0)
        inputs = bundle.processor(text=["<image>", "<image>"], images=[noise_image(10), red_image()], return_tensors="pt")
        expected = bundle.model.eval()(**inputs).logits[:, -1].argmax(-1)
        generated = bundle.model.generate(**inputs, max_new_tokens=1, do_sample=False, pad_token_id=0)
    assert torch.equal(generated[:, -1], expected)


def test_plain_ovis2_checkpoint_and_init_from_load_with_identical_logits(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["ovis_train"]  # what a checkpoint converted by transformers looks like
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "ovis_train.json").unlink()
    inputs = tiny.processor(text=["<image> x"], images=[noise_image(9)], return_tensors="pt")
    with torch.no_grad():
        expected = tiny.model(**inputs).logits
        for bundle in (load_model(str(tmp_path)), build_model(ModelConfig(init_from=str(tmp_path)))):
            assert type(bundle.model).__name__ == "OvisModel"
            torch.testing.assert_close(bundle.model(**inputs).logits, expected, atol=0, rtol=0)


def test_multi_crop_splits_large_images_only():
    bundle = build_model(ModelConfig(preset="tiny", max_crops=4))
    tok = bundle.tokenizer
    images = [Image.new("RGB", (32, 32)), Image.new("RGB", (128, 128))]  # small: 1 crop; large: thumbnail + 2x2
    out = bundle.processor(text=["<image> and <image>"], images=images, return_tensors="pt")
    assert out["pixel_values"].shape[0] == 1 + 5
    ids = out["input_ids"][0].tolist()
    assert ids.count(bundle.model.config.image_token_id) == 6 * N_VISUAL
    counts = {t: ids.count(tok.convert_tokens_to_ids(t)) for t in INDICATOR_TOKENS}
    assert counts == {"<IMG_START>": 2, "<IMG_GRID>": 2, "<IMG_COL>": 2, "<IMG_ROW>": 1, "<IMG_END>": 2}
    with torch.no_grad():
        assert torch.isfinite(bundle.model(**out).logits).all()
    single = build_model(ModelConfig(preset="tiny")).processor(text=["<image>"], images=images[1:], return_tensors="pt")
    assert single["pixel_values"].shape[0] == 1  # max_crops=1 (tiny default): never split


def test_activation_checkpointing_with_frozen_llm_and_vit_still_trains_head_vet_and_last_block(batch):
    bundle = build_model(ModelConfig(preset="tiny"))
    model, groups = bundle.model, model_components(bundle.model)
    last_block = set(groups["vit.blocks.1"])
    frozen = set(groups["llm"] + groups["lm_head"] + groups["vit"]) - last_block
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    model.activation_checkpointing_enable()
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    params = dict(model.named_parameters())
    assert model.is_activation_checkpointing
    for name in groups["visual_head"] + groups["vet"] + sorted(last_block):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
