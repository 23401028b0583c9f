"""Image special tokens (the strings `Ovis2Processor` expands `<image>` into) and the offline tiny tokenizer."""

from __future__ import annotations

IMAGE_TOKEN = "<image>"  # what users write in text; the processor expands it
ATOM_TOKEN = "<IMG_ATOM>"  # one per visual token; replaced by the VET output
# Order matters: it is the order of the last VET rows in transformers' Ovis2 checkpoints
# (start, after-first-crop "grid", column separator, row separator, end).
INDICATOR_TOKENS = ("<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>")
# With fewer indicator rows (Ovis2.5 has 4), the first ones in this order get VET rows; the
# rest stay ordinary (trainable) text tokens.
INDICATOR_PRIORITY = ("<IMG_START>", "<IMG_END>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>")
IMAGE_SPECIAL_TOKENS = (IMAGE_TOKEN, ATOM_TOKEN, *INDICATOR_TOKENS)

TINY_EOS = "<|endoftext|>"
TINY_PAD = "<|pad|>"
# Fixed corpus for the tiny byte-level BPE: words the synthetic / Fashion-MNIST / digit captions use,
# so captions tokenize into few ids. Deterministic: same corpus, same merges, same ids.
_TINY_CORPUS = """Description: a red circle. a green square. a blue triangle. a yellow star. a white cross.
a black ring. a purple heart. an orange diamond. a small large shape on a dark light background.
T-shirt/top Trouser Pullover Dress Coat Sandal Shirt Sneaker Bag Ankle boot
zero one two three four five six seven eight nine 0 1 2 3 4 5 6 7 8 9 digit number
What is in the image? The image shows a picture of the object. Answer: yes no left right top bottom
User: Assistant: describe this photo caption colour color red green blue yellow white black gray"""


def add_image_tokens(tokenizer) -> None:
    """Register the image marker, atom and indicator strings as special tokens (idempotent)."""
    missing = [t for t in IMAGE_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)


def indicator_tokens(num_indicator_tokens: int) -> list[str]:
    """The indicator strings that get VET rows, in row order (see INDICATOR_PRIORITY)."""
    if num_indicator_tokens >= len(INDICATOR_TOKENS):
        return list(INDICATOR_TOKENS)
    chosen = set(INDICATOR_PRIORITY[:num_indicator_tokens])
    return [t for t in INDICATOR_TOKENS if t in chosen]


def image_token_ids(tokenizer) -> list[int]:
    """Ids of every token that `<image>` expands into (atoms and all indicators): never supervised."""
    return tokenizer.convert_tokens_to_ids([ATOM_TOKEN, *INDICATOR_TOKENS])


def build_tiny_tokenizer(vocab_size: int = 512, with_image_tokens: bool = True):
    """A byte-level BPE trained in-process on a fixed corpus: offline, deterministic, ~10 ms."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[TINY_PAD, TINY_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TINY_CORPUS.splitlines(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=TINY_PAD, eos_token=TINY_EOS)
    if with_image_tokens:
        add_image_tokens(tokenizer)
    return tokenizer
