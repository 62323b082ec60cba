"""CSWin Transformer encoder (stcl_jax.models.backbones.cswin) and its importer (stcl_jax.convert.cswin).

No PyTorch CSwin package is installed here, so nothing compares the encoder numerically with the official model.
Checked instead: the classification models' parameter counts; the official state-dict layout (written out below
from the official module structure) importing 1:1; stage shapes on odd input sizes; the conv embedding against
torch's conv arithmetic; a CSWin block against an independent float64 NumPy implementation of the cross-shaped
window attention (centred zero padding, stripes, LePE); the segmenter and two training steps on it.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stcl_jax.convert.__main__ import main as convert_main
from stcl_jax.sweep import load_config_module
from stcl_jax.convert.cswin import convert_state_dict, from_cswin_official
from stcl_jax.models import build_segmenter, model_config
from stcl_jax.models.backbones import CSWinConfig, CSWinTransformer
from stcl_jax.models.backbones.cswin import CSWinBlock, ConvNorm
from stcl_jax.models.config import config_from_dict
from stcl_jax.models.io import load_variables
from test_paper_configs import train_runlocal_two_steps  # tests/ is on sys.path under pytest (no __init__.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNGS = {n: jax.random.key(0) for n in ("params", "dropout", "drop_path")}


def n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def encoder_params(cfg):
    """Abstract params of the encoder of model config `cfg` (no allocation)."""
    encoder = CSWinTransformer(CSWinConfig.of(cfg.cswin))
    return jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(ours - ref) / np.linalg.norm(ref)


# Parameter counts ---------------------------------------------------------------------------------------------------
# The official models/cswin.py counts (sum of numel of its CSWin_*_224 / _384 modules, 1000 classes), measured by
# instantiating that code; the paper and README publish 23M, 35M, 78M, 173M: T and B round to 22M and 77M, so the
# published T/B figures are not nearest-million roundings of the released code's counts.
OFFICIAL_CLASSIFIER_PARAMS = {"cswin_t": 22_320_552, "cswin_s": 34_643_304, "cswin_b": 77_382_184,
                              "cswin_l": 173_262_664}
PUBLISHED_MILLIONS = {"cswin_t": 23, "cswin_s": 35, "cswin_b": 78, "cswin_l": 173}


@pytest.mark.parametrize("size", list(OFFICIAL_CLASSIFIER_PARAMS))
def test_classifier_parameter_counts(size):
    """Our encoder with the classifier's head (final norm on stage 4 + a 1000-class Linear) instead of the four
    output norms has the official classification model's parameters, within 1M of the published figure."""
    params = encoder_params(model_config(size))
    width = model_config(size).cswin.embed_dim * 8
    ours = n_params(params) - sum(n_params(params[f"norm{i}"]) for i in range(1, 5)) + 2 * width + width * 1000 + 1000
    assert ours == OFFICIAL_CLASSIFIER_PARAMS[size]
    assert abs(ours / 1e6 - PUBLISHED_MILLIONS[size]) < 1.0


def test_upernet_cswin_l_parameter_count():
    """The README's UperNet-CSwin-L (ADE20K, 150 classes) has 208M parameters: stage 4 must have 1152 channels (the
    classification layout); the segmentation code's heads-ratio width (576) would give about 177M."""
    cfg = model_config("cswin_l", num_classes=150)
    params = jax.eval_shape(build_segmenter(cfg).init, RNGS, jnp.zeros((1, 64, 64, 3)))["params"]
    assert round((n_params(params) - n_params(params["projection_head"])) / 1e6) == 208


