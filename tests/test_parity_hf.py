"""Parity with Hugging Face UperNet-Swin / SwinModel built offline with random weights (fp32, eval mode)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from stcl_jax import convert  # noqa: E402
from stcl_jax.models import build_segmenter, model_config  # noqa: E402
from stcl_jax.models.swin import SwinTransformer  # noqa: E402

STAGES = ["stage1", "stage2", "stage3", "stage4"]


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(ours - ref) / np.linalg.norm(ref)


def randomise(model, seed=0):
    """Non-trivial norms, BN statistics and bias tables (HF initialises them to 1/0), so that parity means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "relative_position_bias_table" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if name.endswith("norm.weight") else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model.eval()


def swin_config(window=3, **kw):
    return transformers.SwinConfig(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=window,
                                   out_features=STAGES, **kw)


@pytest.fixture(scope="module")
def hf_upernet():
    torch.manual_seed(0)
    cfg = transformers.UperNetConfig(backbone_config=swin_config(), hidden_size=32, auxiliary_channels=16,
                                     num_labels=5)
    return randomise(transformers.UperNetForSemanticSegmentation(cfg))


def torch_forward(model, x):
    """(logits, aux_logits, backbone feature maps) of the HF model, NHWC NumPy."""
    pixel = torch.from_numpy(x.transpose(0, 3, 1, 2))
    with torch.no_grad():
        feats = model.backbone(pixel).feature_maps
        logits = model(pixel).logits
        aux = torch.nn.functional.interpolate(model.auxiliary_head(feats), size=pixel.shape[2:], mode="bilinear",
                                              align_corners=False)
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
    return nhwc(logits), nhwc(aux), [nhwc(f) for f in feats]


@pytest.mark.parametrize("size", [(100, 132), (96, 96)])  # not window multiples at any stage / square
def test_upernet_logits_match_hf(hf_upernet, size):
    variables, cfg = convert.from_hf_upernet(hf_upernet.state_dict())
    assert cfg.num_classes == 5 and cfg.swin.window_size == 3 and cfg.decoder.channels == 32
    model = build_segmenter(cfg)
    x = np.random.RandomState(1).randn(2, *size, 3).astype(np.float32)
    logits, aux, feats = torch_forward(hf_upernet, x)

    # One compiled apply returns the outputs and the backbone's stage features (captured intermediates).
    capture = lambda mdl, _: isinstance(mdl, SwinTransformer)  # noqa: E731
    out, inter = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=capture,
                                                  mutable=["intermediates"]))(variables, x)
    assert rel_err(out["logits"], logits) < 1e-4
    assert rel_err(out["aux_logits"], aux) < 1e-4
    np.testing.assert_allclose(out["logits"], logits, rtol=0, atol=1e-4 * np.abs(logits).max())
    ours = inter["intermediates"]["backbone"]["__call__"][0]
    assert len(ours) == 4
    for i, (a, b) in enumerate(zip(ours, feats)):
        assert a.shape == b.shape, f"stage {i}"
        assert rel_err(a, b) < 1e-4, f"stage {i}"


def test_hf_swinmodel_stage_features_match():
    torch.manual_seed(1)
    hf = randomise(transformers.SwinModel(swin_config(window=4), add_pooling_layer=False))
    variables, cfg = convert.from_hf_swin(hf.state_dict())
    assert cfg.swin.window_size == 4 and set(variables["params"]) == {"backbone"}
    x = np.random.RandomState(2).randn(1, 90, 110, 3).astype(np.float32)
    with torch.no_grad():
        out = hf(torch.from_numpy(x.transpose(0, 3, 1, 2)), output_hidden_states=True, always_partition=True,
                 output_hidden_states_before_downsampling=True)
    # Our per-stage output norms are not in classification checkpoints: identity-initialised LayerNorms.
    refs = [torch.nn.functional.layer_norm(h.permute(0, 2, 3, 1), h.shape[1:2], eps=1e-5).numpy()
            for h in out.reshaped_hidden_states[1:]]
    ours = jax.jit(SwinTransformer(16, (2, 2, 2, 2), (1, 2, 2, 4), 4).apply)(
        {"params": variables["params"]["backbone"]}, x)
    for i, (a, b) in enumerate(zip(ours, refs)):
        assert a.shape == b.shape and rel_err(a, b) < 1e-4, f"stage {i}"


def test_transformers4_key_names_convert_identically(hf_upernet):
    """Hub checkpoints saved by transformers 4.x name the attention/MLP tensors differently."""
    v4_names = {"q_proj": "self.query", "k_proj": "self.key", "v_proj": "self.value", "o_proj": "output.dense",
                "relative_position_bias.relative_position_bias_table": "self.relative_position_bias_table"}
    sd = {}
    for key, value in hf_upernet.state_dict().items():
        key = key.replace("backbone.swin.", "backbone.")
        for new, old in v4_names.items():
            key = key.replace(f"attention.{new}", f"attention.{old}")
        key = key.replace("mlp.fc1", "intermediate.dense").replace("mlp.fc2", "output.dense")
        sd[key] = value
    assert any("attention.self.query" in k for k in sd)
    a, _ = convert.from_hf_upernet(hf_upernet.state_dict())
    b, _ = convert.from_hf_upernet(sd)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_swin_large_upernet_parameter_count_equals_hf():
    bc = transformers.SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
                                 out_features=STAGES)
    with torch.device("meta"):
        hf = transformers.UperNetForSemanticSegmentation(
            transformers.UperNetConfig(backbone_config=bc, num_labels=124))
    # HF keeps SwinModel's final `layernorm`, which the backbone never uses; BN running stats are buffers.
    hf_count = sum(p.numel() for n, p in hf.named_parameters() if not n.startswith("backbone.swin.layernorm."))
    model = build_segmenter(model_config("large", window_size=12))
    shapes = jax.eval_shape(model.init, {"params": jax.random.key(0)}, jnp.zeros((1, 64, 64, 3)))["params"]
    ours = sum(int(np.prod(x.shape)) for k, sub in shapes.items() if k != "projection_head"
               for x in jax.tree.leaves(sub))
    assert ours == hf_count, (ours, hf_count)
    assert 230e6 < ours < 240e6  # Swin-L UperNet: ~234 M parameters
