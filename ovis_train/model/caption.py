"""Caption images, or chat about several images, with a saved (or in-memory) model: greedy or sampled.

    python -m ovis_train.caption --model DIR [--sample --temperature 0.8 --top-p 0.9 --seed 0] image.png ...
    python -m ovis_train.caption --model DIR --ask "Which of the two images shows a bag?" a.png b.png

``caption`` writes one caption per image with a caption prompt (P1/P2 exports). ``chat`` answers
conversations rendered with the tokenizer's chat template (P3 exports): a question's ``<image>`` markers
take its images in order; a question without markers gets one per image, each on its own line before
the question (how the demo's instruction set is written). Markers that do not match the images are
one ``ValueError`` line, as is a caption prompt without exactly one marker.
"""

from __future__ import annotations

import argparse
import sys

import torch
from PIL import Image

from ovis_train.data.encode import FALLBACK_CHAT_TEMPLATE, IMAGE_MARKER

from .bundle import ModelBundle, load_model

DEFAULT_PROMPT = "<image>\nDescription:\n"  # the P1 caption template


def _bundle(bundle: ModelBundle | str) -> ModelBundle:
    return load_model(bundle) if isinstance(bundle, str) else bundle


def _rgb(images: list) -> list[Image.Image]:
    return [Image.open(i).convert("RGB") if isinstance(i, str) else i.convert("RGB") for i in images]


@torch.no_grad()
def generate(bundle: ModelBundle, texts: list[str], images: list, max_new_tokens: int, sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None, stop: str | None = None,
             add_special_tokens: bool = True) -> list[str]:
    """The continuation of each text (its ``<image>`` markers take ``images`` in order), left-padded in
    one batch, special tokens dropped, cut at the first ``stop`` string."""
    inputs = bundle.processor(text=texts, images=images or None, return_tensors="pt", padding=True,
                              padding_side="left", add_special_tokens=add_special_tokens).to(bundle.model.device)
    if seed is not None:
        torch.manual_seed(seed)
    tokenizer = bundle.tokenizer
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if sample else dict(do_sample=False)
    output = bundle.model.eval().generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **(dict(stop_strings=[stop], tokenizer=tokenizer) if stop else {}),
        **sampling,
    )
    texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [(t.lstrip().split(stop)[0] if stop else t).strip() for t in texts]


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
    if prompt.count(IMAGE_MARKER) != 1:
        raise ValueError(f"the caption prompt needs exactly one {IMAGE_MARKER} marker, got {prompt!r}")
    images = _rgb(images)
    bundle = _bundle(bundle)
    return generate(bundle, [prompt] * len(images), images, max_new_tokens, sample, temperature, top_p, seed, stop)


def question_messages(question: str, n_images: int, system: str | None = None) -> list[dict]:
    """A one-question conversation: markers as given (their count must be ``n_images``), or, when the
    question has none, one marker per image on its own line before the question."""
    markers = question.count(IMAGE_MARKER)
    if markers == 0:
        question = f"{IMAGE_MARKER}\n" * n_images + question
    elif markers != n_images:
        raise ValueError(f"the question has {markers} {IMAGE_MARKER} marker{'s' * (markers != 1)} for {n_images} "
                         f"image{'s' * (n_images != 1)}: put one marker per image, or none to show every image "
                         "before the question")
    return ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": question}]


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The text a model answers ``messages`` from: the tokenizer's chat template (else the fallback the
    trainer encodes conversations with) with the assistant's generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         chat_template=tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE)


def chat(
    bundle: ModelBundle | str,
    conversations: list[list[dict]],
    images: list[list] | None = None,
    max_new_tokens: int = 32,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[str]:
    """The assistant's reply to each conversation (``{"role", "content"}`` messages ending with a user
    turn); ``images[i]`` (PIL images or paths) fill the ``<image>`` markers of conversation ``i`` in order."""
    bundle = _bundle(bundle)
    images = images if images is not None else [[] for _ in conversations]
    if len(images) != len(conversations):
        raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
    for i, (messages, pictures) in enumerate(zip(conversations, images)):
        markers = sum(m["content"].count(IMAGE_MARKER) for m in messages)
        if markers != len(pictures):
            raise ValueError(f"conversation {i} has {markers} {IMAGE_MARKER} markers for {len(pictures)} images")
    texts = [chat_prompt(bundle.tokenizer, messages) for messages in conversations]
    flat = _rgb([p for pictures in images for p in pictures])
    # the chat template writes the special tokens a conversation needs, as when the trainer encodes one
    return generate(bundle, texts, flat, max_new_tokens, sample, temperature, top_p, seed, add_special_tokens=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovis_train.caption",
                                     description="Caption images, or ask about them, with an ovis-train / Ovis2 model folder.")
    parser.add_argument("--model", required=True, help="export folder (or hub id)")
    parser.add_argument("images", nargs="*", help="image files (captioned one by one, or all shown with --ask)")
    parser.add_argument("--ask", default=None, metavar="QUESTION",
                        help="chat mode: answer QUESTION about all the images together with the chat template; "
                             "its <image> markers place the images (none: every image before the question)")
    parser.add_argument("--system", default=None, help="chat mode: system prompt (default: the template's own)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="caption mode: the prompt (one <image> marker)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.ask is None and not args.images:
        parser.error("give image files to caption, or --ask QUESTION (with or without images)")
    decoding = dict(max_new_tokens=args.max_new_tokens, sample=args.sample, temperature=args.temperature,
                    top_p=args.top_p, seed=args.seed)
    try:
        if args.ask is not None:
            messages = question_messages(args.ask, len(args.images), args.system)
            images = _rgb(args.images)  # unreadable files fail here, before the model loads
            print(chat(args.model, [messages], [images], **decoding)[0])
            return 0
        captions = caption(args.model, args.images, prompt=args.prompt, **decoding)
    except (ValueError, OSError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    for path, text in zip(args.images, captions):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
