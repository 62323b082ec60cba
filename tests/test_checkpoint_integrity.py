"""Checkpoint digests: each kind of damage is found, the newest intact checkpoint is used (the bad one moved aside,
never counted by keep-K), and no intact checkpoint at all is a one-line error."""

import json
import logging
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stcl_jax import workdir as workdir_lib
from stcl_jax.training import checkpoint as ckpt_lib


def _iterator():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def _state(step):
    # 64 KiB of float32: the OCDBT data file is larger than the 4 KiB the XOR test flips
    return {"w": jnp.arange(16384, dtype=jnp.float32) * step, "step": jnp.int32(step)}


def _abstract():
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return {"w": jax.ShapeDtypeStruct((16384,), jnp.float32, sharding=sharding),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding)}


def _save_steps(workdir, steps, keep=5, async_save=True):
    ck = ckpt_lib.Checkpointer(str(workdir), every_steps=1, keep=keep, async_save=async_save)
    it = _iterator()
    for s in steps:
        next(it)
        ck.save(s, _state(s), it)
    ck.close()


def _largest_data_file(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
             if os.sep + "d" + os.sep in os.path.join(r, f) + os.sep or r.endswith(os.sep + "d")]
    return max(files, key=os.path.getsize)


def _flip_bit(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))


def _xor_4k(path):
    with open(path, "r+b") as f:
        f.seek(256)
        block = bytearray(f.read(4096))
        assert len(block) == 4096
        f.seek(256)
        f.write(bytes(x ^ 0xFF for x in block))


def _truncate(path, keep=0.5):
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


def _empty_folder(step_dir):
    for root, dirs, files in os.walk(step_dir, topdown=False):
        for f in files:
            os.remove(os.path.join(root, f))
        for d in dirs:
            os.rmdir(os.path.join(root, d))


DAMAGE = {
    "bit_flip": lambda d: _flip_bit(_largest_data_file(d)),
    "xor_4k": lambda d: _xor_4k(_largest_data_file(d)),
    "truncated_data": lambda d: _truncate(_largest_data_file(d)),
    "empty_step_folder": _empty_folder,
    "truncated_metadata": lambda d: _truncate(os.path.join(d, "state", "_METADATA")),
    "missing_digest": lambda d: os.remove(os.path.join(d, workdir_lib.DIGEST)),
    "data_iter_edited": lambda d: _truncate(os.path.join(d, "data_iter", "process_0-of-1.json"), 0.9),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A workdir with intact async-saved checkpoints 1, 2, 3 (copied per test)."""
    workdir = tmp_path_factory.mktemp("saved")
    _save_steps(workdir, (1, 2, 3))
    return workdir


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_every_saved_step_verifies(saved):
    directory = os.path.join(saved, "checkpoints")
    assert workdir_lib.step_folders(directory) == [1, 2, 3]
    for step in (1, 2, 3):
        assert workdir_lib.check_step(directory, step) is None
        with open(os.path.join(directory, str(step), workdir_lib.DIGEST)) as f:
            files = json.load(f)["files"]
        assert any(k.startswith("state/") for k in files) and any(k.startswith("data_iter/") for k in files)


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_newest_falls_back_to_the_newest_intact(kind, saved, tmp_path, caplog):
    workdir = _copy(saved, tmp_path / "w")
    DAMAGE[kind](os.path.join(workdir, "checkpoints", "3"))
    assert workdir_lib.check_step(os.path.join(workdir, "checkpoints"), 3) is not None
    ck = ckpt_lib.Checkpointer(str(workdir), every_steps=1, keep=5)
    with caplog.at_level(logging.WARNING, logger="stcl_jax"):
        step = ck.intact_latest_step()
    assert step == 2
    assert "checkpoint step 3" in caplog.text and "damaged" in caplog.text
    assert sorted(os.listdir(workdir / "checkpoints.bad")) == ["3", "3.reason.txt"]
    restored = ck.restore(step, _abstract(), _iterator())
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(16384, dtype=np.float32) * 2)
    ck.close()


def test_the_damaged_step_is_saved_again_and_gc_keeps_the_last_good(saved, tmp_path):
    """keep=2 with checkpoints [2, 3] and 3 damaged: resuming from 2 then saving 3 and 4 must never leave the run
    without an intact checkpoint (a bad 3 counted by keep-K would have made GC delete 2 at the save of 4)."""
    workdir = _copy(saved, tmp_path / "w")
    import shutil

    shutil.rmtree(workdir / "checkpoints" / "1")
    _xor_4k(_largest_data_file(os.path.join(workdir, "checkpoints", "3")))
    ck = ckpt_lib.Checkpointer(str(workdir), every_steps=1, keep=2)
    assert ck.intact_latest_step() == 2
    it = _iterator()
    ck.restore(2, _abstract(), it)
    assert ck.save(3, _state(3), it)
    ck.wait_until_finished()
    assert workdir_lib.newest_intact_step(ck.directory) == (3, {})
    assert ck.save(4, _state(4), it)
    ck.close()
    directory = os.path.join(workdir, "checkpoints")
    assert workdir_lib.step_folders(directory) == [3, 4]
    assert all(workdir_lib.check_step(directory, s) is None for s in (3, 4))


def test_no_intact_checkpoint_is_one_line_error(saved, tmp_path):
    workdir = _copy(saved, tmp_path / "w")
    for step in (1, 2, 3):
        _truncate(_largest_data_file(os.path.join(workdir, "checkpoints", str(step))))
    ck = ckpt_lib.Checkpointer(str(workdir), every_steps=1, keep=5)
    with pytest.raises(workdir_lib.CheckpointIntegrityError) as e:
        ck.intact_latest_step()
    ck.close()
    message = str(e.value)
    assert "\n" not in message and "step 1:" in message and "step 3:" in message and "truncated" in message


def test_synchronous_saves_are_digested_too(tmp_path):
    _save_steps(tmp_path, (1,), async_save=False)
    assert workdir_lib.check_step(os.path.join(tmp_path, "checkpoints"), 1) is None


def test_checkpoints_from_before_digests_restore_unchecked(saved, tmp_path):
    """A workdir written before digests existed: its steps are listed once as undigested and still restore;
    a step saved later without a digest is not trusted."""
    workdir = _copy(saved, tmp_path / "w")
    directory = os.path.join(workdir, "checkpoints")
    os.remove(workdir_lib.integrity_path(directory))
    for step in (1, 2, 3):
        os.remove(os.path.join(directory, str(step), workdir_lib.DIGEST))
    ck = ckpt_lib.Checkpointer(str(workdir), every_steps=1, keep=5)
    assert ck.intact_latest_step() == 3
    ck.close()
    with open(workdir_lib.integrity_path(directory)) as f:
        assert json.load(f)["undigested_steps"] == [1, 2, 3]
    _save_steps(workdir, (4,))
    os.remove(os.path.join(directory, "4", workdir_lib.DIGEST))
    assert "no sha256.json" in workdir_lib.check_step(directory, 4)
