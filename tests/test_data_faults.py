"""Bad inputs of the data side (docs/faults.md, "Data"): each test builds a tiny VSPW tree with one fault and checks
that the build (or the reader) orders, accepts, refuses or reports it as promised, naming the file."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from stcl_jax.data import build, records, synthetic, vspw

SIZE = (32, 48)
FRAMES = 5


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vspw") / "VSPW_480p")
    synthetic.write_synthetic_vspw(root, videos=3, frames=FRAMES, size=SIZE, seed=3)
    return root


@pytest.fixture()
def raw(tree, tmp_path):
    root = str(tmp_path / "raw")
    shutil.copytree(tree, root)
    return root


def _video(root, split="train"):
    return vspw.read_split(root, split)[0]


def _origin(root, video):
    return os.path.join(vspw.video_dir(root, video), "origin")


def _rename_frame(root, video, name, new_name, frame_ext=".jpg"):
    """Renames frame `name` (and its mask) of `video` to `new_name`, the frame with extension `frame_ext`."""
    os.rename(vspw.frame_path(root, video, name), os.path.join(_origin(root, video), new_name + frame_ext))
    if os.path.exists(vspw.mask_path(root, video, name)):
        os.rename(vspw.mask_path(root, video, name), vspw.mask_path(root, video, new_name))


def _built_names(out, split="train"):
    src = records.open_split(out, split)
    return [records.text(src[i]["frame_name"]) for i in range(len(src))]


def _build(root, out, splits=("train",), **kw):
    return build.build_dataset(root, str(out), splits=splits, progress=False, **kw)


def test_unpadded_frame_names_keep_numeric_order(raw, tmp_path):
    video = _video(raw)
    names = vspw.frame_names(raw, video)
    jpegs = [open(vspw.frame_path(raw, video, n), "rb").read() for n in names]
    for k, name in enumerate(names):                      # 8, 9, 10, 11, 12: as strings 10 < 11 < 12 < 8 < 9
        _rename_frame(raw, video, name, str(8 + k))
    assert vspw.frame_names(raw, video) == ["8", "9", "10", "11", "12"]
    out = tmp_path / "out"
    _build(raw, out)
    assert _built_names(out) == ["8", "9", "10", "11", "12"]
    src = records.open_split(str(out), "train")
    assert [src[i]["image"] for i in range(FRAMES)] == jpegs     # the frames in their video order


def test_jpeg_and_upper_case_extensions_are_frames(raw, tmp_path):
    video = _video(raw)
    names = vspw.frame_names(raw, video)
    _rename_frame(raw, video, names[1], names[1], ".jpeg")
    _rename_frame(raw, video, names[3], names[3], ".JPG")
    mask = vspw.mask_path(raw, video, names[2])
    os.rename(mask, mask[: -len(".png")] + ".PNG")
    out = tmp_path / "out"
    report = _build(raw, out)
    assert report["skipped"] == [] and _built_names(out) == names
    assert records.open_split(str(out), "train")[2]["has_label"]


@pytest.mark.parametrize("stray, reason", [("notes.txt", "not a frame file"), ("cover.png", "not a frame file"),
                                           ("frame_a.jpg", "not a frame number")])
def test_a_file_that_is_not_a_frame_is_reported_never_dropped(raw, tmp_path, stray, reason):
    video = _video(raw)
    path = os.path.join(_origin(raw, video), stray)
    shutil.copy(vspw.frame_path(raw, video, vspw.frame_names(raw, video)[0]), path)
    with pytest.raises(build.BadInputError, match=reason) as err:
        _build(raw, tmp_path / "strict")
    assert path in str(err.value)
    report = _build(raw, tmp_path / "skip", skip_bad=True)
    assert [b["path"] for b in report["skipped"]] == [path]
    assert report["splits"]["train"]["frames"] == FRAMES       # the real frames are all kept


def test_two_files_of_one_frame_are_refused_naming_both(raw, tmp_path):
    video = _video(raw)
    name = vspw.frame_names(raw, video)[2]
    first = vspw.frame_path(raw, video, name)
    second = os.path.join(_origin(raw, video), f"{int(name)}.jpeg")    # the same frame number, unpadded
    shutil.copy(first, second)
    with pytest.raises(build.BadInputError, match=f"2 files are frame {int(name)}") as err:
        _build(raw, tmp_path / "out")
    assert first in str(err.value) and second in str(err.value)


def test_a_video_in_two_splits_is_refused(raw, tmp_path):
    video = _video(raw)
    with open(vspw.split_file(raw, "val"), "a") as f:
        f.write(video + "\n")
    with pytest.raises(build.BadInputError, match=f"{video}.*listed in both .*train.txt and .*val.txt"):
        _build(raw, tmp_path / "out", splits=("train", "val"))


def test_a_frame_of_another_size_is_refused_at_build_time(raw, tmp_path):
    video = _video(raw)
    name = vspw.frame_names(raw, video)[3]
    path = vspw.frame_path(raw, video, name)
    Image.open(path).resize((SIZE[1] + 4, SIZE[0])).save(path)
    Image.open(vspw.mask_path(raw, video, name)).resize((SIZE[1] + 4, SIZE[0])).save(vspw.mask_path(raw, video, name))
    with pytest.raises(build.BadInputError, match=f"{path}: frame size 32x52 differs from 32x48 .*{video}"):
        _build(raw, tmp_path / "out")


def test_skip_bad_with_every_frame_bad_lists_them(raw, tmp_path):
    video = _video(raw)
    paths = [vspw.frame_path(raw, video, n) for n in vspw.frame_names(raw, video)]
    for p in paths:
        open(p, "wb").write(b"not a jpeg")
    with pytest.raises(build.BadInputError, match="split 'train' has no usable frame") as err:
        _build(raw, tmp_path / "out", skip_bad=True)
    assert all(p in str(err.value) for p in paths)


def test_a_split_missing_from_a_complete_build_is_an_error_saying_how(tree, tmp_path):
    out = tmp_path / "out"
    _build(tree, out)
    with pytest.raises(ValueError, match=r"has splits \['train'\], not \['val'\].*--splits train,val"):
        _build(tree, out, splits=("train", "val"))
    assert _build(tree, out)["splits"]["train"]["frames"] == FRAMES      # the complete split is still served


def test_a_stale_incomplete_folder_is_removed_with_a_line(tree, tmp_path, capsys):
    out = tmp_path / "out"
    stale = out / "vspw" / "480p" / "incomplete.ABCDEF_1.0.0"
    stale.mkdir(parents=True)
    (stale / "vspw-train.array_record-00000-of-00001").write_bytes(b"half a shard")
    _build(tree, out)
    assert not stale.exists() and f"removing {stale}" in capsys.readouterr().out
    assert os.listdir(out / "vspw" / "480p") == ["1.0.0"]


def test_a_corrupt_shard_names_the_file_and_record(tree, tmp_path):
    out = tmp_path / "out"
    n = _build(tree, out)["splits"]["train"]["frames"]    # (not opened before: readers keep open files)
    shard, = (out / "vspw" / "480p" / "1.0.0").glob("vspw-train.array_record-*")
    data = bytearray(shard.read_bytes())
    nonzero = np.flatnonzero(data)              # the records (the file is zero-padded to blocks)
    mid = int(nonzero[len(nonzero) // 3])
    data[mid: mid + 256] = bytes(b ^ 0xFF for b in data[mid: mid + 256])
    shard.write_bytes(bytes(data))
    src, bad = records.open_split(str(out), "train"), []
    for i in range(n):
        try:
            src[i]
        except records.RecordReadError as e:
            bad.append((i, str(e)))
    assert bad, "flipping 256 bytes of the shard must make a record unreadable"
    i, message = bad[0]
    assert f"record {i} of split 'train' (record {i} of shard {shard})" in message and "hash mismatch" in message
    assert np.all([m.startswith("record ") for _, m in bad])
