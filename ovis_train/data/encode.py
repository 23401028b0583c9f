"""Decoded samples -> token ids, labels and image tensors, a batch at a time, with the model's own processor.

A sample is text with N ``<image>`` markers plus N images (N >= 0; a caption is one turn with one image).
A ``<video>`` marker stands for its video's sampled frames: it becomes one ``<image>`` marker per frame, one
per line, as Ovis2 feeds a video (a sequence of frame images), and every frame gets one crop.
It is cut into segments, each tokenized on its own: unsupervised prompt text (system / user turns, the
template's role headers, image markers) and supervised answers (a caption; an assistant turn through its
end-of-turn token). Segments belong to turns (a prompt and its answer).

Batching. Every image of a batch is cropped and resized by the processor's rules on uint8 (images.py:
equal to the processor's output once normalised, which happens on the device); each image's grid and
the processor's own ``replace_image_token`` give its marker's placeholder block. All texts then go
through one tokenizer call; caption prompts (few distinct texts) are tokenized once and cached.

Multi-crop budget. With ``max_visual_tokens`` set, a sample's images get at most that many visual tokens
together: the crop grid per image shrinks (never below one crop, as Ovis2 does for several images); no
image is dropped for it. Video frames (one crop each) are counted first; still images share what is left.

Truncation to ``max_length`` keeps whole turns in order and drops the first turn that does not fit with
everything after it. Only when the first turn alone is too long is it cut, and only in its text: an image
block is never cut (a sample whose first turn's images do not fit is ``too_long``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .config import IMAGE_MARKER, VIDEO_MARKER
from .decode import BadSample, DecodedSample
from .images import ImagePreparer

IGNORE_INDEX = -100
PROMPT_CACHE_SIZE = 4096  # distinct caption prompts kept tokenized (templates x crop grids)
MARKER_KIND = {IMAGE_MARKER: "image", VIDEO_MARKER: "video"}
PART_MARKER = {"image": IMAGE_MARKER, "video": VIDEO_MARKER}  # content parts {"type": "image" | "video"}
_MARKERS = re.compile(f"{re.escape(IMAGE_MARKER)}|{re.escape(VIDEO_MARKER)}")
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
    turn: int  # truncation keeps or drops a turn's segments together
    images: list = field(default_factory=list)  # PIL images of the text's markers, in order
    frames: list[bool] = field(default_factory=list)  # per image: a video frame (always one crop)
    add_eos: bool = False  # a caption with data.caption_eos
    special_tokens: bool = False  # a caption's prompt: the tokenizer's special tokens, as a lone processor call adds
    answer_until_end_of_turn: bool = False  # an assistant turn: labels stop at its end-of-turn token
    ids: list[int] | None = None  # filled by the batched tokenization
    image_inputs: list[dict] = field(default_factory=list)  # one processor output per image


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    image_inputs: list[dict] = field(default_factory=list)  # one processor output per kept image


class SampleEncoder:
    def __init__(self, processor, tokenizer, max_length: int, caption_eos: bool, max_visual_tokens: int | None = None):
        self.processor = processor
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.caption_eos = caption_eos
        self.max_visual_tokens = max_visual_tokens
        self.end_of_turn_id = tokenizer.eos_token_id
        image_processor = processor.image_processor
        self.max_crops = image_processor.max_patches if image_processor.crop_to_patches else 1
        self.images = ImagePreparer(image_processor)
        self.prompt_ids: dict[str, list[int]] = {}  # caption prompt (markers expanded) -> ids, per template

    def encode_many(self, items: list[tuple[DecodedSample, str]]) -> list[EncodedSample | BadSample]:
        """(sample, caption template) pairs -> encoded samples or the BadSample each one raised, in order."""
        results: list = [None] * len(items)
        planned: dict[int, list[Segment]] = {}
        for i, (sample, template) in enumerate(items):
            try:
                planned[i] = (self.conversation_segments(sample) if sample.conversation is not None
                              else self.caption_segments(sample, template))
            except BadSample as bad:
                results[i] = bad
        for i, bad in self.process_images(planned).items():
            results[i] = bad
            del planned[i]
        self.tokenize(list(planned.values()))
        for i, segments in planned.items():
            try:
                results[i] = self.assemble(segments)
            except BadSample as bad:
                results[i] = bad
        return results

    # --- segments -------------------------------------------------------------------------------------

    def caption_segments(self, sample: DecodedSample, template: str) -> list[Segment]:
        frames = frame_flags(sample)
        if any(frames):  # a video caption: its frames where the template has the image
            template = template.replace(IMAGE_MARKER, frame_markers(len(frames)))
        return [Segment(template, False, 0, images=list(sample.images), frames=frames, special_tokens=True),
                Segment(sample.caption, True, 0, add_eos=self.caption_eos)]

    def conversation_segments(self, sample: DecodedSample) -> list[Segment]:
        """Renders the conversation prefix by prefix with the chat template to find each assistant turn."""
        messages = conversation_messages(sample)
        template = self.tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE

        def render(turns, generation_prompt):
            if not turns and not generation_prompt:
                return ""
            return self.tokenizer.apply_chat_template(turns, tokenize=False, chat_template=template,
                                                      add_generation_prompt=generation_prompt)

        pieces, done, turn = [], "", 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, after = render(messages[:i], True), render(messages[: i + 1], False)
            if not (before.startswith(done) and after.startswith(before)):
                raise ValueError(
                    "the tokenizer's chat template does not render conversations prefix by prefix, so "
                    "assistant turns cannot be located; give the tokenizer a template without history rewriting"
                )
            pieces += [(before[len(done):], False, turn), (after[len(before):], True, turn)]
            done, turn = after, turn + 1
        pieces.append((render(messages, False)[len(done):], False, turn))
        images, segments = iter(zip(sample.images, frame_flags(sample))), []
        for text, supervised, turn in pieces:
            if text:
                these = [next(images) for _ in range(text.count(IMAGE_MARKER))]
                segments.append(Segment(text, supervised, turn, answer_until_end_of_turn=supervised,
                                        images=[image for image, _ in these], frames=[f for _, f in these]))
        if next(images, None) is not None:  # the template dropped a marker
            raise BadSample("image_marker_mismatch", "the chat template did not render every <image> marker")
        return segments

    # --- batched processing ---------------------------------------------------------------------------

    def crop_limit(self, n_images: int, n_frames: int = 0) -> int:
        """Crops per still image (the processor's ``max_patches``) within the per-sample visual-token budget,
        after ``n_frames`` video frames of one crop each."""
        if not self.max_visual_tokens or n_images == 0 or self.max_crops == 1:
            return self.max_crops
        per_crop = self.processor.image_seq_length
        crops = max(0, self.max_visual_tokens - n_frames * per_crop) // (n_images * per_crop)
        # a grid of g > 1 crops comes with a whole-image thumbnail: g + 1 crops in all
        return max(1, min(self.max_crops, crops - 1 if crops >= 3 else 1))

    def process_images(self, planned: dict[int, list[Segment]]) -> dict[int, BadSample]:
        """Fills every segment's ``image_inputs`` and expands its markers; returns samples whose images failed."""
        by_limit: dict[int, list[tuple[int, Segment, int]]] = {}  # a segment's images may span two limits
        for segments in planned.values():
            for segment in segments:
                segment.image_inputs = [None] * len(segment.images)
        for i, segments in planned.items():
            n_frames = sum(sum(s.frames) for s in segments)
            limit = self.crop_limit(sum(len(s.images) for s in segments) - n_frames, n_frames)
            for segment in segments:
                for k, frame in enumerate(segment.frames):
                    by_limit.setdefault(1 if frame else limit, []).append((i, segment, k))
        failed: dict[int, BadSample] = {}
        placeholders: dict[int, list[str]] = {}  # id(segment) -> placeholder per marker
        for limit, entries in by_limit.items():
            try:
                outputs = self.images_batch([s.images[k] for _, s, k in entries], limit)
            except Exception:  # one image the processor rejects: find it, the rest of the batch still counts
                outputs = [self.one_image(s.images[k], limit) for _, s, k in entries]
            for (i, segment, k), output in zip(entries, outputs):
                if isinstance(output, BadSample):
                    failed.setdefault(i, output)
                    continue
                inputs, placeholder = output
                segment.image_inputs[k] = inputs
                placeholders.setdefault(id(segment), [None] * len(segment.images))[k] = placeholder
        for i, segments in planned.items():
            for segment in segments:
                if segment.images and i not in failed:
                    segment.text = expand_markers(segment.text, placeholders[id(segment)])
        return failed

    def images_batch(self, images: list, max_crops: int) -> list[tuple[dict, str]]:
        """(per-image uint8 inputs, placeholder text) for each image: the processor's crops and grids,
        made by the fast path (images.py), normalised later on the device."""
        prepared = self.images.prepare(images, max_crops)
        grids = {"grids": torch.tensor([grid for _, grid in prepared])}
        return [(inputs, self.processor.replace_image_token(grids, image_idx=i))
                for i, (inputs, _) in enumerate(prepared)]

    def one_image(self, image, max_crops: int):
        try:
            return self.images_batch([image], max_crops)[0]
        except Exception as e:  # e.g. an image too small or too odd for the processor's resize
            return BadSample("unprocessable_image", f"{type(e).__name__}: {e}")

    def tokenize(self, samples: list[list[Segment]]) -> None:
        """One tokenizer call for all segment texts (and one for caption prompts, which take the tokenizer's
        special tokens)."""
        segments = [segment for sample in samples for segment in sample]
        for special in (False, True):
            group = [s for s in segments if s.special_tokens == special]
            if not group:
                continue
            texts = [s.text for s in group]
            ids = self.cached_prompt_ids(texts) if special else self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            for segment, segment_ids in zip(group, ids):
                segment.ids = list(segment_ids) + ([self.tokenizer.eos_token_id] if segment.add_eos else [])

    def cached_prompt_ids(self, texts: list[str]) -> list[list[int]]:
        """Caption prompts repeat (one text per template and crop grid): each is tokenized once."""
        misses = sorted(set(texts) - self.prompt_ids.keys())
        if misses:
            if len(self.prompt_ids) + len(misses) > PROMPT_CACHE_SIZE:
                self.prompt_ids.clear()
            self.prompt_ids.update(zip(misses, self.tokenizer(misses, add_special_tokens=True)["input_ids"]))
        return [self.prompt_ids[text] for text in texts]

    # --- one sample -----------------------------------------------------------------------------------

    def assemble(self, segments: list[Segment]) -> EncodedSample:
        out = EncodedSample([], [])
        turns = sorted({s.turn for s in segments})
        for turn in turns:
            parts = [s for s in segments if s.turn == turn]
            if len(out.input_ids) + sum(len(s.ids) for s in parts) > self.max_length:
                if turn == turns[0]:
                    self.add_cut(out, parts)
                break  # later turns are dropped whole, with everything after them
            for segment in parts:
                self.add(out, segment, segment.ids)
        if not any(label != IGNORE_INDEX for label in out.labels):
            if any(s.supervised for s in segments):
                raise BadSample("too_long", f"no caption/answer token fits in data.max_length={self.max_length}")
            raise BadSample("no_supervised_tokens", "no assistant turn to learn from")
        return out

    def add_cut(self, out: EncodedSample, parts: list[Segment]) -> None:
        """The first turn, cut to fit: text is cut, an image block never (then nothing of it is kept)."""
        for segment in parts:
            room = self.max_length - len(out.input_ids)
            if len(segment.ids) <= room:
                self.add(out, segment, segment.ids)
                continue
            if segment.images:
                del out.input_ids[:], out.labels[:], out.image_inputs[:]
                return
            self.add(out, segment, segment.ids[:room])
            return

    def add(self, out: EncodedSample, segment: Segment, ids: list[int]) -> None:
        out.input_ids += ids
        out.labels += self.labels_for(ids, segment)
        out.image_inputs += segment.image_inputs

    def labels_for(self, ids: list[int], segment: Segment) -> list[int]:
        if not segment.supervised:
            return [IGNORE_INDEX] * len(ids)
        if segment.answer_until_end_of_turn and self.end_of_turn_id in ids:
            # what the template adds after the turn's end token (a newline) is not the model's to predict
            last = len(ids) - 1 - ids[::-1].index(self.end_of_turn_id)
            return ids[: last + 1] + [IGNORE_INDEX] * (len(ids) - last - 1)
        return list(ids)


def expand_markers(text: str, placeholders: list[str]) -> str:
    pieces = text.split(IMAGE_MARKER)
    assert len(pieces) == len(placeholders) + 1, (text, len(placeholders))
    return "".join(piece + placeholder for piece, placeholder in zip(pieces, placeholders)) + pieces[-1]


def conversation_messages(sample: DecodedSample) -> list[dict]:
    """Stored turns ({"from", "value"} or {"role", "content"}, content a string or a list of
    {"type": "text"|"image"|"video"} parts) -> chat messages; markers are checked against the media in
    order, and each video's marker becomes its frames' image markers."""
    messages = []
    for turn in sample.conversation:
        try:
            role = ROLES[turn["from"] if "from" in turn else turn["role"]]
            content = turn["value"] if "value" in turn else turn["content"]
        except (KeyError, TypeError) as e:
            raise BadSample("invalid_json", f"conversation turn without a known 'from'/'value' or 'role'/'content': "
                                            f"{e!r}") from None
        messages.append({"role": role, "content": content_text(content)})
    markers = [MARKER_KIND[m] for message in messages for m in _MARKERS.findall(message["content"])]
    media = sample.media or [("image", 1)] * len(sample.images)
    kinds = [kind for kind, _ in media]
    if not markers and len(media) == 1:  # the LLaVA habit: one image or video, no marker -> before the first question
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise BadSample("image_marker_mismatch", f"{kinds[0]} but no user turn to attach it to")
        first_user["content"] = f"{VIDEO_MARKER if kinds[0] == 'video' else IMAGE_MARKER}\n{first_user['content']}"
        markers = kinds
    if markers != kinds:
        raise BadSample("image_marker_mismatch", f"markers {markers} for media {kinds} (images and videos in order)")
    if any(_MARKERS.search(m["content"]) for m in messages if m["role"] == "assistant"):
        raise BadSample("image_marker_mismatch", "an assistant turn holds an image/video marker")
    frames = iter([n for kind, n in media if kind == "video"])
    for message in messages:
        message["content"] = _MARKERS.sub(lambda m: m.group(0) if m.group(0) == IMAGE_MARKER
                                          else frame_markers(next(frames)), message["content"])
    return messages


def frame_flags(sample: DecodedSample) -> list[bool]:
    """Per image of the sample: whether it is a video frame."""
    if not sample.media:  # built without media kinds: images only
        return [False] * len(sample.images)
    return [kind == "video" for kind, n in sample.media for _ in range(n)]


def frame_markers(n_frames: int) -> str:
    """What a video's marker becomes: one image marker per frame, one per line (as Ovis2 prompts a video)."""
    return "\n".join([IMAGE_MARKER] * n_frames)


def content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "image"}, {"type": "text", "text": ...}]
        try:
            return "".join(PART_MARKER.get(part["type"]) or part["text"] for part in content)
        except (KeyError, TypeError) as e:
            raise BadSample("invalid_json", f"content part without 'type'/'text': {e!r}") from None
    raise BadSample("invalid_json", f"turn content is {type(content).__name__}, not text")
