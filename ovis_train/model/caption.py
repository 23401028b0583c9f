"""Caption images with a saved (or in-memory) model: greedy or sampled.

    python -m ovis_train.model.caption --model DIR [--sample --temperature 0.8 --top-p 0.9 --seed 0] image.png ...
"""

from __future__ import annotations

import argparse
import sys

import torch
from PIL import Image

from .bundle import ModelBundle, load_model

DEFAULT_PROMPT = "<image>\nDescription:\n"  # the P1 caption template


@torch.no_grad()
def caption(
    bundle: ModelBundle | str,
    images: list,
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 32,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: str | None = "\n",
) -> list[str]:
    """One caption per image (PIL images or paths). `prompt` must contain one `<image>`. Captions are
    cut at the first `stop` string (P1 trains captions without EOS, so they may run on)."""
    if isinstance(bundle, str):
        bundle = load_model(bundle)
    if prompt.count("<image>") != 1:
        raise ValueError(f"the caption prompt needs exactly one <image> marker, got {prompt!r}")
    images = [Image.open(i).convert("RGB") if isinstance(i, str) else i.convert("RGB") for i in images]
    inputs = bundle.processor(
        text=[prompt] * len(images), images=images, return_tensors="pt", padding=True, padding_side="left"
    ).to(bundle.model.device)
    if seed is not None:
        torch.manual_seed(seed)
    tokenizer = bundle.tokenizer
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if sample else dict(do_sample=False)
    output = bundle.model.eval().generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # P1 trains captions without EOS: end each one at `stop` instead of running to max_new_tokens
        **(dict(stop_strings=[stop], tokenizer=tokenizer) if stop else {}),
        **sampling,
    )
    texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    texts = [t.lstrip() for t in texts]
    return [(t.split(stop)[0] if stop else t).strip() for t in texts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Caption images with an ovis-train / Ovis2 model folder.")
    parser.add_argument("--model", required=True, help="export folder (or hub id)")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    captions = caption(
        args.model, args.images, prompt=args.prompt, max_new_tokens=args.max_new_tokens, sample=args.sample,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
    )
    for path, text in zip(args.images, captions):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