# The official state-dict layout -------------------------------------------------------------------------------------
def official_state_dict_shapes(embed_dim, depths, *, segmentation, classes=1000):
    """{key: torch shape} of the official state dict, written from the official modules: `stage1_conv_embed`
    (Conv2d(3, C, 7, 4, 2), Rearrange, LayerNorm), `stage{i}` ModuleLists of CSWinBlock (qkv, proj, norm1, norm2,
    attns[k].get_v = Conv2d(d/b, d/b, 3, groups=d/b) for b branches: 2, 1 in the last stage, mlp.fc1/fc2),
    `merge{i}` (Conv2d(d, 2d, 3, 2, 1), LayerNorm) and norm1..norm4 (segmentation) or norm + head (classifier)."""
    shapes = {"stage1_conv_embed.0.weight": (embed_dim, 3, 7, 7), "stage1_conv_embed.0.bias": (embed_dim,),
              "stage1_conv_embed.2.weight": (embed_dim,), "stage1_conv_embed.2.bias": (embed_dim,)}
    for i, depth in enumerate(depths):
        d = embed_dim * 2 ** i
        if i:
            shapes.update({f"merge{i}.conv.weight": (d, d // 2, 3, 3), f"merge{i}.conv.bias": (d,),
                           f"merge{i}.norm.weight": (d,), f"merge{i}.norm.bias": (d,)})
        branches = 1 if i == 3 else 2
        for j in range(depth):
            p = f"stage{i + 1}.{j}."
            shapes.update({p + "qkv.weight": (3 * d, d), p + "qkv.bias": (3 * d,), p + "proj.weight": (d, d),
                           p + "proj.bias": (d,), p + "mlp.fc1.weight": (4 * d, d), p + "mlp.fc1.bias": (4 * d,),
                           p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,)})
            shapes.update({p + f"{n}.{t}": (d,) for n in ("norm1", "norm2") for t in ("weight", "bias")})
            for k in range(branches):
                shapes.update({p + f"attns.{k}.get_v.weight": (d // branches, 1, 3, 3),
                               p + f"attns.{k}.get_v.bias": (d // branches,)})
        if segmentation:
            shapes.update({f"norm{i + 1}.weight": (d,), f"norm{i + 1}.bias": (d,)})
    if not segmentation:
        last = embed_dim * 8
        shapes.update({"norm.weight": (last,), "norm.bias": (last,), "head.weight": (classes, last),
                       "head.bias": (classes,)})
    return shapes


def our_leaf(params, key):
    """Our leaf for an official key, by this test's own reading of the layout (Flax kernels (in, out) /
    (kh, kw, in, out))."""
    parts = key.replace("stage1_conv_embed.0", "stage1_conv_embed.conv").replace(
        "stage1_conv_embed.2", "stage1_conv_embed.ln").replace("attns.", "attns_").split(".")
    if parts[0].startswith("stage") and parts[1].isdigit():
        parts[1] = f"blocks_{parts[1]}"
    node = params
    for p in parts[:-1]:
        node = node[p]
    return node["bias" if parts[-1] == "bias" else "kernel" if "kernel" in node else "scale"]


def torch_layout(leaf):
    leaf = np.asarray(leaf)
    return leaf.transpose(3, 2, 0, 1) if leaf.ndim == 4 else leaf.T if leaf.ndim == 2 else leaf


def random_state_dict(shapes, seed=0, prefix=""):
    rng = np.random.default_rng(seed)
    return {prefix + k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


MICRO = model_config("micro", backbone="cswin")


@pytest.mark.parametrize("layout", ["segmentation", "classifier"])
def test_official_layout_maps_one_to_one(layout):
    seg = layout == "segmentation"
    c = MICRO.cswin
    sd = random_state_dict(official_state_dict_shapes(c.embed_dim, c.depths, segmentation=seg),
                           prefix="backbone." if seg else "")
    variables, cfg, report = convert_state_dict(sd, num_heads=c.num_heads, split_size=c.split_size)
    assert cfg.backbone == "cswin" and cfg.cswin.embed_dim == c.embed_dim and tuple(cfg.cswin.depths) == c.depths
    assert (tuple(cfg.cswin.num_heads), tuple(cfg.cswin.split_size)) == (c.num_heads, c.split_size)
    params = variables["params"]["backbone"]
    expected = encoder_params(cfg)
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), params, expected)
    classifier = {k for k in sd if k.split(".")[0] in ("norm", "head")}
    assert sorted(report.loaded) == sorted(set(sd) - classifier) and sorted(report.unused) == sorted(classifier)
    assert len(report.loaded) == len(set(report.loaded))
    output_norms = 0 if seg else sum(2 * c.embed_dim * 2 ** i for i in range(4))
    assert n_params(params) == sum(v.size for k, v in sd.items() if k not in classifier) + output_norms
    for key, value in sd.items():
        if key not in classifier:
            np.testing.assert_array_equal(torch_layout(our_leaf(params, key.removeprefix("backbone."))), value,
                                          err_msg=key)
    if not seg:  # the per-stage output norms: LayerNorm init, reported
        assert len(report.missing) == 8 and float(np.asarray(params["norm3"]["scale"]).min()) == 1.0


def test_real_size_recognised_from_the_tensors():
    """A CSwin-T classification state dict: heads from the size, (1, 2, 7, 7) stripes; the {"state_dict": ...}
    wrapper of the official release files is unwrapped."""
    sd = {k: np.zeros(s, np.float32) for k, s in official_state_dict_shapes(64, (1, 2, 21, 1),
                                                                             segmentation=False).items()}
    variables, cfg = from_cswin_official({"state_dict": sd})
    assert cfg.size == "cswin_t" and cfg.cswin == model_config("cswin_t").cswin
    assert n_params(variables) == n_params(encoder_params(cfg))


def test_importer_errors_name_the_key():
    c = MICRO.cswin
    shapes = official_state_dict_shapes(c.embed_dim, c.depths, segmentation=True)
    kw = dict(num_heads=c.num_heads)
    with pytest.raises(ValueError, match=r"'stage2\.0\.attn\.rpb\.weight' has no place"):
        convert_state_dict({**random_state_dict(shapes), "stage2.0.attn.rpb.weight": np.zeros(3, np.float32)}, **kw)
    with pytest.raises(ValueError, match=r"stage4\.0\.attns\.1\.get_v\.weight' has no place"):
        convert_state_dict(random_state_dict({**shapes, "stage4.0.attns.1.get_v.weight": (64, 1, 3, 3)}), **kw)
    with pytest.raises(ValueError, match=r"no stage3\.1\.mlp\.fc2\.weight"):
        convert_state_dict(random_state_dict({k: s for k, s in shapes.items() if k != "stage3.1.mlp.fc2.weight"}),
                           **kw)
    with pytest.raises(ValueError, match=r"merge2\.conv\.weight gives"):
        convert_state_dict(random_state_dict({**shapes, "merge2.conv.weight": (64, 16, 3, 3)}), **kw)
    with pytest.raises(ValueError, match="pass num_heads="):
        convert_state_dict(random_state_dict(shapes))
    with pytest.raises(ValueError, match="both map to"):
        sd = random_state_dict(shapes)
        convert_state_dict({**sd, "backbone.norm1.bias": sd["norm1.bias"]}, **kw)


def test_convert_cli(tmp_path, capsys):
    from safetensors.numpy import save_file

    shapes = official_state_dict_shapes(64, (1, 2, 21, 1), segmentation=False, classes=10)
    sd = random_state_dict(shapes)
    save_file(sd, str(tmp_path / "cswin_t.safetensors"))
    assert convert_main(["--from", "cswin-official", "--input", str(tmp_path / "cswin_t.safetensors"),
                         "--output", str(tmp_path / "out")]) == 0
    assert "cswin depths (1, 2, 21, 1)" in capsys.readouterr().out
    loaded, cfg = load_variables(str(tmp_path / "out"))
    assert cfg.size == "cswin_t" and cfg.backbone == "cswin"
    np.testing.assert_array_equal(loaded["params"]["backbone"]["stage3"]["blocks_20"]["attns_1"]["get_v"]["kernel"],
                                  sd["stage3.20.attns.1.get_v.weight"].transpose(2, 3, 1, 0))


# Shapes on odd input sizes ------------------------------------------------------------------------------------------
def torch_conv_size(n, kernel, stride, pad):
    return (n + 2 * pad - kernel) // stride + 1


@pytest.mark.parametrize("split", [None, (1, 2, 7, 7)], ids=["micro_split", "real_split"])
@pytest.mark.parametrize("hw", [(67, 45), (97, 129)])
def test_stage_shapes_on_odd_sizes(hw, split):
    cfg = model_config("micro", backbone="cswin", **({"cswin.split_size": split} if split else {}))
    encoder = CSWinTransformer(CSWinConfig.of(cfg.cswin))
    x = jnp.zeros((2, *hw, 3))
    outs = jax.eval_shape(lambda: encoder.init_with_output(jax.random.key(0), x)[0])
    h, w = (torch_conv_size(n, 7, 4, 2) for n in hw)
    for i, out in enumerate(outs):
        if i:
            h, w = torch_conv_size(h, 3, 2, 1), torch_conv_size(w, 3, 2, 1)
        assert out.shape == (2, h, w, cfg.cswin.embed_dim * 2 ** i), (i, out.shape)


def test_conv_embedding_matches_torch_conv_arithmetic():
    """stage1_conv_embed on an odd size equals torch's Conv2d(7, stride 4, padding 2) + LayerNorm."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((1, 3, 45, 67)).astype(np.float32)
    embed = ConvNorm(8, 7, 4, 2, "ln")
    params = embed.init(jax.random.key(1), x.transpose(0, 2, 3, 1))
    ours = embed.apply(params, x.transpose(0, 2, 3, 1))
    p = params["params"]
    weight = torch.from_numpy(np.asarray(p["conv"]["kernel"]).transpose(3, 2, 0, 1).copy())
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), weight, torch.from_numpy(np.array(p["conv"]["bias"])),
                                     stride=4, padding=2).permute(0, 2, 3, 1)
    ref = torch.nn.functional.layer_norm(ref, (8,), torch.from_numpy(np.array(p["ln"]["scale"])),
                                         torch.from_numpy(np.array(p["ln"]["bias"])), 1e-5).numpy()
    assert ours.shape == ref.shape == (1, 11, 17, 8) and rel_err(ours, ref) < 1e-5


# Cross-shaped window attention against an independent reference -----------------------------------------------------
def layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * p["scale"] + p["bias"]


def reference_branch(q, k, v, heads, rows, cols, conv):
    """One stripe-attention branch, window by window in float64: the (B, H, W, c) maps zero-padded centred
    (the odd pixel at the bottom / right) to multiples of (rows, cols); per window and head softmax(q k^T /
    sqrt(d)) v, plus LePE: a 3x3 depth-wise conv of the window's v with zeros outside the window; cropped back."""
    b, h, w, c = q.shape
    top, left = ((-h) % rows) // 2, ((-w) % cols) // 2
    hp, wp = h + (-h) % rows, w + (-w) % cols
    padded = []
    for t in (q, k, v):
        z = np.zeros((b, hp, wp, c))
        z[:, top:top + h, left:left + w] = t
        padded.append(z)
    q, k, v = padded
    hd = c // heads
    out = np.zeros((b, hp, wp, c))
    kernel, bias = np.asarray(conv["kernel"], np.float64)[:, :, 0, :], np.asarray(conv["bias"], np.float64)
    for n in range(b):
        for r0 in range(0, hp, rows):
            for c0 in range(0, wp, cols):
                win = (n, slice(r0, r0 + rows), slice(c0, c0 + cols))
                qw, kw, vw = (t[win].reshape(rows * cols, c) for t in (q, k, v))
                ow = np.zeros((rows * cols, c))
                for head in range(heads):
                    s = slice(head * hd, (head + 1) * hd)
                    logits = qw[:, s] @ kw[:, s].T / np.sqrt(hd)
                    probs = np.exp(logits - logits.max(-1, keepdims=True))
                    ow[:, s] = (probs / probs.sum(-1, keepdims=True)) @ vw[:, s]
                vpad = np.pad(v[win], ((1, 1), (1, 1), (0, 0)))
                lepe = bias + sum(vpad[dy:dy + rows, dx:dx + cols] * kernel[dy, dx] for dy in range(3)
                                  for dx in range(3))
                out[win] = ow.reshape(rows, cols, c) + lepe
    return out[:, top:top + h, left:left + w]


def reference_block(x, p, heads, split, full):
    gelu = lambda t: 0.5 * t * (1 + np.vectorize(math.erf)(t / np.sqrt(2)))  # noqa: E731
    dense = lambda t, q: t @ q["kernel"] + q["bias"]  # noqa: E731
    b, h, w, c = x.shape
    q, k, v = np.split(dense(layer_norm(x, p["norm1"]), p["qkv"]), 3, axis=-1)
    if full:
        y = reference_branch(q, k, v, heads, h, w, p["attns_0"]["get_v"])
    else:
        half = c // 2
        y = np.concatenate([
            reference_branch(q[..., :half], k[..., :half], v[..., :half], heads // 2, h, split,
                             p["attns_0"]["get_v"]),
            reference_branch(q[..., half:], k[..., half:], v[..., half:], heads // 2, split, w,
                             p["attns_1"]["get_v"])], axis=-1)
    x = x + dense(y, p["proj"])
    return x + dense(gelu(dense(layer_norm(x, p["norm2"]), p["mlp"]["fc1"])), p["mlp"]["fc2"])


@pytest.mark.parametrize("full", [False, True], ids=["cross_shaped", "full_attention"])
def test_block_matches_numpy_reference(full):
    """A CSWin block on a 7x5 map with stripes of 3 (both branches padded: 5 -> 6 columns, 7 -> 9 rows, the
    latter with a padded row on top) equals the float64 reference to 1e-5."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 5, 16)).astype(np.float32)
    block = CSWinBlock(num_heads=4, split=3, full_attention=full)
    params = jax.eval_shape(block.init, jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda t: rng.standard_normal(t.shape).astype(np.float32) * 0.5, params)
    ours = jax.jit(block.apply)({"params": params}, x)
    ref = reference_block(x.astype(np.float64), jax.tree.map(lambda t: np.asarray(t, np.float64), params), 4, 3, full)
    assert rel_err(ours, ref) < 1e-5


def test_bfloat16_block_close_to_float32():
    """bfloat16 compute (float32 logits, probabilities rounded by `softmax_low_precision`) stays close to the
    float32 block; the whole encoder's outputs are bfloat16."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 5, 16)).astype(np.float32)
    block = CSWinBlock(num_heads=4, split=3)
    params = jax.tree.map(lambda t: rng.standard_normal(t.shape).astype(np.float32) * 0.5,
                          jax.eval_shape(block.init, jax.random.key(0), x)["params"])
    ref = jax.jit(block.apply)({"params": params}, x)
    ours = jax.jit(CSWinBlock(num_heads=4, split=3, dtype=jnp.bfloat16).apply)({"params": params}, x)
    assert ours.dtype == jnp.float32 and rel_err(ours, ref) < 2e-2  # the residual stream keeps the input dtype
    encoder = CSWinTransformer(CSWinConfig.of(MICRO.cswin), dtype=jnp.bfloat16)
    outs = jax.eval_shape(lambda: encoder.init_with_output(jax.random.key(0), jnp.zeros((1, 45, 67, 3)))[0])
    assert all(o.dtype == jnp.bfloat16 for o in outs)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_encoder_differentiates(policy):
    """`model.remat` wraps every CSWin block in jax.checkpoint; the gradient traces (shapes only)."""
    encoder = CSWinTransformer(CSWinConfig.of(MICRO.cswin), remat=True, remat_policy=policy)
    x = jnp.zeros((1, 45, 67, 3))
    params = jax.eval_shape(encoder.init, jax.random.key(0), x)
    def loss(p):
        return sum(jnp.sum(o) for o in encoder.apply(p, x, True, rngs={"drop_path": jax.random.key(1)}))

    grads = jax.eval_shape(jax.grad(loss), params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)


# The segmenter and training on it -----------------------------------------------------------------------------------
def test_segmenter_on_cswin_encoder():
    cfg = model_config("micro", backbone="cswin", num_classes=5)
    model = build_segmenter(cfg)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 45, 67, 3)), jnp.float32)
    # shapes only (as tests/test_backbones_cnn.py): the runlocal test below runs and trains this model
    out, variables = jax.eval_shape(lambda x: model.init_with_output(RNGS, x, True), x)  # training mode
    assert sorted(variables["params"]) == ["auxiliary_head", "backbone", "decode_head", "projection_head"]
    assert sorted(variables["params"]["backbone"]["stage4"]["blocks_0"]) == [
        "attns_0", "mlp", "norm1", "norm2", "proj", "qkv"]  # full attention: one branch
    assert out["logits"].shape == (2, 45, 67, 5) and out["aux_logits"].shape == (2, 45, 67, 5)
    h, w = (torch_conv_size(torch_conv_size(n, 7, 4, 2), 3, 2, 1) for n in (45, 67))
    assert out["embeddings"].shape == (2, h, w, cfg.projection.dim) and cfg.projection.stride == 8


