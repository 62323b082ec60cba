"""ResNet-50 (mmseg V1c / timm resnet50c) and ResNeSt-101 (mmseg ResNeSt / timm resnest101e) encoders.

Parity with timm (random weights, offline) on an odd input size in inference and training mode, the mmseg key
layout, the real architectures' parameter counts, the segmenter on a CNN encoder, and the convert CLI.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from timm.models.resnest import ResNestBottleneck  # noqa: E402
from timm.models.resnet import Bottleneck as TimmBottleneck  # noqa: E402
from timm.models.resnet import ResNet as TimmResNet  # noqa: E402

from stcl_jax import convert  # noqa: E402
from stcl_jax.convert.__main__ import main as convert_main  # noqa: E402
from stcl_jax.models import build_segmenter, model_config  # noqa: E402
from stcl_jax.models.backbones import CNNConfig, cnn_encoder  # noqa: E402
from stcl_jax.models.config import CNN_BACKBONES  # noqa: E402
from stcl_jax.models.io import load_variables  # noqa: E402

LAYOUTS = {  # tiny versions of timm's resnet50c / resnest101e (same constructor arguments, small depths/widths)
    "resnet50": dict(block=TimmBottleneck),
    "resnest101": dict(block=ResNestBottleneck, avg_down=True, block_args=dict(radix=2, avd=True, avd_first=False)),
}
X = np.random.RandomState(0).randn(2, 67, 93, 3).astype(np.float32)


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(ours - ref) / np.linalg.norm(ref)


def tiny_timm(name):
    torch.manual_seed(0)
    model = TimmResNet(layers=(1, 2, 1, 1), channels=(8, 16, 32, 64), stem_width=8, stem_type="deep",
                       num_classes=0, **LAYOUTS[name])
    with torch.no_grad():  # non-trivial BatchNorm affine parameters and running statistics
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model


def timm_stages(model, x, train):
    model.train(train)
    with torch.no_grad():
        h = model.maxpool(model.act1(model.bn1(model.conv1(torch.from_numpy(x.transpose(0, 3, 1, 2))))))
        outs = []
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            h = layer(h)
            outs.append(h.numpy().transpose(0, 2, 3, 1))
    return outs


@pytest.fixture(scope="module", params=list(LAYOUTS))
def converted(request):
    model = tiny_timm(request.param)
    variables, cfg, report = convert.from_timm_resnet(model.state_dict(), return_report=True)
    return request.param, model, variables, cfg, report


def test_config_read_off_the_tensors(converted):
    name, _, _, cfg, report = converted
    assert cfg.backbone == name and tuple(cfg.cnn.depths) == (1, 2, 1, 1)
    assert (cfg.cnn.stem_width, cfg.cnn.width) == (8, 8)
    assert (cfg.cnn.radix, cfg.cnn.avg_down) == ((2, True) if name == "resnest101" else (0, False))
    assert not report.missing and not report.unused
    assert report.ignored and all(k.endswith("num_batches_tracked") for k in report.ignored)


@pytest.mark.parametrize("train", [False, True], ids=["running_stats", "batch_stats"])
def test_stage_features_match_timm(converted, train):
    _, model, variables, cfg, _ = converted
    refs = timm_stages(model, X, train)
    encoder = cnn_encoder(CNNConfig.of(cfg.cnn), jnp.float32)
    backbone = {"params": variables["params"]["backbone"], "batch_stats": variables["batch_stats"]["backbone"]}
    if train:
        ours, _ = encoder.apply(backbone, X, True, mutable=["batch_stats"])
    else:
        ours = encoder.apply(backbone, X)
    for i, (a, b) in enumerate(zip(ours, refs)):
        assert a.shape == b.shape, f"stage {i}: {a.shape} vs {b.shape}"
        assert rel_err(a, b) < 1e-4, f"stage {i}: {rel_err(a, b)}"
    strides = [(-(-67 // s), -(-93 // s)) for s in (4, 8, 16, 32)]
    assert [o.shape[1:3] for o in ours] == strides


def mmseg_keys(sd):
    """timm -> mmseg ResNetV1c / ResNeSt key layout (deep stem `stem.0..7`, the stem's last BN inside it)."""
    stem = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4", "conv1.6": "stem.6",
            "bn1": "stem.7"}
    out = {}
    for key, value in sd.items():
        module, kind = key.rsplit(".", 1)
        out["backbone." + f"{stem.get(module, module)}.{kind}"] = value
    return out


def test_mmseg_layout_equals_timm(converted):
    _, model, variables, cfg, _ = converted
    sd = model.state_dict()
    got, got_cfg, report = convert.from_mmseg_resnet(mmseg_keys(sd), return_report=True)
    assert got_cfg == cfg and not report.unused
    jax.tree.map(np.testing.assert_array_equal, got, variables)


