"""make_shards formats (Ovis meta-JSON, messages, folder sidecars, tables, builders): the written layout,
the held-out split (an image never in both), and build-time counts of missing / unreadable images."""

import json

import pytest
from PIL import Image

from ovis_train.data import DataConfig, SourceConfig, build_stream
from ovis_train.data.inputs import Record, split_heldout
from ovis_train.data.make_shards import main as make_shards
from ovis_train.data.shards import expand_urls, iter_raw_samples
from ovis_train.model import ModelConfig, build_model


def save_png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), colour).save(path, format="PNG")
    return path.read_bytes()


def read_back(pattern):
    return [sample for url in expand_urls(pattern) for sample in iter_raw_samples(url)]


def turns(question, answer="ok"):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def ovis_meta(tmp_path):
    """An Ovis meta-JSON with 0, 1 (a string path) and 3 images, one missing and one unreadable image."""
    data = tmp_path / "data"
    pixels = {name: save_png(data / "img" / f"{name}.png", (40 * i, 80, 120)) for i, name in enumerate("abc")}
    (data / "img" / "broken.png").write_bytes(b"not a png")
    records = [
        {"id": "one", "image": "img/a.png", "conversations": turns("<image>\nWhat is it?")},
        {"id": "three", "image": ["img/c.png", "img/a.png", "img/b.png"],
         "conversations": turns("<image>\n<image>\nCompare.", "same") + turns("<image>\nAnd this?", "other")},
        {"id": "text", "conversations": turns("Say hi.", "hi")},
        {"id": "missing", "image": "img/nope.png", "conversations": turns("<image>\nWhat?")},
        {"id": "broken", "image": ["img/broken.png"], "conversations": turns("<image>\nWhat?")},
        {"id": "one", "image": "img/b.png", "conversations": turns("<image> again")},  # a repeated id
    ]
    (data / "meta.json").write_text(json.dumps(records))
    return data / "meta.json", pixels


def test_ovis_meta_json_layout_and_build_time_counts(ovis_meta, tmp_path, capsys):
    meta, pixels = ovis_meta
    patterns = make_shards(["ovis", str(meta), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "skipped 1 samples: missing_image (first: missing:" in err
    assert "skipped 1 samples: unreadable_image (first: broken:" in err
    back = {s["__key__"]: s for s in read_back(patterns["shard"])}
    assert list(back) == ["one", "three", "text", "one_5"]
    assert {k for k in back["three"] if not k.startswith("__")} == {"0.png", "1.png", "2.png", "json"}
    assert [back["three"][f"{i}.png"] for i in range(3)] == [pixels["c"], pixels["a"], pixels["b"]]  # marker order
    assert back["one"]["0.png"] == pixels["a"]
    assert {k for k in back["text"] if not k.startswith("__")} == {"json"}
    assert json.loads(back["three"]["json"])["conversations"][2]["value"] == "<image>\nAnd this?"


def test_heldout_split_keeps_samples_sharing_an_image_together(tmp_path):
    data = tmp_path / "data"
    records = []
    for i in range(30):  # sample i shows image i // 3 and, every fifth, also image 9 - i // 3
        images = [f"img/{i // 3}.png"] + ([f"img/{9 - i // 3}.png"] if i % 5 == 0 else [])
        for path in images:
            if not (data / path).exists():
                save_png(data / path, (i, i, i))
        records.append({"id": f"s{i:02d}", "image": images,
                        "conversations": turns("<image>\n" * len(images) + "Which?")})
    records.append({"id": "text", "conversations": turns("Text only.")})
    (data / "meta.json").write_text(json.dumps(records))
    patterns = make_shards(["ovis", str(data / "meta.json"), "--out", str(tmp_path / "out"), "--heldout", "8",
                            "--samples-per-shard", "4", "--seed", "3"])
    by_key = {r["id"]: set(r.get("image", [])) for r in records}
    train = [s["__key__"] for s in read_back(patterns["shard"])]
    heldout = [s["__key__"] for s in read_back(patterns["heldout"])]
    assert sorted(train + heldout) == sorted(by_key) and 0 < len(heldout) <= 8
    train_images = set().union(*(by_key[k] for k in train))
    assert not train_images & set().union(*(by_key[k] for k in heldout))
    fraction = make_shards(["ovis", str(data / "meta.json"), "--out", str(tmp_path / "frac"), "--heldout", "0.2"])
    assert 0 < len(read_back(fraction["heldout"])) <= round(0.2 * 31)


def test_split_groups_are_transitive():
    records = [Record("a", {}, ["x"]), Record("b", {}, ["x", "y"]), Record("c", {}, ["y"]), Record("d", {}, ["z"])]
    for seed in range(6):
        train, heldout = split_heldout(records, 3, seed)
        assert [r.key for r in heldout] in (["a", "b", "c"], ["d"])  # a-b-c travel together through x and y
        assert len(train) + len(heldout) == 4


def test_messages_layout_reads_like_the_ovis_layout(ovis_meta, tmp_path):
    meta, pixels = ovis_meta
    data = meta.parent
    lines = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image><image>Same?"},
                           {"role": "assistant", "content": "yes"}], "images": ["img/a.png", "img/a.png"]},
             {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "hello"}]}]
    (data / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))  # JSON Lines too
    patterns = make_shards(["messages", str(data / "train.jsonl"), "--out", str(tmp_path / "out")])
    back = read_back(patterns["shard"])
    assert [s["__key__"] for s in back] == ["00000000", "00000001"]
    assert back[0]["0.png"] == back[0]["1.png"] == pixels["a"]
    assert json.loads(back[0]["json"])["messages"][1]["content"] == "<image><image>Same?"
    bundle = build_model(ModelConfig(preset="tiny"))
    cfg = DataConfig(sources=[SourceConfig(urls=patterns["shard"])], batch_size=2, epochs=1, shuffle=False)
    batch = next(iter(build_stream(cfg, bundle)))
    assert batch["n_images"] == 2 and batch["keys"] == ["00000000", "00000001"]