def test_config_fields_and_errors():
    cfg = model_config("cswin_l")
    assert cfg.backbone == "cswin" and cfg.cswin.embed_dim == 144 and tuple(cfg.cswin.split_size) == (1, 2, 7, 7)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert model_config("cswin_b", drop_path_rate=0.2).cswin.drop_path_rate == 0.2
    with pytest.raises(ValueError, match=r"cswin.num_heads\[1\]=3"):
        model_config("micro", backbone="cswin", **{"cswin.num_heads": (2, 3, 4, 4)})
    with pytest.raises(ValueError, match=r"cswin.split_size\[2\]=0"):
        model_config("micro", backbone="cswin", **{"cswin.split_size": (1, 2, 0, 7)})
    with pytest.raises(ValueError, match="model size 'large' with backbone='cswin'"):
        model_config("large", backbone="cswin")


def test_cswin_l_config_and_paper_row():
    cswin_l, paper = (load_config_module(os.path.join(REPO, "configs", f"{n}.py")) for n in ("cswin_l", "paper"))
    c = cswin_l.get_config()
    assert (c.model.backbone, c.model.size, c.model.dtype, c.model.cswin.drop_path_rate) == (
        "cswin", "cswin_l", "bfloat16", 0.3)
    assert (c.optim.name, c.optim.learning_rate, c.optim.warmup_steps) == ("adamw", 7e-5, 1500)
    row = paper.get_config("table1_cswin_l")
    assert row.model == c.model and row.loss.stcl_weight == 0.0


def test_cswin_l_runlocal_trains_two_steps(tmp_path):
    """`configs/cswin_l.py:runlocal` (a micro CSWin, AdamW, synthetic data) trains two steps."""
    train_runlocal_two_steps("configs/cswin_l.py:runlocal", tmp_path)
