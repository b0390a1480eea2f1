"""fastdenoise.metrics and fastdenoise.io."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from fastdenoise.errors import DTypeError, ShapeError
from fastdenoise.metrics import mse, psnr, quantize_uint8

Image = pytest.importorskip("PIL.Image")

from fastdenoise.io import read_image, write_image  # noqa: E402


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------

def kair_psnr(img1, img2):
    """KAIR's utils_image.calculate_psnr (border 0) on uint8 arrays, in float64."""
    e = np.mean((img1.astype(np.float64) - img2.astype(np.float64)) ** 2)
    return float("inf") if e == 0 else 20 * math.log10(255.0 / math.sqrt(e))


def test_psnr_known_values_per_image():
    x = torch.rand(3, 2, 7, 9)
    y = x.clone()
    y[0] += 0.1
    y[1] -= 0.01
    p = psnr(y, x)
    assert p.shape == (3,) and p.dtype == torch.float64
    assert p[0].item() == pytest.approx(20.0, abs=1e-4)
    assert p[1].item() == pytest.approx(40.0, abs=1e-3)
    assert math.isinf(p[2].item())
    assert psnr(y * 255, x * 255, data_range=255)[0].item() == pytest.approx(20.0, abs=1e-4)
    assert mse(y, x)[0].item() == pytest.approx(0.01, rel=1e-4)


def test_psnr_uint8_matches_kair():
    a = torch.randint(0, 256, (2, 1, 33, 17), dtype=torch.uint8)
    b = torch.randint(0, 256, (2, 1, 33, 17), dtype=torch.uint8)
    p = psnr(a, b, data_range=255.0)
    for i in range(2):
        assert p[i].item() == pytest.approx(kair_psnr(a[i, 0].numpy(), b[i, 0].numpy()), abs=1e-10)


def test_quantize_uint8_matches_kair_tensor2uint():
    x = torch.rand(2, 3, 5, 7) * 1.4 - 0.2
    x[0, 0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 2.5 / 255, 254.5 / 255])
    q = quantize_uint8(x)
    arr = x.numpy()
    expected = np.uint8((np.clip(arr, 0, 1) * 255.0).round())
    assert q.dtype == torch.uint8 and np.array_equal(q.numpy(), expected)
    assert q.min() == 0 and q.max() == 255


def test_metrics_bad_input():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ShapeError, match="y: expected the shape of x"):
        psnr(x, torch.rand(2, 1, 4, 5))
    with pytest.raises(ShapeError, match="4 dims"):
        psnr(x[0], x[0])
    with pytest.raises(DTypeError):
        psnr(x, x.to(torch.bool))
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range=0)
    with pytest.raises(TypeError):
        quantize_uint8(np.zeros((2, 2)))


# --------------------------------------------------------------------------------------------
# io
# --------------------------------------------------------------------------------------------

def test_grey_round_trip(tmp_path):
    u = np.random.default_rng(0).integers(0, 256, (13, 21), dtype=np.uint8)
    Image.fromarray(u).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.shape == (13, 21, 1) and img.dtype == np.float32
    assert np.array_equal(img[:, :, 0], np.float32(u / 255.0))       # KAIR's uint2single
    t = read_image(tmp_path / "g.png", as_tensor=True)
    assert t.shape == (1, 1, 13, 21) and t.dtype == torch.float32
    assert np.array_equal(t[0, 0].numpy(), img[:, :, 0])
    write_image(tmp_path / "g2.png", img)
    assert np.array_equal(np.array(Image.open(tmp_path / "g2.png")), u)
    write_image(tmp_path / "g3.png", t)
    assert np.array_equal(np.array(Image.open(tmp_path / "g3.png")), u)


def test_rgb_and_modes(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    img = read_image(tmp_path / "c.png")
    assert img.shape == (6, 5, 3) and np.array_equal(img, np.float32(rgb / 255.0))
    grey = read_image(tmp_path / "c.png", mode="L")
    assert grey.shape == (6, 5, 1)
    assert np.array_equal(grey[:, :, 0], np.float32(np.array(Image.fromarray(rgb).convert("L")) / 255.0))

    rgba = np.concatenate([rgb, np.full((6, 5, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), img)     # alpha dropped

    write_image(tmp_path / "c2.png", torch.from_numpy(img).permute(2, 0, 1)[None])
    assert np.array_equal(np.array(Image.open(tmp_path / "c2.png")), rgb)


def test_sixteen_bit_grey(tmp_path):
    u = np.random.default_rng(2).integers(0, 65536, (4, 6)).astype(np.uint16)
    Image.fromarray(u).save(tmp_path / "w.png")
    img = read_image(tmp_path / "w.png")
    assert img.shape == (4, 6, 1)
    assert np.allclose(img[:, :, 0], u / 65535.0, atol=1e-7)


def test_write_clamps_and_rounds(tmp_path):
    f = np.array([[-0.3, 0.0, 0.5 / 255, 1.5 / 255], [0.2, 0.999, 1.0, 1.7]], np.float32)
    write_image(tmp_path / "q.png", f)
    got = np.array(Image.open(tmp_path / "q.png"))
    assert np.array_equal(got, np.uint8((np.clip(f, 0, 1) * 255.0).round()))
    with pytest.raises(ValueError):
        write_image(tmp_path / "bad.png", np.zeros((4, 4, 2), np.float32))
    with pytest.raises(ValueError):
        write_image(tmp_path / "bad.png", torch.zeros(2, 3, 4, 4))
    with pytest.raises(TypeError):
        write_image(tmp_path / "bad.png", np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="mode"):
        read_image(tmp_path / "q.png", mode="CMYK")


def test_read_set12_image(shared_dir):
    img = read_image(shared_dir / "data" / "set12" / "01.png")
    assert img.shape == (256, 256, 1) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05


def test_missing_pillow_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install pillow.*fastdenoise\[image\]"):
        read_image(tmp_path / "x.png")