def test_image_root_overrides_the_json_folder(ovis_meta, tmp_path):
    meta, pixels = ovis_meta
    moved = tmp_path / "elsewhere.json"
    moved.write_text(meta.read_text())
    patterns = make_shards(["ovis", str(moved), "--out", str(tmp_path / "out"), "--image-root", str(meta.parent)])
    assert read_back(patterns["shard"])[0]["0.png"] == pixels["a"]


def test_folder_takes_json_sidecars_and_heldout(tmp_path):
    folder = tmp_path / "images"
    for i in range(6):
        save_png(folder / f"p{i}.png", (i * 30, 0, 0))
        if i % 2:
            (folder / f"p{i}.json").write_text(json.dumps({"conversations": turns("<image>\nColour?", "red")}))
        else:
            (folder / f"p{i}.txt").write_text(f"picture {i}")
    patterns = make_shards(["folder", str(folder), "--out", str(tmp_path / "out"), "--heldout", "2"])
    samples = read_back(patterns["shard"]) + read_back(patterns["heldout"])
    assert sorted(s["__key__"] for s in samples) == [f"p{i}" for i in range(6)]
    assert len(read_back(patterns["heldout"])) == 2
    for sample in samples:
        if int(sample["__key__"][1]) % 2:
            assert "0.png" in sample and json.loads(sample["json"])["conversations"][1]["value"] == "red"
        else:
            assert "png" in sample and sample["txt"].decode().startswith("picture")
    (folder / "p0.json").write_text("{broken")
    with pytest.raises(ValueError, match="p0.json: not valid JSON"):
        make_shards(["folder", str(folder), "--out", str(tmp_path / "bad")])


def test_table_and_builders_take_heldout(tmp_path):
    folder = tmp_path / "t"
    rows = []
    for i in range(10):
        save_png(folder / f"{i}.png", (i, 0, 0))
        rows.append({"image": f"{i}.png", "caption": f"c{i}"})
    rows.append({"image": "3.png", "caption": "the same image again"})
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    patterns = make_shards(["table", str(folder / "rows.jsonl"), "--out", str(tmp_path / "out"), "--heldout", "3"])
    captions = [{s["txt"].decode() for s in read_back(patterns[split])} for split in ("shard", "heldout")]
    assert len(captions[1]) == 3 and len(captions[0]) == 8
    assert {"c3", "the same image again"} <= captions[0] or {"c3", "the same image again"} <= captions[1]
    digits = make_shards(["digits", "--out", str(tmp_path / "digits"), "--heldout", "25", "--limit", "40"])
    assert len(read_back(digits["heldout"])) == 25 and len(read_back(digits["train"])) == 40
    with pytest.raises(SystemExit, match="--heldout must be a count"):
        make_shards(["table", str(folder / "rows.jsonl"), "--out", str(tmp_path / "x"), "--heldout", "2.5"])
