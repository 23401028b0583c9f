"""Video samples: clips encoded here with the encoders PyAV's wheel ships (no downloaded media), decoded and
sampled deterministically, fed as frame image blocks of one crop, bad videos counted, and the whole path
as a user runs it: Ovis meta-JSON / messages layout -> make_shards -> P3 on the tiny preset."""

import io
import json
import os
import re
import subprocess
import sys
import tarfile

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ovis_train.data import DataConfig, SourceConfig, build_stream, write_shards
from ovis_train.data.images import normalize_pixels
from ovis_train.data.video import FrameSampler, VideoProblem, decode_video, probe_video
from ovis_train.errors import ConfigError
from ovis_train.model import ModelConfig, build_model
from ovis_train.model.tokens import ATOM_TOKEN, INDICATOR_TOKENS
from ovis_train.train.config import compose

CHATML_WITH_EOS = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QA = [{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "It gets brighter."}]
CODECS = [("mp4", "mpeg4", "mp4"), ("webm", "libvpx", "webm"), ("matroska", "mpeg4", "mkv")]


def clip(container="mp4", codec="mpeg4", n_frames=20, fps=10, size=32) -> bytes:
    """Frame i is a flat grey of level 12 * i (mod 256), so a decoded frame tells which one it was."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 12  # key frames every 12 frames, as real videos have
        stream.bit_rate = 4_000_000  # flat grey frames come back within a level or two
        if codec == "mpeg4":
            stream.codec_context.max_b_frames = 2  # frames stored out of presentation order
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), (12 * i) % 256, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buffer.getvalue()


def frame_numbers(frames) -> list[int]:
    return [round(float(np.asarray(f).mean()) / 12) for f in frames]


@pytest.mark.parametrize("container,codec,ext", CODECS)
def test_frames_come_in_order_one_from_each_stretch(container, codec, ext):
    data = clip(container, codec)
    assert len(probe_video(data, ext)) == 20
    middle = FrameSampler(max_frames=4, jitter=False)
    assert frame_numbers(decode_video(data, ext, "k", middle)) == [2, 7, 12, 17]
    assert frame_numbers(decode_video(data, ext, "k", FrameSampler(max_frames=50))) == list(range(20))
    drawn = frame_numbers(decode_video(data, ext, "k", FrameSampler(max_frames=4, seed=1)))
    assert [n // 5 for n in drawn] == [0, 1, 2, 3]  # one frame from each quarter, in order
    # a longer clip (several key frames): frames found by seeking are the very frames a full decode gives
    data = clip(container, codec, n_frames=60)
    with av.open(io.BytesIO(data)) as video:
        every = [np.asarray(frame.to_image()) for frame in video.decode(video=0)]
    times = probe_video(data, ext)
    with av.open(io.BytesIO(data)) as video:
        assert len(times) == 60 and 1 < sum(packet.is_keyframe for packet in video.demux(video=0) if packet.size) < 30
    for sampler in (FrameSampler(max_frames=5, seed=2), FrameSampler(max_frames=3, max_seconds=2, jitter=False)):
        for key in ("a", "b"):
            got = decode_video(data, ext, key, sampler)
            picked = sampler.pick(times, key)
            assert len(got) == len(picked) and all(np.array_equal(np.asarray(g), every[i]) for g, i in zip(got, picked))


def test_sampling_is_a_function_of_key_and_seed_and_follows_fps_and_max_seconds():
    times = [i / 10 for i in range(600)]  # a 60 s video at 10 fps
    sampler = FrameSampler(max_frames=8, seed=3)
    picks = sampler.pick(times, "clip-a")
    assert picks == FrameSampler(max_frames=8, seed=3).pick(times, "clip-a")  # another reader, another process
    assert picks != sampler.pick(times, "clip-b") and picks != FrameSampler(max_frames=8, seed=4).pick(times, "clip-a")
    assert len(picks) == 8 and picks == sorted(set(picks)) and picks[0] < 75 and picks[-1] >= 525  # spans it all
    assert len(FrameSampler(max_frames=8, fps=0.1).pick(times, "k")) == 6  # 60 s at 0.1 fps
    assert len(FrameSampler(max_frames=8, fps=2).pick(times, "k")) == 8  # capped, spread over all 60 s
    window = FrameSampler(max_frames=8, max_seconds=10, seed=3).pick(times, "clip-a")
    assert len(window) == 8 and times[window[-1]] - times[window[0]] <= 10  # longer than max_seconds: sampled
    starts = {FrameSampler(max_frames=8, max_seconds=10, seed=3).pick(times, f"k{i}")[0] for i in range(5)}
    assert len(starts) > 1  # the window moves with the key
    # without jitter: the middle 10 s (frames 250..349), the middle frame of each of 8 stretches
    middle = FrameSampler(max_frames=8, max_seconds=10, jitter=False).pick(times, "k")
    assert middle == [250 + (100 * k) // 8 + ((100 * (k + 1)) // 8 - (100 * k) // 8) // 2 for k in range(8)]
    assert middle[0] == 256 and middle[-1] == 343


def test_bad_videos_are_told_apart():
    good = clip("webm", "libvpx")
    for data, reason in ((b"", "empty_video"), (b"\0" * 300, "undecodable_video"), (clip()[:900], "truncated_video"),
                         (good[: len(good) * 2 // 3], "truncated_video")):
        with pytest.raises(VideoProblem) as problem:
            probe_video(data, "x")
        assert problem.value.reason == reason


@pytest.fixture(scope="module")
def video_shard(tmp_path_factory):
    mp4 = clip()
    frames = {f"0.{i}.png": png_of_level(12 * i) for i in range(10)}  # a video given as 10 frame images
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "\nWhat happens?"}]},
                {"role": "assistant", "content": "It gets brighter."}]
    samples = [
        {"__key__": "qa", "mp4": mp4, "json": {"conversations": QA}},
        {"__key__": "nomarker", "0.mp4": mp4, "json": {"conversations": [dict(QA[0], value="What happens?"), QA[1]]}},
        {"__key__": "messages", "0.mp4": mp4, "json": {"messages": messages}},
        {"__key__": "frames", **frames, "json": {"conversations": QA}},
        {"__key__": "cut", "mp4": mp4[: len(mp4) // 2], "json": {"conversations": QA}},
        {"__key__": "empty", "0.webm": b"", "json": {"conversations": QA}},
        {"__key__": "garbage", "0.mkv": b"not a video" * 40, "json": {"conversations": QA}},
        {"__key__": "twovideos", "mp4": mp4, "json": {"conversations": [dict(QA[0], value="<video><video>"), QA[1]]}},
    ]
    return write_shards(samples, str(tmp_path_factory.mktemp("video")), samples_per_shard=10)


def png_of_level(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (level,) * 3).save(buffer, format="PNG")
    return buffer.getvalue()


def stream_for(urls, max_frames=4, jitter=False, **kw):
    bundle = build_model(ModelConfig(preset="tiny"))
    bundle.tokenizer.chat_template = CHATML_WITH_EOS
    cfg = DataConfig(sources=[SourceConfig(urls=urls)], epochs=1, shuffle=False, max_bad_fraction=1.0,
                     batch_size=8, max_length=1024, **kw)
    cfg.video.max_frames, cfg.video.jitter = max_frames, jitter  # no jitter: the middle frame of each stretch
    return bundle, build_stream(cfg, bundle)


def test_a_video_question_is_its_frames_as_image_blocks_and_only_the_answer_is_learned(video_shard):
    bundle, stream = stream_for(video_shard)
    batch = next(iter(stream))
    assert batch["keys"] == ["qa", "nomarker", "messages", "frames"]
    assert stream.bad_counts == {"truncated_video": 1, "empty_video": 1, "undecodable_video": 1,
                                 "image_marker_mismatch": 1}
    tok = bundle.tokenizer
    eos = tok.eos_token_id
    start, grid, _, _, end = tok.convert_tokens_to_ids(list(INDICATOR_TOKENS))
    block = [start] + [tok.convert_tokens_to_ids(ATOM_TOKEN)] * bundle.processor.image_seq_length + [grid, end]

    def t(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    newline = t("\n")
    prompt = t("<|im_start|>user\n") + block + newline + block + newline + block + newline + block \
        + t("\nWhat happens?") + [eos] + t("\n<|im_start|>assistant\n")
    answer = t("It gets brighter.") + [eos]
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"].bool()):
        assert ids[mask].tolist() == prompt + answer + newline  # 4 frames of one crop each, where the marker was
        assert labels[mask].tolist() == [-100] * len(prompt) + answer + [-100] * len(newline)
    # pixels: the sampled frames in order (frames 2, 7, 12, 17 of the clip; 1, 3, 6, 8 of the frame list)
    frames = decode_video(clip(), "mp4", "qa", FrameSampler(max_frames=4, jitter=False))
    assert frame_numbers(frames) == [2, 7, 12, 17]
    expected = bundle.processor.image_processor(frames, return_tensors="pt", max_patches=1)["pixel_values"]
    assert batch["n_images"] == 16 and torch.equal(normalize_pixels(batch)["pixel_values"][:4], expected)
    levels = normalize_pixels(batch)["pixel_values"][12:].mean(dim=(1, 2, 3))
    assert torch.all(levels[1:] > levels[:-1])  # the frame list's frames, in order


def test_frames_take_one_crop_and_count_against_the_visual_token_budget(video_shard):
    bundle = build_model(ModelConfig(preset="tiny", max_crops=4))
    per_crop = bundle.processor.image_seq_length
    cfg = DataConfig(sources=[SourceConfig(urls=video_shard)], epochs=1, shuffle=False, max_bad_fraction=1.0,
                     batch_size=1, max_length=1024, max_visual_tokens_per_sample=3 * per_crop)
    batch = next(iter(build_stream(cfg, bundle)))  # max_frames 8, but the budget holds 3 crops
    atom = bundle.tokenizer.convert_tokens_to_ids(ATOM_TOKEN)
    assert batch["n_images"] == 3 and batch["pixel_values"].shape[0] == 3
    assert int((batch["input_ids"] == atom).sum()) == 3 * per_crop


@pytest.fixture(scope="module")
def many_clips(tmp_path_factory):
    samples = [{"__key__": f"c{i:02d}", "mp4": clip(n_frames=12 + i), "json": {"conversations": QA}} for i in range(12)]
    return write_shards(samples, str(tmp_path_factory.mktemp("clips")), samples_per_shard=3)


def test_frames_are_the_same_in_two_readers_and_after_resume(many_clips):
    bundle = build_model(ModelConfig(preset="tiny"))
    cfg = DataConfig(sources=[SourceConfig(urls=many_clips)], batch_size=2, shuffle_buffer=3, seed=5, num_workers=2)
    cfg.video.max_frames, cfg.video.max_seconds = 3, 0.8  # jittered, in a window

    def first(stream, n):
        out = []
        for batch in stream:
            out.append(batch)
            if len(out) == n:
                return out

    reference = first(build_stream(cfg, bundle), 8)
    again = first(build_stream(cfg, bundle), 8)
    stream = build_stream(cfg, bundle)
    first(stream, 3)
    resumed = build_stream(cfg, bundle)
    resumed.load_state_dict(stream.state_dict())
    for want, got in zip(reference, again[:3] + first(resumed, 5)):
        assert want["keys"] == got["keys"] and torch.equal(want["pixel_values"], got["pixel_values"])
    # the jitter did pick different frames for different clips: not every first frame is the same
    firsts = {round(float(b["pixel_values"][k * 3].float().mean()), 3) for b in reference for k in range(2)}
    assert len(firsts) > 2


def test_meta_json_and_messages_videos_to_shards_to_p3_on_the_tiny_preset(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.mp4").write_bytes(clip())
    (raw / "b.webm").write_bytes(clip("webm", "libvpx", n_frames=15))
    (raw / "c.mkv").write_bytes(clip("matroska", "mpeg4", n_frames=6))
    (raw / "bad.mp4").write_bytes(b"not a video at all" * 10)
    for i in range(4):
        (raw / f"f{i}.png").write_bytes(png_of_level(40 * i))
    ovis = [{"id": f"v{i}", "video": "a.mp4" if i % 2 else "b.webm", "conversations": QA} for i in range(8)]
    ovis += [{"id": "frames", "video": [f"f{i}.png" for i in range(4)], "conversations": QA},
             {"id": "mixed", "image": "f0.png", "video": "a.mp4",  # the video's marker comes first
              "conversations": [{"from": "human", "value": "<video> then <image>?"}, QA[1]]},
             {"id": "bad", "video": "bad.mp4", "conversations": QA}, {"id": "c", "video": "c.mkv", "conversations": QA}]
    (raw / "meta.json").write_text(json.dumps(ovis))
    messages = [{"messages": [{"role": "user", "content": "<video>What happens?"},
                              {"role": "assistant", "content": "It gets brighter."}], "videos": ["a.mp4"]}] * 4
    (raw / "messages.json").write_text(json.dumps(messages))
    env = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "OVIS_TRAIN_CACHE": str(tmp_path / "cache"),
           **{k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "HOME")}}
    urls, stderr = [], []
    # held out: 2 records, so the two whose files no other record uses (c and bad; bad is then skipped)
    for kind, name, heldout in (("ovis", "meta.json", ["--heldout", "2"]), ("messages", "messages.json", [])):
        result = subprocess.run([sys.executable, "-m", "ovis_train.data.make_shards", kind, str(raw / name),
                                 "--out", str(tmp_path / kind), "--samples-per-shard", "4", *heldout],
                                capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        urls.append(dict(re.findall(r"^(\w+): \d+ samples in \d+ shards -> (\S+)$", result.stdout, re.M)))
        stderr.append(result.stdout + result.stderr)
    assert "skipped 1 samples: undecodable_video (first: bad:" in stderr[0] and "marker" not in stderr[0]
    assert "shard: 10 samples" in stderr[0] and "heldout: 1 samples" in stderr[0] and "shard: 4 samples" in stderr[1]
    members = {m.name: m for p in sorted((tmp_path / "ovis").glob("*.tar")) for m in tarfile.open(p).getmembers()}
    assert "bad.0.mp4" not in members and "bad.json" not in members  # skipped at build time
    assert {"mixed.0.mp4", "mixed.1.png", "frames.0.0.png", "frames.0.3.png"} <= set(members)
    tar = tarfile.open(next(p for p in (tmp_path / "ovis").glob("*.tar") if "v1.0.mp4" in tarfile.open(p).getnames()))
    assert tar.extractfile("v1.0.mp4").read() == clip()  # stored as it is, not re-encoded
    run = tmp_path / "run"
    train = f"{urls[0]['shard']}::{urls[1]['shard']}"
    command = [sys.executable, "-m", "ovis_train", "phase=p3", "model=tiny", "logger=none", f"run_dir={run}",
               "trainer.max_steps=2", "trainer.eval_every=2", "trainer.eval_batches=1", "data.batch_size=2",
               "data.video.max_frames=3", f'data.sources=[{{urls: "{train}"}}]',
               f'data.eval_urls="{urls[0]["heldout"]}"']
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "skipping bad sample" not in result.stderr
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and metrics[-1]["eval/loss"] > 0
    assert all(m["images_per_s"] > 0 for m in metrics)  # frames reached the model


def test_a_video_caption_puts_the_frames_where_the_template_has_the_image(tmp_path):
    urls = write_shards([{"__key__": "cap", "mkv": clip("matroska", "mpeg4"), "txt": "it gets brighter"}],
                        str(tmp_path), samples_per_shard=1)
    bundle, stream = stream_for(urls, max_frames=3)
    batch = next(iter(stream))
    tok = bundle.tokenizer
    start, grid, _, _, end = tok.convert_tokens_to_ids(list(INDICATOR_TOKENS))
    block = [start] + [tok.convert_tokens_to_ids(ATOM_TOKEN)] * bundle.processor.image_seq_length + [grid, end]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    prompt = tok("", add_special_tokens=True)["input_ids"] + block + newline + block + newline + block \
        + tok("\nDescription:\n", add_special_tokens=False)["input_ids"]
    caption = tok("it gets brighter", add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0].tolist() == prompt + caption
    assert batch["labels"][0].tolist() == [-100] * len(prompt) + caption
    assert batch["n_images"] == 3


def test_video_settings_are_checked_when_the_config_is_composed():
    video = compose(["data.video.fps=2", "data.video.max_seconds=30", "data.video.jitter=false"]).data.video
    assert (video.max_frames, video.fps, video.max_seconds, video.jitter) == (8, 2.0, 30.0, False)
    for override, message in (("data.video.max_frames=0", "data.video.max_frames must be >= 1, got 0"),
                              ("data.video.fps=0", "data.video.fps must be > 0 or null, got 0")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            compose([override])
