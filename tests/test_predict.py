"""`python -m stcl_jax.predict` on a generated mp4 and on a folder of frames, with a tiny random model."""

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from stcl_jax import predict
from test_evaluate import model_dir  # noqa: F401  (module fixture: a params-only micro model)

H, W, N = 32, 48, 5


def _frames():
    """Moving coloured bars: N frames (H, W, 3) RGB."""
    x = np.arange(W)[None, :, None]
    y = np.arange(H)[:, None, None]
    return np.stack([((np.sin((x + 3 * t) / 5.0 + np.array([0, 2, 4])) * 0.5 + 0.5) * 200 + y).clip(0, 255)
                     .astype(np.uint8) for t in range(N)])


def _write_mp4(path, frames, fps=10.0):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def _labels(out):
    folder = os.path.join(out, "labels")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    return names, np.stack([np.asarray(Image.open(os.path.join(folder, n))) for n in names])


def test_predict_video_and_frame_folder(model_dir, tmp_path):  # noqa: F811
    video = str(tmp_path / "clip.mp4")
    _write_mp4(video, _frames())
    common = ["--checkpoint", model_dir, "--mode", "whole", "--batch-size", "2", "--chunk", "3"]
    out_v = str(tmp_path / "out_video")
    assert predict.main(common + ["--input", video, "--output", out_v, "--vspw-ids"]) == 0
    names, vspw_ids = _labels(out_v)
    assert names == [f"{i:08d}.png" for i in range(N)]
    assert vspw_ids.shape == (N, H, W) and vspw_ids.min() >= 1 and vspw_ids.max() <= 124
    assert sorted(os.listdir(os.path.join(out_v, "overlay"))) == [f"{i:08d}.jpg" for i in range(N)]
    cap = cv2.VideoCapture(os.path.join(out_v, "overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    ok, first = cap.read()
    cap.release()
    assert ok and first.shape == (H, W, 3)

    # The same decoded frames as a folder (lossless PNG): train ids, equal to the video's labels - 1.
    folder = tmp_path / "frames"
    folder.mkdir()
    cap = cv2.VideoCapture(video)
    for i in range(N):
        ok, bgr = cap.read()
        assert ok
        cv2.imwrite(str(folder / f"frame_{i:03d}.png"), bgr)
    cap.release()
    out_f = str(tmp_path / "out_folder")
    assert predict.main(common + ["--input", str(folder), "--output", out_f, "--fps", "5"]) == 0
    names, train_ids = _labels(out_f)
    assert names == [f"frame_{i:03d}.png" for i in range(N)]
    np.testing.assert_array_equal(train_ids.astype(int) + 1, vspw_ids)
    # the overlay is the frame blended half-and-half with the palette colour of the label
    from stcl_jax.data.datasets import vspw

    frame0 = cv2.cvtColor(cv2.imread(str(folder / "frame_000.png")), cv2.COLOR_BGR2RGB)
    want = (frame0.astype(float) + vspw.PALETTE[train_ids[0]]) / 2
    np.testing.assert_allclose(predict.overlay(frame0, train_ids[0]), want, atol=1)


def test_predict_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .jpg"):
        predict.read_frames(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        predict.read_frames(str(tmp_path / "missing.mp4"))
    (tmp_path / "a.png").write_bytes(b"not a png")
    chunks, _ = predict.read_frames(str(tmp_path))
    with pytest.raises(ValueError, match="a.png could not be read"):
        next(chunks)
