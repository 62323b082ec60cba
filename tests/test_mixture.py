"""Training on several datasets: VSPW clips mixed with ADE20K / COCO images (ratios, one label space through a
mapping file, single-frame samples, the STCL switch, iterator state), and the STCL mask in the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stcl_jax import losses
from stcl_jax.data import build, label_space, pipeline, records, synthetic
from stcl_jax.data.datasets import ade20k, vspw
from stcl_jax.configs.base import base_config, mixture_source
from stcl_jax.data.sources import scoring_label_space, training_sources

SIZE = (32, 48)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    vspw_raw, ade_raw = str(tmp / "vspw_raw"), str(tmp / "ade_raw")
    synthetic.write_synthetic_vspw(vspw_raw, videos=4, frames=4, size=SIZE, seed=0)
    synthetic.write_synthetic_ade20k(ade_raw, images={"train": 12, "val": 2}, size=SIZE, seed=0)
    vspw_dir, ade_dir = str(tmp / "vspw"), str(tmp / "ade")
    build.build_dataset(vspw_raw, vspw_dir, splits=("train",), progress=False)
    build.build_dataset(ade_raw, ade_dir, splits=("train",), dataset="ade20k", progress=False)
    return vspw_dir, ade_dir


def _cfg(vspw_dir, ade_dir=None, **mix):
    """Identity geometry (no rescale, full-size crop, no flip / photometric) so labels can be compared exactly."""
    c = base_config().data
    c.dir = vspw_dir
    c.num_frames, c.ref_offsets = 2, (-1, 1)
    c.base_size, c.crop_size, c.scale_range = SIZE, SIZE, (1.0, 1.0)
    c.flip_prob, c.photometric, c.cat_max_ratio = 0.0, False, 1.0
    c.worker_count, c.read_threads = 0, 1
    if ade_dir:
        c.mixture.ade20k = mixture_source(ade_dir, **{"ratio": 0.4, "label_map": "ade20k_to_vspw", **mix})
    return c


def _vspw_index(name):
    return vspw.CLASS_NAMES.index(name)


def test_mixture_ratio_label_mapping_and_single_frames(builds):
    vspw_dir, ade_dir = builds
    space, sources = training_sources(_cfg(vspw_dir, ade_dir))
    assert space.names == vspw.CLASS_NAMES and space.raw_lut is None
    assert [(s.name, s.weight, s.single_frame, s.stcl) for s in sources] == [
        ("train", pytest.approx(0.6), False, True), ("ade20k", 0.4, True, True)]
    # the shipped file, read independently: ADE class name -> VSPW train id
    mapping = {}
    for line in open(label_space.resolve_map_path("ade20k_to_vspw"), encoding="utf-8"):
        line = line.split("#")[0].strip()
        if line:
            s, t = (x.strip() for x in line.split("->"))
            mapping[s] = 255 if t == "ignore" else _vspw_index(t)
    ade_src = records.open_split(ade_dir, "train")
    it = pipeline.make_train_loader(_cfg(vspw_dir, ade_dir), seed=0, batch_size_per_host=4, with_indices=True)
    counts, checked = np.zeros(2), 0
    for _ in range(15):
        b = next(it)
        assert b["stcl"].dtype == np.bool_ and b["stcl"].all()
        for i, src in enumerate(b["source"]):
            counts[src] += 1
            if src != 1:
                continue
            rec = ade_src[int(b["index"][i, 0])]
            raw = records.decode_mask(rec["mask"])
            want = np.vectorize(lambda v: 255 if v == 0 else mapping[ade20k.CLASS_NAMES[v - 1]])(raw)
            np.testing.assert_array_equal(b["label"][i, 0], want)         # the map, pixel for pixel
            assert (b["label"][i, 1] == 255).all()                          # the repeat trains nothing
            np.testing.assert_array_equal(b["image"][i, 1], b["image"][i, 0])
            assert (b["index"][i] == b["index"][i, 0]).all()
            checked += 1
    assert checked > 5 and counts[1] / counts.sum() == pytest.approx(0.4, abs=0.12)


def test_skip_switch_marks_single_frames_out_of_stcl(builds):
    vspw_dir, ade_dir = builds
    it = pipeline.make_train_loader(_cfg(vspw_dir, ade_dir, single_frame_stcl="skip"), seed=1,
                                    batch_size_per_host=8, with_indices=True)
    b = next(it)
    np.testing.assert_array_equal(b["stcl"], b["source"] == 0)


def test_mixture_iterator_state_restores(builds):
    vspw_dir, ade_dir = builds
    it = pipeline.make_train_loader(_cfg(vspw_dir, ade_dir), seed=2, batch_size_per_host=2, with_indices=True)
    for _ in range(3):
        next(it)
    state = it.get_state()
    after = [next(it) for _ in range(3)]
    again = pipeline.make_train_loader(_cfg(vspw_dir, ade_dir), seed=2, batch_size_per_host=2, with_indices=True)
    again.set_state(state)
    for a, b in zip(after, [next(again) for _ in range(3)]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_label_space_errors_name_the_field(builds):
    vspw_dir, ade_dir = builds
    with pytest.raises(ValueError, match=r"config.data.mixture.ade20k .*150 classes differ"):
        training_sources(_cfg(vspw_dir, ade_dir, label_map=""))
    c = _cfg(vspw_dir, ade_dir, ratio=0.6)
    c.pseudo_ratio, c.pseudo_dir = 0.5, vspw_dir
    with pytest.raises(ValueError, match="must sum to less than 1"):
        training_sources(c)
    with pytest.raises(ValueError, match=r"config.data.mixture.ade20k.single_frame_stcl='off'"):
        training_sources(_cfg(vspw_dir, ade_dir, single_frame_stcl="off"))
    c = _cfg(vspw_dir, ade_dir)
    c.mixture.ade20k.dir = ""
    with pytest.raises(ValueError, match=r"config.data.mixture.ade20k.dir is empty"):
        training_sources(c)
    # ADE20K alone keeps its own 150 classes; with a map it trains VSPW's
    assert training_sources(_cfg(ade_dir))[0].num_classes == 150
    c = _cfg(ade_dir)
    c.label_map = "ade20k_to_vspw"
    space = training_sources(c)[0]
    assert space.names == vspw.CLASS_NAMES and space.raw_lut is not None
    scored = scoring_label_space(ade_dir, "ade20k_to_vspw")  # what evaluation scores the build in
    assert space.names == scored.names and np.array_equal(space.raw_lut, scored.raw_lut)


def _stcl_term(emb, labels, mask):
    small = jnp.where(jnp.asarray(mask)[:, None, None, None], labels, 255)
    return losses.spatial_temporal_consistency_loss(emb, small, temperature=0.1)


def test_masked_clip_equals_dropping_it():
    rng = np.random.default_rng(0)
    emb = jnp.asarray(rng.normal(size=(3, 2, 4, 4, 8)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=(3, 2, 4, 4)), jnp.int32)
    masked = _stcl_term(emb, labels, [True, False, True])
    dropped = losses.spatial_temporal_consistency_loss(emb[jnp.array([0, 2])], labels[jnp.array([0, 2])],
                                                       temperature=0.1)
    np.testing.assert_allclose(masked, dropped, rtol=1e-6)
    assert float(_stcl_term(emb, labels, [False, False, False])) == 0.0
    grad = jax.grad(lambda e: _stcl_term(e, labels, [True, False, True]))(emb)
    assert float(jnp.abs(grad[1]).max()) == 0.0 and float(jnp.abs(grad[0]).max()) > 0


def test_train_step_leaves_masked_clips_out_of_stcl():
    """make_train_step: batch["stcl"] all False gives an STCL term of exactly 0, True a positive one."""
    import optax

    from stcl_jax.models import build_segmenter
    from stcl_jax.training import loop
    from stcl_jax.training import state as state_lib

    from stcl_jax.configs.base import base_config, runlocal

    config = runlocal(base_config())
    model = build_segmenter(config.model)
    tx = optax.adamw(1e-4)
    state = state_lib.init_fn(model, tx, (1, 32, 32, 3))(jax.random.PRNGKey(0))
    step = jax.jit(loop.make_train_step(model, tx, lambda s: 1e-4, config))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(2, 2, 32, 32, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 4, size=(2, 2, 32, 32)), jnp.int32)}
    _, on = step(state, batch | {"stcl": jnp.array([True, True])})
    _, off = step(state, batch | {"stcl": jnp.array([False, False])})
    assert float(on["stcl"]) > 0 and float(off["stcl"]) == 0.0
    assert float(on["ce"]) == pytest.approx(float(off["ce"]), rel=1e-6)

