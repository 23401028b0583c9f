"""Shard writer and make_shards: every written sample reads back equal; the offline builders."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from ovis_train.data import DataConfig, SourceConfig, build_stream, write_shards
from ovis_train.data.make_shards import main as make_shards
from ovis_train.data.offline_datasets import DIGIT_NAMES, FASHION_CLASSES
from ovis_train.data.shards import expand_urls, iter_raw_samples
from ovis_train.model import ModelConfig, build_model


def image_bytes(colour, fmt="PNG"):
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def read_back(pattern):
    return [sample for url in expand_urls(pattern) for sample in iter_raw_samples(url)]


def test_write_shards_round_trip(tmp_path):
    samples = [{"__key__": f"k{i:03d}", "png" if i % 2 else "jpg": image_bytes((i, 2 * i, 3)),
                "txt": f"caption {i} \u00e9", "json": {"caption": f"c{i}", "n": i}} for i in range(7)]
    paths = write_shards(samples, str(tmp_path), samples_per_shard=3, prefix="rt", source="test")
    manifest = json.loads((tmp_path / "rt.manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [3, 3, 1] and manifest["samples"] == 7
    assert expand_urls(manifest["pattern"]) == paths
    back = read_back(manifest["pattern"])
    assert len(back) == 7
    for want, got in zip(samples, back):
        assert got["__key__"] == want["__key__"]
        for ext in ("png", "jpg"):
            assert got.get(ext) == want.get(ext)
        assert got["txt"].decode() == want["txt"] and json.loads(got["json"]) == want["json"]
    assert not list(tmp_path.glob("*.tmp"))


def test_write_shards_rejects_keys_webdataset_would_split_or_merge(tmp_path):
    with pytest.raises(ValueError, match="must not contain"):
        write_shards([{"__key__": "a.b", "txt": "x"}], str(tmp_path), 2)
    with pytest.raises(ValueError, match="occurs twice"):
        write_shards([{"__key__": "a", "txt": "x"}, {"__key__": "a", "txt": "y"}], str(tmp_path), 2)


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    expected = {}
    for i, (name, fmt) in enumerate([("one", "PNG"), ("sub/two", "JPEG"), ("three.v2", "PNG")]):
        ext = "png" if fmt == "PNG" else "jpg"
        data = image_bytes((50 * i, 10, 10), fmt)
        (folder / f"{name}.{ext}").write_bytes(data)
        (folder / f"{name}.txt").write_text(f"picture number {i}\n")
        expected[name] = (ext, data, f"picture number {i}")
    return folder, expected


def test_make_shards_from_folder(image_folder, tmp_path):
    folder, expected = image_folder
    patterns = make_shards(["folder", str(folder), "--out", str(tmp_path / "out"), "--samples-per-shard", "2"])
    back = read_back(patterns["shard"])
    assert len(back) == 3
    by_key = {s["__key__"]: s for s in back}
    for name, (ext, data, caption) in expected.items():
        sample = by_key[name.replace("/", "_").replace(".", "_")]
        assert sample[ext] == data and sample["txt"].decode() == caption


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_make_shards_from_table(image_folder, tmp_path, fmt):
    folder, expected = image_folder
    rows = [{"file": f"{name}.{ext}", "text": caption} for name, (ext, _, caption) in expected.items()]
    table = folder / f"captions.{fmt}"
    with open(table, "w", newline="") as f:
        if fmt == "jsonl":
            f.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(f, ["file", "text"])
            writer.writeheader()
            writer.writerows(rows)
    patterns = make_shards(["table", str(table), "--out", str(tmp_path / "out"), "--image-column", "file",
                            "--caption-column", "text"])
    back = read_back(patterns["shard"])
    assert [(s[ext], s["txt"].decode()) for s, (ext, data, caption) in zip(back, expected.values())] == \
        [(data, caption) for ext, data, caption in expected.values()]


def test_make_shards_from_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (6, 6), (i * 40, 0, 0)) for i in range(4)]  # stored as PNG by datasets
    dataset = datasets.Dataset.from_dict({"image": images, "caption": [f"red level {i}" for i in range(4)]},
                                         features=datasets.Features({"image": datasets.Image(),
                                                                     "caption": datasets.Value("string")}))
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "hf"))
    patterns = make_shards(["hf", str(tmp_path / "hf"), "--split", "train", "--out", str(tmp_path / "out")])
    back = read_back(patterns["shard"])
    assert [s["txt"].decode() for s in back] == [f"red level {i}" for i in range(4)]
    for sample, image in zip(back, images):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB")), np.asarray(image))
    jpeg = image_bytes((9, 99, 199), "JPEG")  # stored bytes are copied, not re-encoded
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": [{"bytes": jpeg, "path": None}], "caption": ["blue"]},
                               features=features).save_to_disk(str(tmp_path / "hfjpeg"))
    patterns = make_shards(["hf", str(tmp_path / "hfjpeg"), "--out", str(tmp_path / "outjpeg")])
    assert read_back(patterns["shard"])[0]["jpg"] == jpeg
    patterns = make_shards(["hf", str(tmp_path / "hf"), "--split", "train", "--out", str(tmp_path / "split"),
                            "--heldout", "1"])
    train, heldout = read_back(patterns["shard"]), read_back(patterns["heldout"])
    assert len(heldout) == 1 and sorted(s["txt"].decode() for s in train + heldout) == [f"red level {i}" for i in range(4)]


def test_digits_builder_round_trip_matches_sklearn(tmp_path):
    from sklearn.datasets import load_digits

    patterns = make_shards(["digits", "--out", str(tmp_path), "--limit", "12", "--samples-per-shard", "5"])
    digits = load_digits()
    train, heldout = read_back(patterns["train"]), read_back(patterns["heldout"])
    assert len(train) == len(heldout) == 12
    indices = [{s["__key__"][-6:] for s in split} for split in (train, heldout)]
    assert not indices[0] & indices[1]
    for sample in train + heldout:
        index = int(sample["__key__"][-6:])
        pixels = np.asarray(Image.open(io.BytesIO(sample["png"])))
        assert np.array_equal(pixels, np.clip(digits.images[index] * (255 / 16), 0, 255).astype(np.uint8))
        assert sample["txt"].decode() == f"the digit {DIGIT_NAMES[digits.target[index]]}"


@pytest.mark.parametrize("name,size,captions", [
    ("fashion-mnist", 28, {f"a photo of {c}" for c in FASHION_CLASSES}),
    ("mnist-5k", 28, {f"the digit {d}" for d in DIGIT_NAMES}),
])
def test_mnist_style_builders_stream_with_the_model(tmp_path, name, size, captions):
    patterns = make_shards([name, "--out", str(tmp_path), "--limit", "16", "--samples-per-shard", "8"])
    for split in ("train", "heldout"):
        back = read_back(patterns[split])
        assert len(back) == 16 and {s["txt"].decode() for s in back} <= captions
        assert len({s["txt"] for s in back}) > 3  # shuffled before writing: not one class
        assert Image.open(io.BytesIO(back[0]["png"])).size == (size, size)
    bundle = build_model(ModelConfig(preset="tiny"))
    cfg = DataConfig(sources=[SourceConfig(urls=patterns["train"])], eval_urls=patterns["heldout"], batch_size=16)
    batch = next(iter(build_stream(cfg, bundle, split="eval")))
    assert batch["n_images"] == 16 and batch["pixel_values"].shape[-1] == 64


@pytest.mark.parametrize("name", ["digits", "mnist-5k", "mnist-5k-chat"])
def test_builders_write_what_the_data_configs_read(tmp_path, monkeypatch, name):
    """One layout: make_shards <name> with no options writes exactly the shards conf/data/<name>.yaml names."""
    from ovis_train.train.config import compose

    monkeypatch.setenv("OVIS_DATA_DIR", str(tmp_path))
    make_shards([name])
    data = compose([f"data={name.replace('-', '_')}"]).data
    for pattern, prefix in ((data.sources[0].urls, "train"), (data.eval_urls, "heldout")):
        assert expand_urls(pattern) == sorted(str(p) for p in tmp_path.glob(f"*/{prefix}-*.tar"))
