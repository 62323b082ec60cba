"""Parity with timm's Swin (random weights, offline): stage features, both downsample layouts.

Runs wherever timm imports (timm needs a torchvision matching torch; see docs). Sizes are window multiples at
every stage: on other sizes timm rolls the map before padding it to a window multiple while mmseg / HF / we pad
first, so the two conventions legitimately differ there (the HF UperNet parity test covers those sizes).
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from stcl_jax import convert  # noqa: E402
from stcl_jax.models.swin import SwinTransformer  # noqa: E402


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(ours - ref) / np.linalg.norm(ref)


@pytest.fixture(scope="module")
def timm_swin():
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    torch.manual_seed(0)
    model = TimmSwin(img_size=(96, 192), patch_size=4, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                     window_size=3, always_partition=True, num_classes=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "relative_position_bias_table" in name:
                p.add_(torch.randn(p.shape) * 0.5)
    return model.eval()


def timm_stages(model, x):
    with torch.no_grad():
        h = model.patch_embed(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        outs = []
        for layer in model.layers:  # NHWC; timm >= 0.9: downsample at the start of a stage
            h = layer(h)
            outs.append(torch.nn.functional.layer_norm(h, h.shape[-1:], eps=1e-5).numpy())
    return outs


def test_timm_stage_features_match(timm_swin):
    sd = timm_swin.state_dict()
    assert "layers.1.downsample.reduction.weight" in sd  # the timm >= 0.9 layout
    variables, cfg = convert.from_timm_swin(sd)
    assert cfg.swin.window_size == 3 and cfg.swin.depths == (2, 2, 2, 2)
    x = np.random.RandomState(0).randn(2, 96, 192, 3).astype(np.float32)
    refs = timm_stages(timm_swin, x)
    ours = jax.jit(SwinTransformer(16, (2, 2, 2, 2), (1, 2, 2, 4), 3).apply)(
        {"params": variables["params"]["backbone"]}, x)
    for i, (a, b) in enumerate(zip(ours, refs)):
        assert a.shape == b.shape and rel_err(a, b) < 1e-4, f"stage {i}: {rel_err(a, b)}"
    # The original layout (downsample at the end of a stage), as in the official release, converts identically.
    import re

    old = {re.sub(r"layers\.(\d)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k): v
           for k, v in sd.items()}
    official, _ = convert.from_swin_official({"model": old})
    jax.tree.map(np.testing.assert_array_equal, official, variables)