def mmseg_head_keys(abstract_variables, rng):
    """Random head tensors under mmseg's UPerHead / FCNHead names (PPM branches are `psp_modules.i.1`)."""
    kinds = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    sd, ours = {}, {}
    for collection in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_variables[collection]):
            keys = [p.key for p in path]
            if keys[0] not in ("decode_head", "auxiliary_head"):
                continue
            module = re.sub(r"_(\d+)", r".\1", ".".join(keys[:-1]))
            module = re.sub(r"^decode_head\.psp_modules\.(\d+)\.", r"decode_head.psp_modules.\1.1.", module)
            value = rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
            ours["/".join([collection, *keys])] = value
            sd[f"{module}.{kinds[keys[-1]]}"] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
    return sd, ours


def test_full_mmseg_upernet_checkpoint(converted):
    """An mmseg UperNet-R50/S101 state dict: backbone + decode/auxiliary heads (mmseg names)."""
    name, model, variables, cfg, _ = converted
    small = model_config("micro", backbone=name, num_classes=7, **{f"cnn.{k}": v for k, v in cfg.cnn.items()})
    abstract = jax.eval_shape(build_segmenter(small).init, {n: jax.random.key(1) for n in ("params", "dropout")},
                              jnp.zeros((1, 64, 64, 3)))
    heads, expected = mmseg_head_keys(abstract, np.random.default_rng(0))
    assert "decode_head.psp_modules.3.1.conv.weight" in heads and "auxiliary_head.convs.0.bn.running_var" in heads
    got, got_cfg, report = convert.from_mmseg_upernet_resnet({**mmseg_keys(model.state_dict()), **heads},
                                                             return_report=True)
    assert got_cfg.num_classes == 7 and got_cfg.decoder.channels == small.decoder.channels
    assert got_cfg.aux.in_index == 2 and got_cfg.backbone == name and not report.unused
    assert sorted(report.missing) == sorted(f"{c}/projection_head/{leaf} (random init, seed 0)" for c, leaf in (
        ("params", "fc/kernel"), ("params", "bn/scale"), ("params", "bn/bias"),
        ("batch_stats", "bn/mean"), ("batch_stats", "bn/var")))
    for path, value in expected.items():
        collection, *keys = path.split("/")
        leaf = got[collection]
        for k in keys:
            leaf = leaf[k]
        np.testing.assert_array_equal(leaf, value, err_msg=path)
    jax.tree.map(np.testing.assert_array_equal, got["params"]["backbone"], variables["params"]["backbone"])


@pytest.mark.parametrize("name,timm_name", [("resnet50", "resnet50c"), ("resnest101", "resnest101e")])
def test_real_architecture_parameter_counts(name, timm_name):
    """The full configs hold exactly timm's backbone parameters (classifier excluded), tensor for tensor."""
    sd = timm.create_model(timm_name, pretrained=False).state_dict()
    _, cfg = convert.from_timm_resnet(sd)
    assert dict(cfg.cnn) == CNN_BACKBONES[name] and cfg.backbone == name
    full = model_config(name)
    abstract = jax.eval_shape(cnn_encoder(CNNConfig.of(full.cnn), jnp.float32).init, jax.random.key(0),
                              jnp.zeros((1, 64, 64, 3)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    theirs = sum(v.numel() for k, v in sd.items() if not k.startswith("fc.") and not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked")))
    assert ours == theirs


def test_segmenter_on_cnn_encoder():
    cfg = model_config("micro", backbone="resnest101", num_classes=5, projection_feature="stage2")
    model = build_segmenter(cfg)
    x = jnp.asarray(X[:, :45, :61])
    out, variables = jax.eval_shape(lambda r: model.init_with_output(r, x, True),
                                    {n: jax.random.key(0) for n in ("params", "dropout")})
    assert sorted(variables["params"]) == ["auxiliary_head", "backbone", "decode_head", "projection_head"]
    assert "conv2" in variables["params"]["backbone"]["layers_1"]["blocks_0"]  # split attention
    assert out["logits"].shape == (2, 45, 61, 5) and out["aux_logits"].shape == (2, 45, 61, 5)
    assert out["embeddings"].shape == (2, 6, 8, cfg.projection.dim) and cfg.projection.stride == 8


def test_config_errors():
    with pytest.raises(ValueError, match="cnn.radix"):
        model_config("resnest101", **{"cnn.radix": 0})
    with pytest.raises(ValueError, match="backbone='vgg'"):
        model_config("micro", backbone="vgg")
    with pytest.raises(ValueError, match="no ResNet / ResNeSt tensors"):
        convert.from_timm_resnet({"head.weight": np.zeros((3, 3), np.float32)})


def test_convert_cli(tmp_path, converted, capsys):
    name, model, variables, cfg, _ = converted
    path = tmp_path / "timm.pth"
    torch.save(model.state_dict(), path)
    assert convert_main(["--from", "timm-resnet", "--input", str(path), "--output", str(tmp_path / "out")]) == 0
    assert name in capsys.readouterr().out
    loaded, loaded_cfg = load_variables(str(tmp_path / "out"))
    assert loaded_cfg == cfg
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
