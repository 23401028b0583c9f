"""The chunked (recompute-in-backward) visual path gives the plain path's outputs and gradients."""

import pytest
import torch
from torch import nn

from ovis_train.model.chunked_visual import visual_embeddings
from ovis_train.model.modeling import Float32LayerNorm

N_INDICATORS = 4


def visual_parts(dim=24, vocab=100, hidden=16, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    head = nn.Linear(dim, vocab - N_INDICATORS, bias=False).to(dtype)
    norm = Float32LayerNorm(vocab - N_INDICATORS).to(dtype)
    with torch.no_grad():  # non-trivial affine, so its gradients are tested too
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    table = nn.Parameter(torch.randn(vocab, hidden, dtype=dtype))
    return head, norm, table


def run(features, head, norm, table, chunk_size):
    features = features.detach().requires_grad_(True)
    params = [features, head.weight, norm.weight, norm.bias, table]
    for p in params[1:]:
        p.grad = None
    out = visual_embeddings(features, head, norm, table, N_INDICATORS, chunk_size=chunk_size)
    # a non-uniform upstream gradient, so every output element matters
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), [features.grad] + [p.grad.clone() for p in params[1:]]


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 64])  # 7: 2 x 19 = 38 tokens do not divide
def test_chunked_matches_plain_fp32(chunk_size):
    head, norm, table = visual_parts()
    features = torch.randn(2, 19, 24)
    plain_out, plain_grads = run(features, head, norm, table, None)
    out, grads = run(features, head, norm, table, chunk_size)
    assert out.shape == (2, 19, 16)
    torch.testing.assert_close(out, plain_out, rtol=1e-5, atol=1e-6)
    names = ["features", "head_linear.weight", "head_norm.weight", "head_norm.bias", "vet"]
    for name, grad, plain in zip(names, grads, plain_grads):
        torch.testing.assert_close(grad, plain, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # the indicator rows of the VET get no gradient from visual tokens, in both paths
    assert torch.count_nonzero(grads[-1][-N_INDICATORS:]) == 0


def test_chunked_matches_plain_bf16_table():
    """bf16 model: the fp32 softmax output is cast to the table dtype in both paths alike."""
    head, norm, table = visual_parts(dtype=torch.bfloat16)
    features = torch.randn(33, 24, dtype=torch.bfloat16)
    plain_out, plain_grads = run(features, head, norm, table, None)
    out, grads = run(features, head, norm, table, 8)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, plain_out)
    for grad, plain in zip(grads, plain_grads):
        torch.testing.assert_close(grad, plain, rtol=2e-2, atol=2e-2)


def test_no_grad_and_frozen_inputs():
    head, norm, table = visual_parts()
    features = torch.randn(3, 10, 24)
    with torch.no_grad():
        torch.testing.assert_close(visual_embeddings(features, head, norm, table, N_INDICATORS, 4),
                                   visual_embeddings(features, head, norm, table, N_INDICATORS, None))
    # frozen features (P1 with a frozen ViT): parameters still get the plain path's gradients
    head.weight.grad = None
    visual_embeddings(features, head, norm, table, N_INDICATORS, 4).sum().backward()
    chunked = head.weight.grad.clone()
    head.weight.grad = None
    visual_embeddings(features, head, norm, table, N_INDICATORS, None).sum().backward()
    torch.testing.assert_close(chunked, head.weight.grad, rtol=1e-5, atol=1e-6)


def test_bad_chunk_size():
    head, norm, table = visual_parts()
    with pytest.raises(ValueError, match="visual_chunk_size"):
        visual_embeddings(torch.randn(5, 24), head, norm, table, N_INDICATORS, 0)


def test_chunked_matches_plain_under_bf16_autocast():
    """Accelerate's bf16 mixed precision: fp32 parameters, matmuls in bf16, fp32 gradients."""
    head, norm, table = visual_parts()
    features = torch.randn(2, 13, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_out, plain_grads = run(features, head, norm, table, None)
        out, grads = run(features, head, norm, table, 5)
    assert out.dtype == plain_out.dtype == torch.bfloat16
    torch.testing.assert_close(out, plain_out)
    for grad, plain in zip(grads, plain_grads):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, plain, rtol=2e-2, atol=2e-2)


def test_chunked_image_features_match_the_model():
    """On a tiny Ovis model: the chunked features (ViT -> merge -> chunked head/VET) equal
    transformers' get_image_features, values and gradients."""
    from ovis_train.model import ModelConfig, build_model
    from ovis_train.model.chunked_visual import chunked_image_features

    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny")).model
    inner = model.model
    pixels = torch.randn(3, 3, 64, 64)

    def features_and_grads(chunk_size):
        model.zero_grad(set_to_none=True)
        if chunk_size is None:
            out = inner.get_image_features(pixel_values=pixels)
        else:
            out = chunked_image_features(inner, pixels, chunk_size)
        weights = torch.linspace(-1, 1, out.pooler_output.numel()).reshape(out.pooler_output.shape)
        ((out.pooler_output * weights).sum() + out.visual_indicator_features.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    plain, plain_grads = features_and_grads(None)
    chunked, grads = features_and_grads(5)  # 3 images x 16 tokens = 48 tokens: 5 does not divide
    torch.testing.assert_close(chunked.pooler_output, plain.pooler_output, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked.visual_indicator_features, plain.visual_indicator_features)
    assert grads.keys() == plain_grads.keys() and any("head_linear" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("chunk_size", [None, 6])
def test_observer_sees_every_token_probabilities(chunk_size):
    head, norm, table = visual_parts()
    features = torch.randn(2, 9, 24)
    seen = []
    visual_embeddings(features, head, norm, table, N_INDICATORS, chunk_size, observe=seen.append)
    probs = torch.cat(seen)
    assert probs.shape == (18, 100 - N_INDICATORS) and not probs.requires_grad
    torch.testing.assert_close(probs.sum(-1), torch.ones(18))


def test_model_visual_chunk_size_gives_the_same_loss_and_gradients():
    from PIL import Image

    from ovis_train.model import ModelConfig, build_model

    def loss_and_grads(chunk_size):
        torch.manual_seed(0)
        bundle = build_model(ModelConfig(preset="tiny", visual_chunk_size=chunk_size))
        images = [Image.new("RGB", (64, 64), (200, 30 * i, 40)) for i in range(3)]
        inputs = bundle.processor(text=["<image>\na red one", "<image> and <image> two"], images=images,
                                  return_tensors="pt", padding=True)
        out = bundle.model(**inputs, labels=inputs["input_ids"])
        out.loss.backward()
        return out.loss.detach(), {n: p.grad for n, p in bundle.model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads(None)
    loss, grads = loss_and_grads(7)  # 3 images x 16 tokens: 7 does not divide 48
    torch.testing.assert_close(loss, plain_loss)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_visual_chunk_size_needs_the_softmax_vet_path():
    from ovis_train.model import ModelConfig, build_model

    for bad in (dict(visual_chunk_size=0), dict(visual_chunk_size=8, tokenize_function="gumbel_argmax"),
                dict(visual_chunk_size=8, connector="mlp"), dict(visual_chunk_size=8, softmax_fp32=False)):
        with pytest.raises(ValueError, match="visual_chunk_size"):
            build_model(ModelConfig(preset="tiny", **bad))
