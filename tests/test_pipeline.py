"""stcl_jax.data.pipeline: clip sampling, output contract, determinism, resume, host sharding, pseudo mixing,
worker processes with an Orbax checkpoint."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stcl_jax.configs.base import base_config
from stcl_jax.data import build, pipeline, records, synthetic
from stcl_jax.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from stcl_jax.data.datasets import vspw


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    raw = str(tmp / "raw")
    synthetic.write_synthetic_vspw(raw, videos=5, frames=6, size=(32, 48), seed=3)
    out = str(tmp / "built")
    build.build_dataset(raw, out, splits=("train", "val"), progress=False)
    extra = str(tmp / "extra")
    video = vspw.read_split(raw, "val")[0]
    shutil.copytree(vspw.video_dir(raw, video), vspw.video_dir(extra, "1_pseudo"))
    pseudo = str(tmp / "pseudo")
    build.build_dataset(raw, pseudo, splits=("extra",), extra_frames=extra, progress=False)
    return out, pseudo


def _cfg(data_dir, **over):
    c = base_config().data
    c.dir = data_dir
    c.crop_size, c.base_size, c.num_frames, c.ref_offsets = (24, 24), (32, 48), 3, (-2, 2)
    c.worker_count, c.read_threads = 0, 1
    for k, v in over.items():
        c[k] = v
    return c


def _meta(src, i):
    r = src[i]
    return records.text(r["video"]), int(r["frame_index"]), int(r["num_frames"])


def test_clip_indices_stay_in_video_with_offsets_in_range():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        n, start = int(rng.integers(1, 9)), int(rng.integers(0, 50))
        t = int(rng.integers(0, n))
        idx = pipeline.clip_indices(rng, start + t, t, n, start, 4, (-3, 2))
        assert idx[0] == start + t and len(idx) == 4
        for i in idx[1:]:
            assert start <= i < start + n
            k = i - idx[0]
            if 0 < i - start < n - 1:                      # not clamped: the offset itself is in range
                assert k in (-3, -2, -1, 1, 2)
                seen.add(k)
    assert seen == {-3, -2, -1, 1, 2}
    with pytest.raises(ValueError, match="ref_offsets"):
        pipeline.clip_indices(rng, 0, 0, 3, 0, 2, (0, 0))


def test_batches_contract_and_clips_from_one_video(built):
    out, _ = built
    src = records.open_split(out, "train")
    it = pipeline.make_train_loader(_cfg(out), seed=0, batch_size_per_host=2, with_indices=True)
    for _ in range(4):
        b = next(it)
        assert b["image"].shape == (2, 3, 24, 24, 3) and b["image"].dtype == np.uint8     # device_normalize
        assert b["image_hw"].shape == (2, 2) and (b["image_hw"] <= 24).all()
        assert b["label"].shape == (2, 3, 24, 24) and b["label"].dtype == np.uint8
        assert set(np.unique(b["label"]).tolist()) <= set(range(vspw.NUM_CLASSES)) | {255}
        for clip in b["index"]:
            video, t, n = _meta(src, clip[0])
            for i in clip[1:]:
                v, tr, _ = _meta(src, i)
                assert v == video and (-2 <= tr - t <= 2 and tr != t or tr in (0, n - 1))


def test_host_and_device_normalisation_agree(built):
    """device_normalize=False ships float32 normalised on the host; True ships uint8 + extent that the train step
    normalises: the same batches either way."""
    import jax.numpy as jnp

    from stcl_jax.training.inputs import normalize_padded

    out, _ = built
    host = pipeline.make_train_loader(_cfg(out, device_normalize=False, scale_range=(0.5, 1.0)), seed=4,
                                      batch_size_per_host=2)
    device = pipeline.make_train_loader(_cfg(out, scale_range=(0.5, 1.0)), seed=4, batch_size_per_host=2)
    padded = 0
    for _ in range(3):
        h, d = next(host), next(device)
        padded += int((d["image_hw"] < 24).any(axis=1).sum())
        assert h["image"].dtype == np.float32 and "image_hw" not in h and np.abs(h["image"]).max() < 5
        np.testing.assert_array_equal(h["label"], d["label"])
        x = normalize_padded(jnp.asarray(d["image"]), jnp.asarray(d["image_hw"]), IMAGENET_MEAN,
                             IMAGENET_STD)
        np.testing.assert_allclose(np.asarray(x), h["image"], rtol=0, atol=2e-6)
    assert padded > 0                                     # scale 0.5-1.0 of 32x48 pads some 24x24 crops


def test_determinism_and_resume(built):
    out, _ = built
    cfg = _cfg(out)
    a = pipeline.make_train_loader(cfg, seed=5, batch_size_per_host=2)
    b = pipeline.make_train_loader(cfg, seed=5, batch_size_per_host=2)
    c = pipeline.make_train_loader(cfg, seed=6, batch_size_per_host=2)
    first = [next(a) for _ in range(3)]
    for x in first:
        y = next(b)
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(first[0]["image"], next(c)["image"])
    state = a.get_state()
    expected = [next(a) for _ in range(2)]
    resumed = pipeline.make_train_loader(cfg, seed=5, batch_size_per_host=2)
    resumed.set_state(state)
    for x in expected:
        y = next(resumed)
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_host_sharding_covers_each_query_once(built):
    out, _ = built
    n = len(records.open_split(out, "train"))
    queries = []
    for host in range(3):
        it = pipeline.make_train_loader(_cfg(out, num_frames=1), seed=1, process_index=host, process_count=3,
                                        batch_size_per_host=1, with_indices=True)
        shard = len(range(host, n, 3))
        mine = [int(next(it)["index"][0, 0]) for _ in range(shard)]
        assert sorted(mine) == list(range(host, n, 3))    # one epoch of this host = its shard, shuffled
        queries += mine
    assert sorted(queries) == list(range(n))


def test_pseudo_mixing_ratio(built):
    out, pseudo = built
    it = pipeline.make_train_loader(_cfg(out, pseudo_dir=pseudo, pseudo_ratio=0.25), seed=0, batch_size_per_host=4,
                                    with_indices=True)
    sources = np.concatenate([next(it)["source"] for _ in range(10)])
    assert sources.mean() == pytest.approx(0.25, abs=0.05)
    with pytest.raises(ValueError, match="pseudo_dir"):
        pipeline.make_train_loader(_cfg(out, pseudo_ratio=0.5), seed=0, batch_size_per_host=1)
    with pytest.raises(FileNotFoundError, match="no complete VSPW build"):
        pipeline.make_train_loader(_cfg(out + "_nope"), seed=0, batch_size_per_host=1)


_WORKER_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import grain
    import orbax.checkpoint as ocp
    from stcl_jax.configs.base import base_config
    from stcl_jax.data import pipeline

    def cfg(workers):
        c = base_config().data
        c.dir, c.crop_size, c.base_size, c.worker_count, c.read_threads = sys.argv[1], (24, 24), (32, 48), workers, 1
        return c

    if __name__ == "__main__":
        plain = pipeline.make_train_loader(cfg(0), seed=3, batch_size_per_host=2)
        ref = [next(plain) for _ in range(5)]
        it = pipeline.make_train_loader(cfg(2), seed=3, batch_size_per_host=2)
        got = [next(it) for _ in range(3)]
        mngr = ocp.CheckpointManager(sys.argv[2])
        mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        got += [next(it) for _ in range(2)]
        for x, y in zip(ref, got):
            np.testing.assert_array_equal(x["image"], y["image"])
        restored = pipeline.make_train_loader(cfg(2), seed=3, batch_size_per_host=2)
        mngr.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
        for x in ref[3:]:
            np.testing.assert_array_equal(x["label"], next(restored)["label"])
        print("WORKERS-OK")
""")


def test_worker_processes_match_and_restore_from_orbax(built, tmp_path):
    out, _ = built
    script = tmp_path / "workers.py"
    script.write_text(_WORKER_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), out, str(tmp_path / "ckpt")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert "WORKERS-OK" in proc.stdout, proc.stderr[-4000:]
