"""Malformed samples are skipped or converted, and counted per reason; broken shards are named."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ovis_train.data import DataConfig, SourceConfig, build_stream, write_shards
from ovis_train.data.decode import to_rgb
from ovis_train.errors import ConfigError
from ovis_train.model import ModelConfig, build_model


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: PIL reads the header without decoding any pixel."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


RGB = Image.new("RGB", (20, 20), (10, 200, 30))
GOOD = {"png": encoded(RGB), "txt": "a green square"}
SIXTEEN_BIT = Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16))  # mode I;16
PALETTE = RGB.convert("P", palette=Image.Palette.ADAPTIVE)
RGBA = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red: must become white, not red
NOISE = Image.effect_noise((64, 64), 50).convert("RGB")  # compresses badly: 300 bytes hold only the header
CMYK = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # red in CMYK

SKIPPED = {  # key -> (sample, reason)
    "garbage": ({"png": b"this is not an image", "txt": "x"}, "undecodable_image"),
    "truncated": ({"png": encoded(NOISE)[:300], "txt": "x"}, "truncated_image"),
    "zerobytes": ({"jpg": b"", "txt": "x"}, "empty_image"),
    "nocaption": ({"png": encoded(RGB)}, "missing_caption"),
    "emptycaption": ({"png": encoded(RGB), "txt": "  \n"}, "empty_caption"),
    "latin1caption": ({"png": encoded(RGB), "txt": "caf\xe9".encode("latin-1")}, "caption_not_utf8"),
    "bomb": ({"png": png_header_only(20000, 20000), "txt": "x"}, "too_many_pixels"),
    "overlimit": ({"png": encoded(Image.new("RGB", (300, 300))), "txt": "x"}, "too_many_pixels"),
    "noimage": ({"txt": "a caption without an image"}, "missing_image"),
    "badjson": ({"png": encoded(RGB), "json": b"{not json"}, "invalid_json"),
}
CONVERTED = {  # key -> (sample, original mode)
    "sixteenbit": ({"png": encoded(SIXTEEN_BIT), "txt": "a grey square"}, "I;16"),
    "palette": ({"png": encoded(PALETTE), "txt": "a green square"}, "P"),
    "rgba": ({"png": encoded(RGBA), "txt": "a white square"}, "RGBA"),
    "cmyk": ({"jpg": encoded(CMYK, "JPEG"), "txt": "a red square"}, "CMYK"),
    "jsoncaption": ({"png": encoded(RGB), "json": {"caption": "a green square"}}, None),
}


BUNDLE = build_model(ModelConfig(preset="tiny"))


@pytest.fixture(scope="module")
def bad_shard(tmp_path_factory):
    samples = [{"__key__": f"good{i}", **GOOD} for i in range(4)]
    samples += [{"__key__": key, **sample} for key, (sample, _) in {**SKIPPED, **CONVERTED}.items()]
    return write_shards(samples, str(tmp_path_factory.mktemp("bad")), samples_per_shard=100)


def run(urls, **kw):
    cfg = DataConfig(sources=[SourceConfig(urls=urls)], batch_size=4, epochs=1, shuffle=False,
                     max_image_pixels=250 * 250, **kw)
    stream = build_stream(cfg, BUNDLE)
    keys = [key for batch in stream for key in batch["keys"]]
    return stream, keys


@pytest.mark.parametrize("num_workers", [0, 2])  # 2: counts travel back from the worker processes
def test_each_malformed_sample_is_skipped_or_converted_and_counted(bad_shard, num_workers):
    stream, keys = run(bad_shard, max_bad_fraction=1.0, num_workers=num_workers)
    assert sorted(keys) == sorted([f"good{i}" for i in range(4)] + list(CONVERTED))
    want_bad = {}
    for _, reason in SKIPPED.values():
        want_bad[reason] = want_bad.get(reason, 0) + 1
    assert stream.bad_counts == want_bad
    assert stream.converted_counts == {mode: 1 for _, mode in CONVERTED.values() if mode}
    assert stream.samples_seen == 4 + len(SKIPPED) + len(CONVERTED)
    metrics = stream.metrics()
    assert metrics["data/bad/too_many_pixels"] == 2 and metrics["data/converted/CMYK"] == 1
    assert metrics["data/bad_fraction"] == pytest.approx(len(SKIPPED) / stream.samples_seen)


def test_unusual_modes_convert_sanely():
    grey = np.asarray(to_rgb(SIXTEEN_BIT))
    assert grey.shape == (20, 20, 3) and 120 <= grey.min() <= grey.max() <= 136  # scaled, not clipped to 255
    assert np.asarray(to_rgb(RGBA)).min() == 255  # transparent -> white background
    assert tuple(np.asarray(to_rgb(PALETTE))[0, 0]) == (10, 200, 30)
    red = np.asarray(to_rgb(CMYK))[0, 0]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert to_rgb(RGB) is RGB


@pytest.mark.parametrize("num_workers", [0, 1])
def test_too_many_bad_samples_stop_with_a_message_naming_the_limit(bad_shard, num_workers):
    with pytest.raises(RuntimeError, match=r"data\.max_bad_fraction=0\.2 exceeded.*Fix or rebuild"):
        run(bad_shard, max_bad_fraction=0.2, bad_check_min_samples=5, num_workers=num_workers)


def test_missing_shard_names_the_path(bad_shard, tmp_path):
    missing = str(tmp_path / "nope-000003.tar")
    with pytest.raises(ConfigError, match="nope-000003.tar"):
        run([bad_shard[0], missing])


def test_unreadable_shard_names_the_path(tmp_path):
    broken = tmp_path / "broken-000000.tar"
    broken.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(OSError, match="broken-000000.tar"):
        run([str(broken)])
