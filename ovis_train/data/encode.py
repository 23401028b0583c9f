"""Decoded sample -> token ids, labels and image tensors, using the model's own processor.

A sample is a list of segments, each tokenized on its own: the processor expands ``<image>``
in a segment into the model's placeholder block (and returns its pixel tensors); plain text goes
through the tokenizer. Only supervised segments (a caption; an assistant turn through its
end-of-turn token) carry labels. Truncation to ``max_length`` shortens text segments only: a
segment holding an image is kept whole or dropped with everything after it, so an image block
is never cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import IMAGE_MARKER
from .decode import BadSample, DecodedSample

IGNORE_INDEX = -100
PROMPT_KEYS = ("input_ids", "attention_mask")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

# Used only when the tokenizer has no chat template of its own; eos ends an assistant turn.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@dataclass
class Segment:
    text: str
    supervised: bool
    image: object = None  # PIL image when the text holds the <image> marker
    ids: list[int] | None = None  # already tokenized (batched processor call)
    image_inputs: dict | None = None


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    image_inputs: list[dict] = field(default_factory=list)  # one processor output per kept image


class SampleEncoder:
    def __init__(self, processor, tokenizer, max_length: int, caption_eos: bool):
        self.processor = processor
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.caption_eos = caption_eos
        self.end_of_turn_id = tokenizer.eos_token_id

    def encode_many(self, items: list[tuple[DecodedSample, str]]) -> list[EncodedSample | BadSample]:
        """(sample, template) pairs -> encoded samples or the BadSample each one raised, in order.
        Caption samples sharing a template go through the processor in one call (its per-call
        overhead is ~5x the per-image work at small image sizes)."""
        results: list = [None] * len(items)
        by_template: dict[str, list[int]] = {}
        for i, (sample, template) in enumerate(items):
            if sample.conversation is None:
                by_template.setdefault(template, []).append(i)
            else:
                results[i] = _outcome(lambda s=sample: self.encode(self.conversation_segments(s), conversation=True))
        for template, indices in by_template.items():
            samples = [items[i][0] for i in indices]
            for i, segments in zip(indices, self.caption_segments(samples, template)):
                results[i] = _outcome(lambda g=segments: self.encode(g, conversation=False))
        return results

    def caption_segments(self, samples: list[DecodedSample], template: str) -> list[list[Segment]]:
        captions = self.tokenizer([s.caption for s in samples], add_special_tokens=False)["input_ids"]
        prompts = self.batched_prompts(template, [s.image for s in samples])
        if prompts is None:  # tokenized one by one in encode()
            return [[Segment(template, False, s.image), Segment(s.caption, True, ids=c)]
                    for s, c in zip(samples, captions)]
        return [[Segment(template, False, s.image, ids=ids, image_inputs=inputs), Segment(s.caption, True, ids=c)]
                for s, c, (ids, inputs) in zip(samples, captions, prompts)]

    def batched_prompts(self, template: str, images: list) -> list[tuple[list[int], dict]] | None:
        """One processor call for many prompts; None where per-image outputs cannot be told apart."""
        if len(images) < 2 or self.tokenizer.pad_token is None:
            return None
        try:
            encoded = self.processor(text=[template] * len(images), images=images, return_tensors="pt", padding=True)
        except Exception:
            return None  # one image the processor rejects: the per-sample calls find which
        tensors = {k: v for k, v in encoded.items() if k not in PROMPT_KEYS and isinstance(v, torch.Tensor)}
        if any(v.shape[0] != len(images) for v in tensors.values()):
            return None  # multi-crop: how many crops belong to which image is the processor's business
        mask = encoded["attention_mask"].bool()
        return [(encoded["input_ids"][i][mask[i]].tolist(), {k: v[i: i + 1] for k, v in tensors.items()})
                for i in range(len(images))]

    def encode(self, segments: list[Segment], conversation: bool) -> EncodedSample:
        out = EncodedSample([], [])
        for segment in segments:
            room = self.max_length - len(out.input_ids)
            ids, image_inputs = self.tokenize(segment, add_special_tokens=not conversation and segment is segments[0])
            if segment.supervised and not conversation and self.caption_eos:
                ids = ids + [self.tokenizer.eos_token_id]
            if len(ids) > room and (segment.image is not None or room <= 0):
                break  # an image block is never cut: drop it and everything after it
            ids = ids[:room]
            out.input_ids += ids
            out.labels += self.labels_for(ids, segment.supervised, conversation)
            if image_inputs is not None:
                out.image_inputs.append(image_inputs)
            if len(out.input_ids) >= self.max_length:
                break
        if not any(label != IGNORE_INDEX for label in out.labels):
            if any(s.supervised for s in segments):
                raise BadSample("too_long", f"no caption/answer token fits in data.max_length={self.max_length}")
            raise BadSample("no_supervised_tokens", "no assistant turn to learn from")
        return out

    def tokenize(self, segment: Segment, add_special_tokens: bool) -> tuple[list[int], dict | None]:
        if segment.ids is not None:
            return segment.ids, segment.image_inputs
        if segment.image is None:
            return self.tokenizer(segment.text, add_special_tokens=add_special_tokens)["input_ids"], None
        try:
            encoded = self.processor(text=segment.text, images=[segment.image], return_tensors="pt",
                                     add_special_tokens=add_special_tokens)
        except Exception as e:  # e.g. an image too small or too odd for the processor's resize
            raise BadSample("unprocessable_image", f"{type(e).__name__}: {e}") from None
        image_inputs = {k: v for k, v in encoded.items() if k not in PROMPT_KEYS and isinstance(v, torch.Tensor)}
        return encoded["input_ids"][0].tolist(), image_inputs

    def labels_for(self, ids: list[int], supervised: bool, conversation: bool) -> list[int]:
        if not supervised:
            return [IGNORE_INDEX] * len(ids)
        if conversation and self.end_of_turn_id in ids:
            # supervise through the turn's end token; what the template adds after it is not the model's
            last = len(ids) - 1 - ids[::-1].index(self.end_of_turn_id)
            return ids[: last + 1] + [IGNORE_INDEX] * (len(ids) - last - 1)
        return list(ids)

    def conversation_segments(self, sample: DecodedSample) -> list[Segment]:
        messages = conversation_messages(sample)
        template = self.tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE

        def render(turns, generation_prompt):
            if not turns and not generation_prompt:
                return ""
            return self.tokenizer.apply_chat_template(turns, tokenize=False, chat_template=template,
                                                      add_generation_prompt=generation_prompt)

        pieces, done = [], ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, after = render(messages[:i], True), render(messages[: i + 1], False)
            if not (before.startswith(done) and after.startswith(before)):
                raise ValueError(
                    "the tokenizer's chat template does not render conversations prefix by prefix, so "
                    "assistant turns cannot be located; give the tokenizer a template without history rewriting"
                )
            pieces += [(before[len(done):], False), (after[len(before):], True)]
            done = after
        pieces.append((render(messages, False)[len(done):], False))
        return [Segment(text, supervised, sample.image if IMAGE_MARKER in text else None)
                for text, supervised in pieces if text]


def conversation_messages(sample: DecodedSample) -> list[dict]:
    """ShareGPT-style turns -> chat messages; the image marker is checked (and added if absent)."""
    try:
        messages = [{"role": ROLES[turn["from"]], "content": str(turn["value"])} for turn in sample.conversation]
    except (KeyError, TypeError) as e:
        raise BadSample("invalid_json", f"conversation turn without a known 'from'/'value': {e}") from None
    markers = sum(m["content"].count(IMAGE_MARKER) for m in messages)
    n_images = 0 if sample.image is None else 1
    if markers == 0 and n_images:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise BadSample("image_marker_mismatch", "image but no user turn to attach it to")
        first_user["content"] = f"{IMAGE_MARKER}\n{first_user['content']}"
        markers = 1
    if markers != n_images:
        raise BadSample("image_marker_mismatch", f"{markers} {IMAGE_MARKER} markers for {n_images} images")
    if sum(m["content"].count(IMAGE_MARKER) for m in messages if m["role"] == "assistant"):
        raise BadSample("image_marker_mismatch", "an assistant turn holds the image marker")
    return messages


def _outcome(encode):
    try:
        return encode()
    except BadSample as bad:
        return bad
