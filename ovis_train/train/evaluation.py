"""Held-out evaluation, one implementation shared by the training loop and the tools:

- ``loss_sums(model, batches, device)``: summed token loss and supervised tokens over batches (the
  held-out loss is their ratio, so it is per caption token whatever the batching; the loop sums both
  over ranks first);
- ``first_batches(stream, n)``: the first batches of a (held-out) stream;
- ``heldout_loss(bundle, urls, ...)``: the loss over the first ``limit`` samples of some shards;
- ``caption_accuracy(bundle, urls, ...)``: exact-match accuracy of greedy captions (stripped of
  surrounding whitespace, case-sensitive), the figure the demo and the sweeps report;
- ``answer_accuracy(bundle, urls, ...)``: held-out conversations answered greedily from everything
  before their final assistant turn, exact match after ``normalize_answer`` (case, punctuation and the
  articles a / an / the do not count), overall and per the samples' ``kind``. ``heldout_loss`` on the
  same shards is the loss per assistant token (conversations are supervised on assistant turns only).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field

import torch

from ovis_train.data import DataConfig, SourceConfig, build_stream
from ovis_train.data.decode import BadSample
from ovis_train.data.encode import conversation_messages
from ovis_train.data.heldout import heldout_samples
from ovis_train.model.caption import DEFAULT_PROMPT, caption, chat
from ovis_train.train.loss import supervised_tokens, token_loss_sum


@torch.no_grad()
def loss_sums(model, batches, device) -> tuple[float, int]:
    """(summed token loss, supervised tokens) over ``batches`` in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    loss_sum = sum(float(token_loss_sum(model, b, device)) for b in batches)
    model.train(was_training)
    return loss_sum, sum(supervised_tokens(b["labels"]) for b in batches)


def first_batches(stream, n: int) -> list[dict]:
    """The first ``n`` batches of ``stream`` (fewer when it ends first)."""
    batches = []
    for batch in stream if n > 0 else ():
        batches.append(batch)
        if len(batches) == n:  # stop before reading another batch
            break
    return batches


def heldout_loss(bundle, urls, template: str = DEFAULT_PROMPT, limit: int = 200, batch_size: int = 32,
                 caption_eos: bool = False) -> float:
    """Mean next-token loss per caption token over the first ``limit`` held-out samples of ``urls``."""
    # whole batches that add up to exactly `limit` samples (the held-out stream reads shards in order)
    batch_size = math.gcd(limit, batch_size)
    data = DataConfig(sources=[SourceConfig(urls=urls, template=template)], eval_urls=urls, batch_size=batch_size,
                      caption_eos=caption_eos)
    model = bundle.model
    batches = first_batches(build_stream(data, bundle, split="eval"), limit // batch_size)
    loss_sum, tokens = loss_sums(model, batches, model.device)
    return loss_sum / tokens


@dataclass
class CaptionScore:
    accuracy: float
    n: int
    examples: list[tuple[str, str, str]]  # (key, reference, generated)
    bad_counts: dict[str, int] = field(default_factory=dict)


def caption_accuracy(bundle, urls, limit: int = 200, prompt: str = DEFAULT_PROMPT, batch_size: int = 32,
                     max_new_tokens: int = 16) -> CaptionScore:
    bad = Counter()
    samples = heldout_samples(urls, limit, bad)
    if not samples:
        raise ValueError(f"no decodable held-out caption samples in {urls!r} (skipped: {dict(bad)})")
    hits, examples = 0, []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        generated = caption(bundle, [s.image for s in chunk], prompt=prompt, max_new_tokens=max_new_tokens)
        for sample, text in zip(chunk, generated):
            hits += text.strip() == sample.caption.strip()
            examples.append((sample.key, sample.caption, text))
    return CaptionScore(accuracy=hits / len(samples), n=len(samples), examples=examples, bad_counts=dict(bad))


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans(string.punctuation, " " * len(string.punctuation))


def normalize_answer(text: str) -> str:
    """``"The second."`` -> ``"second"``: lower case, punctuation as spaces, articles dropped, spaces collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


@dataclass
class KindScore:
    accuracy: float
    n: int
    majority: float  # accuracy of always giving the kind's most common (normalised) reference answer


@dataclass
class AnswerScore:
    accuracy: float
    n: int
    per_kind: dict[str, KindScore]  # samples without a "kind" count under ""
    examples: list[tuple[str, str, str]]  # (key, reference, generated)
    bad_counts: dict[str, int] = field(default_factory=dict)


ANSWER_SLACK = 4  # tokens allowed past the longest reference answer (articles, punctuation normalised away)


def answer_accuracy(bundle, urls, limit: int = 200, batch_size: int = 16, max_new_tokens: int | None = None) -> AnswerScore:
    """Exact-match accuracy (normalised) of greedy answers to the final assistant turn of the first
    ``limit`` held-out conversations; a conversation not ending with an assistant turn counts as
    ``no_final_answer``. ``max_new_tokens`` defaults to the longest reference answer's token count plus
    ``ANSWER_SLACK``: an answer much longer than every reference cannot normalise to one of them, and an
    untrained model that never stops would otherwise cost the full budget on every batch."""
    bad = Counter()
    prompts = []  # (sample, messages before the final answer, reference answer)
    for sample in heldout_samples(urls, limit, bad, conversations=True):
        try:
            messages = conversation_messages(sample)
        except BadSample as reason:
            bad[reason.reason] += 1
            continue
        if not messages or messages[-1]["role"] != "assistant":
            bad["no_final_answer"] += 1
            continue
        prompts.append((sample, messages[:-1], messages[-1]["content"]))
    if not prompts:
        raise ValueError(f"no decodable held-out conversation ending with an answer in {urls!r} (skipped: {dict(bad)})")
    if max_new_tokens is None:
        tokenizer = bundle.processor.tokenizer
        longest = max(len(tokenizer(reference, add_special_tokens=False)["input_ids"]) for _, _, reference in prompts)
        max_new_tokens = longest + ANSWER_SLACK
    hits, examples, by_kind = 0, [], {}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        answers = chat(bundle, [m for _, m, _ in chunk], [s.images for s, _, _ in chunk], max_new_tokens=max_new_tokens)
        for (sample, _, reference), answer in zip(chunk, answers):
            hit = normalize_answer(answer) == normalize_answer(reference)
            hits += hit
            by_kind.setdefault(sample.kind or "", []).append((hit, normalize_answer(reference)))
            examples.append((sample.key, reference, answer))
    per_kind = {}
    for kind, results in sorted(by_kind.items()):
        references = Counter(reference for _, reference in results)
        per_kind[kind] = KindScore(accuracy=sum(hit for hit, _ in results) / len(results), n=len(results),
                                   majority=references.most_common(1)[0][1] / len(results))
    return AnswerScore(accuracy=hits / len(prompts), n=len(prompts), per_kind=per_kind, examples=examples,
                       bad_counts=dict(bad))
