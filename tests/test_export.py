"""stcl_jax.export: a training checkpoint (training's own TrainState + Checkpointer layout, with optimizer state and
data iterator) -> params-only export -> load -> the same logits; bf16; HF safetensors round trip."""

import json

import grain
import jax
import numpy as np
import optax
import pytest

from stcl_jax import export
from stcl_jax.convert.common import flatten
from stcl_jax import workdir as workdir_lib
from stcl_jax.models import build_segmenter, model_config
from stcl_jax.models.io import load_variables
from stcl_jax.training import checkpoint as ckpt_lib
from stcl_jax.training.state import TrainState

CFG = model_config("micro", num_classes=5, window_size=4)
IMAGES = np.random.default_rng(3).normal(size=(2, 32, 48, 3)).astype(np.float32)


def _random_variables(model, seed):
    """Random variables of the model's structure (no model.init compile); BN variances positive."""
    shapes = jax.eval_shape(lambda k: model.init({"params": k, "dropout": k, "drop_path": k}, IMAGES[:1],
                                                 train=False), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
        return rng.normal(0.0, 0.1, s.shape).astype(s.dtype)
    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir as training leaves it: config.json + checkpoints/{2,4}/{state, data_iter}."""
    wd = tmp_path_factory.mktemp("run")
    model = MODEL
    with open(wd / "config.json", "w") as f:
        json.dump({"seed": 0, "model": CFG.to_dict()}, f)
    checkpointer = ckpt_lib.Checkpointer(str(wd), every_steps=2, keep=3, async_save=False)
    data_iter = iter(grain.MapDataset.range(10).to_iter_dataset())
    states = {}
    for step, seed in ((2, 1), (4, 2)):
        v = _random_variables(model, seed)
        tx = optax.adamw(1e-3)
        states[step] = TrainState(step=np.int32(step), params=v["params"], batch_stats=v["batch_stats"],
                                  opt_state=tx.init(v["params"]), rng=np.zeros(2, np.uint32))
        checkpointer.save(step, states[step], data_iter)
    checkpointer.close()
    return wd, model, states


MODEL = build_segmenter(CFG)
_APPLY = jax.jit(lambda v, x: MODEL.apply(v, x, train=False)["logits"])  # one compile per variables dtype


def _logits(variables):
    return np.asarray(_APPLY(variables, IMAGES))


def test_export_load_predict_matches_training_checkpoint(workdir, tmp_path):
    wd, model, states = workdir
    assert workdir_lib.checkpoint_steps(str(wd)) == [2, 4]
    assert export.main(["--workdir", str(wd), "--output", str(tmp_path / "e4")]) == 0
    assert export.main(["--workdir", str(wd), "--step", "2", "--output", str(tmp_path / "e2")]) == 0
    for name, step in (("e4", 4), ("e2", 2)):
        variables, cfg = load_variables(str(tmp_path / name))
        assert cfg == CFG
        assert set(variables) == {"params", "batch_stats"}          # no optimizer state, step or rng
        state = states[step]
        jax.tree.map(np.testing.assert_array_equal, variables["params"], jax.tree.map(np.asarray, state.params))
        ref = _logits({"params": state.params, "batch_stats": state.batch_stats})
        np.testing.assert_array_equal(_logits(variables), ref)
    summary = json.loads((tmp_path / "e4" / "export.json").read_text())
    assert summary["step"] == 4 and summary["dtype"] == "float32"
    # The export directory is what the inference CLIs load (pseudo_label / evaluate / predict share load_member).
    from stcl_jax.evaluation.cli import load_member
    _, v, _ = load_member(str(tmp_path / "e4"))
    jax.tree.map(np.testing.assert_array_equal, v["params"], jax.tree.map(np.asarray, states[4].params))
    # ... and a training workdir directly (newest step).
    _, v, _ = load_member(str(wd))
    jax.tree.map(np.testing.assert_array_equal, v["params"], jax.tree.map(np.asarray, states[4].params))


def test_bf16_export(workdir, tmp_path):
    wd, model, states = workdir
    export.export(str(wd), str(tmp_path / "bf"), dtype="bf16")
    variables, cfg = load_variables(str(tmp_path / "bf"))
    leaves = jax.tree.leaves(variables["params"])
    assert all(str(x.dtype) == "bfloat16" for x in leaves)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(variables["batch_stats"]))
    assert cfg == CFG
    ref = _logits({"params": states[4].params, "batch_stats": states[4].batch_stats})
    got = _logits(variables)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 2e-2  # bf16 weights: ~3 significant digits


def test_bad_inputs(workdir, tmp_path):
    wd, _, _ = workdir
    with pytest.raises(ValueError, match="--step 3"):  # one line, exit 2 under cli_errors.run (test_cli_errors)
        export.main(["--workdir", str(wd), "--step", "3", "--output", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="no checkpoints/ folder"):
        export.main(["--workdir", str(tmp_path), "--output", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="has steps \\[2, 4\\]"):
        workdir_lib.restore_variables(str(wd), 7)


def test_safetensors_round_trip_with_hf(workdir, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from stcl_jax import convert

    wd, model, states = workdir
    summary = export.export(str(wd), str(tmp_path / "e"), safetensors=True)
    st = summary["safetensors"]
    assert st["left_out"] and all(k.split("/")[1] == "projection_head" for k in st["left_out"])
    assert all(k.endswith("num_batches_tracked") or "layernorm" in k for k in st["filled"])
    hf = transformers.UperNetForSemanticSegmentation.from_pretrained(st["dir"]).eval()
    variables = {"params": states[4].params, "batch_stats": states[4].batch_stats}
    ref = _logits(variables)
    with torch.no_grad():
        hf_logits = hf(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2))).logits.numpy().transpose(0, 2, 3, 1)
    rel = np.linalg.norm(hf_logits - ref) / np.linalg.norm(ref)
    assert rel < 1e-5, rel
    # And back through the importer: every exported tensor returns unchanged.
    back, cfg = convert.from_hf_upernet(st["dir"])
    assert cfg.swin.to_dict() == CFG.swin.to_dict() and cfg.num_classes == CFG.num_classes
    flat_back = flatten(jax.tree.map(np.asarray, back))
    flat_ours = flatten(jax.tree.map(np.asarray, variables))
    for k, v in flat_ours.items():
        if k.split("/")[1] != "projection_head":
            np.testing.assert_array_equal(flat_back[k], v, err_msg=k)
