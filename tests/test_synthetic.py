"""stcl_jax.data.synthetic: the writer produces the real VSPW layout, valid labels, and is deterministic."""

import hashlib
import os

import numpy as np
from PIL import Image

from stcl_jax.data import synthetic
from stcl_jax.data.datasets import vspw
from stcl_jax.data.synthetic import cli


def _digest(root):
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            h.update(os.path.relpath(os.path.join(d, f), root).encode())
            h.update(open(os.path.join(d, f), "rb").read())
    return h.hexdigest()


def test_layout_labels_and_determinism(tmp_path):
    root = str(tmp_path / "a")
    splits = synthetic.write_synthetic_vspw(root, videos=4, frames=5, size=(40, 56), seed=1)
    assert {s: len(v) for s, v in splits.items()} == {"train": 2, "val": 1, "test": 1}
    for split in vspw.SPLITS:
        assert vspw.read_split(root, split) == splits[split]
    assert any("_" in vspw.split_video_name(v)[1] for vs in splits.values() for v in vs)
    raw_seen = set()
    for split, videos in splits.items():
        for video in videos:
            names = vspw.frame_names(root, video)
            assert len(names) == 5 and all(len(n) == 8 and n.isdigit() for n in names)
            assert names[0] != "00000000"
            if split == "test":
                assert vspw.mask_names(root, video) is None
                continue
            assert vspw.mask_names(root, video) == names
            for n in names:
                img = np.array(Image.open(vspw.frame_path(root, video, n)))
                mask = np.array(Image.open(vspw.mask_path(root, video, n)))
                assert img.shape == (40, 56, 3) and mask.shape == (40, 56) and mask.dtype == np.uint8
                assert vspw.invalid_raw_values(mask) == []
                raw_seen |= set(np.unique(mask).tolist())
    assert len(raw_seen - {0, 255}) >= 4                      # several classes
    # consecutive frames differ (motion) but stay similar
    v = splits["train"][0]
    n = vspw.frame_names(root, v)
    m0, m1 = (np.array(Image.open(vspw.mask_path(root, v, k))) for k in n[:2])
    assert 0 < (m0 != m1).mean() < 0.5
    root_b = str(tmp_path / "b")
    synthetic.write_synthetic_vspw(root_b, videos=4, frames=5, size=(40, 56), seed=1)
    assert _digest(root) == _digest(root_b)


def test_same_files_in_processes_with_different_string_hashing(tmp_path):
    """Determinism across processes: nothing may depend on set / dict-of-set order (PYTHONHASHSEED)."""
    import subprocess
    import sys

    commands = {"vspw": ["-m", "stcl_jax.data.synthetic", "--videos", "2", "--frames", "2", "--size", "24x32"],
                "ade20k": ["-m", "stcl_jax.data.synthetic", "--layout", "ade20k", "--train", "2", "--val",
                           "1", "--size", "24x32"],
                "coco": ["-m", "stcl_jax.data.synthetic", "--layout", "coco-panoptic", "--train", "2",
                         "--val", "1", "--size", "24x32"]}
    for name, args in commands.items():
        digests = set()
        for hash_seed in ("1", "2"):
            out = str(tmp_path / f"{name}_{hash_seed}")
            subprocess.run([sys.executable, *args, "--output", out], check=True, capture_output=True,
                           env={**os.environ, "PYTHONHASHSEED": hash_seed})
            digests.add(_digest(out))
        assert len(digests) == 1, name


def test_cli(tmp_path):
    cli.main(["--output", str(tmp_path), "--videos", "1", "--frames", "2", "--size", "16x24"])
    (video,) = vspw.read_split(str(tmp_path), "train")
    assert len(vspw.frame_names(str(tmp_path), video)) == 2
