"""The ``fastdenoise`` command line (fastdenoise.cli): outputs and their bit depth, directories,
errors per file (one line, no traceback, exit codes), --reference metrics, --sigma, checkpoints,
the progress bar and the summary.

Images are small (48 x 40) and made here; --method nlm keeps the runs fast. bm3d is exercised
with a stub, and for real by test_default_method_is_real_bm3d.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fastdenoise import classic
from fastdenoise.cli import main
from fastdenoise.io import quantize, read_image, read_pixels, write_image
from fastdenoise.metrics import psnr, ssim
from fastdenoise.models import build

H, W = 40, 48


@pytest.fixture
def rng(_seed):
    return np.random.default_rng(_seed)


def run(capsys, *argv):
    """main(argv) -> (exit code, stdout, stderr); a user error never prints a traceback."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


def make_pair(rng, c=1, bits=8, h=H, w=W, sigma255=25.0):
    """(clean, noisy) uint8/uint16 (h, w, c): smooth shapes plus Gaussian noise, clipped."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = [0.5 + 0.3 * np.sin(xx / 6.0 + k) * np.cos(yy / 9.0 - k) for k in range(c)]
    clean = np.stack(base, axis=-1)
    noisy = clean + rng.normal(0, sigma255 / 255.0, clean.shape)
    return quantize(clean.astype(np.float32), bits), quantize(noisy.astype(np.float32), bits)


def write_pair(tmp_path, rng, name="noisy.png", **kw):
    clean, noisy = make_pair(rng, **kw)
    ext = os.path.splitext(name)[1]
    write_image(tmp_path / f"clean{ext}", clean)
    write_image(tmp_path / name, noisy)
    return tmp_path / f"clean{ext}", tmp_path / name


def line_for(out: str, name: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith(str(name) + " -> ")]
    assert len(lines) == 1, out
    return lines[0]


def number(line: str, label: str) -> float:
    return float(re.search(rf"{label} (-?[0-9.]+)", line).group(1))


# --------------------------------------------------------------------------------------------
# Outputs keep bit depth, colour type and format
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext,bits,c", [(".png", 8, 1), (".png", 16, 1), (".png", 8, 3), (".png", 16, 3),
                                         (".tif", 16, 3), (".tiff", 8, 1)])
def test_output_keeps_bit_depth_and_colour(tmp_path, rng, capsys, ext, bits, c):
    _, noisy = write_pair(tmp_path, rng, name=f"noisy{ext}", c=c, bits=bits)
    out_path = tmp_path / f"den{ext}"
    code, out, err = run(capsys, "denoise", noisy, "-o", out_path, "--method", "nlm", "--sigma", 25)
    assert code == 0, err
    got = read_pixels(out_path)
    assert got.dtype == (np.uint16 if bits == 16 else np.uint8) and got.shape == (H, W, c)
    if bits == 16:
        assert (got % 257 != 0).any()               # real 16-bit values, not 8-bit ones scaled
    # The same as the library call on the same image.
    x = read_image(noisy, as_tensor=True)
    expected = quantize(classic.nlm(x, sigma=25 / 255.0).clamp(0, 1)[0].permute(1, 2, 0).numpy(), bits)
    assert np.array_equal(got, expected)
    assert "sigma 25.00" in line_for(out, noisy)


def test_jpeg_in_and_out(tmp_path, rng, capsys):
    _, noisy = write_pair(tmp_path, rng, name="noisy.jpg", c=3)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "den.jpeg", "--method", "nlm")
    assert code == 0, err
    with Image.open(tmp_path / "den.jpeg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (W, H)
    # A 16-bit input written as JPEG: 8 bits, and the line says so.
    _, noisy16 = write_pair(tmp_path, rng, name="n16.png", c=1, bits=16)
    code, out, err = run(capsys, "denoise", noisy16, "-o", tmp_path / "den16.jpg", "--method", "nlm")
    assert code == 0, err
    assert read_pixels(tmp_path / "den16.jpg").dtype == np.uint8
    assert "written as 8-bit JPEG" in line_for(out, noisy16)


def test_16_bit_in_png_out_tif(tmp_path, rng, capsys):
    _, noisy = write_pair(tmp_path, rng, name="noisy.png", c=3, bits=16)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "den.tif", "--method", "nlm")
    assert code == 0, err
    assert read_pixels(tmp_path / "den.tif").dtype == np.uint16


# --------------------------------------------------------------------------------------------
# Several inputs, directories, errors per file
# --------------------------------------------------------------------------------------------

def test_directory_with_a_corrupt_file(tmp_path, rng, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name, c in (("a.png", 1), ("B.PNG", 3), ("c.tif", 1)):
        write_image(src / name, make_pair(rng, c=c)[1])
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (src / "notes.txt").write_text("not an image")               # not an image name: ignored
    (src / "sub").mkdir()
    write_image(src / "sub" / "deep.png", make_pair(rng)[1])      # not recursive: ignored
    dst = tmp_path / "out"
    code, out, err = run(capsys, "denoise", src, "-o", dst, "--method", "nlm")
    assert code == 1
    assert sorted(os.listdir(dst)) == ["B.PNG", "a.png", "c.tif"]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {src / 'bad.png'}: ")
    assert "3 denoised, 0 skipped, 1 failed (4 files)" in out
    assert f"failed: {src / 'bad.png'}" in out
    # Sorted by name, one line each.
    names = [ln.split(" -> ")[0] for ln in out.splitlines() if " -> " in ln]
    assert names == [str(src / n) for n in ("B.PNG", "a.png", "bad.png", "c.tif") if n != "bad.png"]


def test_missing_and_unsupported_inputs(tmp_path, rng, capsys):
    _, good = write_pair(tmp_path, rng)
    (tmp_path / "pic.bmp").write_bytes(b"BM" + bytes(60))
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "denoise", tmp_path / "missing.png", tmp_path / "pic.bmp", tmp_path / "empty",
                         good, "-o", tmp_path / "out", "--method", "nlm")
    assert code == 1
    assert (tmp_path / "out" / "noisy.png").is_file()
    lines = err.strip().splitlines()
    assert lines == [f"error: {tmp_path / 'missing.png'}: no such file",
                     f"error: {tmp_path / 'pic.bmp'}: unsupported file type '.bmp': expected one of "
                     ".png .tif .tiff .jpg .jpeg",
                     f"error: {tmp_path / 'empty'}: no image files (.png .tif .tiff .jpg .jpeg) in this directory"]
    assert "1 denoised, 0 skipped, 3 failed (4 files)" in out


def test_single_missing_input(tmp_path, capsys):
    code, out, err = run(capsys, "denoise", tmp_path / "nope.png", "-o", tmp_path / "o.png", "--method", "nlm")
    assert code == 1 and err.strip() == f"error: {tmp_path / 'nope.png'}: no such file"
    assert not (tmp_path / "o.png").exists()


def test_truncated_and_non_image_files(tmp_path, rng, capsys):
    clean, _ = write_pair(tmp_path, rng)
    data = clean.read_bytes()
    (tmp_path / "half.png").write_bytes(data[:len(data) // 2])
    (tmp_path / "text.jpg").write_text("hello")
    code, out, err = run(capsys, "denoise", tmp_path / "half.png", tmp_path / "text.jpg", "-o", tmp_path / "out",
                         "--method", "nlm")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"error: {tmp_path / 'half.png'}: ") and "truncated" in lines[0]
    assert lines[1].startswith(f"error: {tmp_path / 'text.jpg'}: not an image file")


def test_existing_output_skipped_unless_overwrite(tmp_path, rng, capsys):
    _, noisy = write_pair(tmp_path, rng)
    target = tmp_path / "den.png"
    target.write_bytes(b"precious")
    code, out, err = run(capsys, "denoise", noisy, "-o", target, "--method", "nlm")
    assert code == 0                                  # skipped files do not fail the run
    assert target.read_bytes() == b"precious"
    assert err.strip() == f"skipped: {noisy}: {target} exists (--overwrite replaces it)"
    assert "0 denoised, 1 skipped, 0 failed" in out
    code, out, err = run(capsys, "denoise", noisy, "-o", target, "--method", "nlm", "--overwrite")
    assert code == 0 and err == ""
    assert read_pixels(target).shape == (H, W, 1)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []   # no temporary left


def test_output_rules(tmp_path, rng, capsys):
    _, noisy = write_pair(tmp_path, rng)
    # One input, an existing directory: the output goes inside it, under the input's name.
    (tmp_path / "d").mkdir()
    assert run(capsys, "denoise", noisy, "-o", tmp_path / "d", "--method", "nlm")[0] == 0
    assert (tmp_path / "d" / "noisy.png").is_file()
    # One input, a name ending in '/': a new directory.
    assert run(capsys, "denoise", noisy, "-o", f"{tmp_path / 'new'}/", "--method", "nlm")[0] == 0
    assert (tmp_path / "new" / "noisy.png").is_file()
    # One input, a new file in a new directory.
    assert run(capsys, "denoise", noisy, "-o", tmp_path / "x" / "y.png", "--method", "nlm")[0] == 0
    assert (tmp_path / "x" / "y.png").is_file()
    # Usage errors (exit 2): an output file name for several inputs, an unknown output type.
    code, out, err = run(capsys, "denoise", noisy, noisy, "-o", tmp_path / "z.png", "--method", "nlm")
    assert code == 2 and err.startswith("error: -o ") and "several inputs need an output directory" in err
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "z.bmp", "--method", "nlm")
    assert code == 2 and "expected an output file ending in .png .tif .tiff .jpg .jpeg" in err
    assert len(err.strip().splitlines()) == 1


def test_name_collision_and_output_over_input(tmp_path, rng, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_image(tmp_path / d / "same.png", make_pair(rng)[1])
    code, out, err = run(capsys, "denoise", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "out",
                         "--method", "nlm")
    assert code == 1
    assert err.strip() == (f"error: {tmp_path / 'b' / 'same.png'}: its output {tmp_path / 'out' / 'same.png'} "
                           f"is also the output of {tmp_path / 'a' / 'same.png'}")
    before = (tmp_path / "a" / "same.png").read_bytes()
    code, out, err = run(capsys, "denoise", tmp_path / "a", "-o", tmp_path / "a", "--method", "nlm", "--overwrite")
    assert code == 1 and "would replace the input itself" in err
    assert (tmp_path / "a" / "same.png").read_bytes() == before


# --------------------------------------------------------------------------------------------
# --reference, --sigma, sigma estimation
# --------------------------------------------------------------------------------------------

def test_reference_metrics_match_fastdenoise_metrics(tmp_path, rng, capsys):
    clean, noisy = write_pair(tmp_path, rng, c=3)
    den = tmp_path / "den.png"
    code, out, err = run(capsys, "denoise", noisy, "-o", den, "--reference", clean, "--method", "nlm")
    assert code == 0, err
    line = line_for(out, noisy)
    a = read_image(den, as_tensor=True)
    b = read_image(clean, as_tensor=True)
    assert number(line, "PSNR") == pytest.approx(psnr(a, b, data_range=1.0).item(), abs=0.005 + 1e-9)
    assert number(line, "SSIM") == pytest.approx(ssim(a, b, data_range=1.0).item(), abs=0.00005 + 1e-9)
    # Denoising helped, and the estimated sigma printed is estimate_sigma's, on the 0-255 scale.
    n = read_image(noisy, as_tensor=True)
    assert number(line, "PSNR") > psnr(n, b).item() + 3
    assert number(line, "sigma") == pytest.approx(classic.estimate_sigma(n).item() * 255, abs=0.005 + 1e-9)
    assert f"sigma (0-255 scale, estimated): noisy.png {number(line, 'sigma'):.2f}" in out


def test_reference_directory_matched_by_name(tmp_path, rng, capsys):
    (tmp_path / "noisy").mkdir()
    (tmp_path / "clean").mkdir()
    for name in ("a.png", "b.png"):
        c, n = make_pair(rng)
        write_image(tmp_path / "noisy" / name, n)
        write_image(tmp_path / "clean" / name, c)
    write_image(tmp_path / "noisy" / "c.png", make_pair(rng)[1])              # no reference
    write_image(tmp_path / "noisy" / "d.png", make_pair(rng, h=H + 2)[1])      # wrong size
    write_image(tmp_path / "clean" / "d.png", make_pair(rng)[0])
    code, out, err = run(capsys, "denoise", tmp_path / "noisy", "-o", tmp_path / "out", "--reference",
                         tmp_path / "clean", "--method", "nlm", "--sigma", "20")
    assert code == 1
    for name in ("a.png", "b.png"):
        line = line_for(out, tmp_path / "noisy" / name)
        a = read_image(tmp_path / "out" / name, as_tensor=True)
        b = read_image(tmp_path / "clean" / name, as_tensor=True)
        assert number(line, "PSNR") == pytest.approx(psnr(a, b).item(), abs=0.005 + 1e-9)
    assert err.strip().splitlines() == [
        f"error: {tmp_path / 'noisy' / 'c.png'}: reference {tmp_path / 'clean' / 'c.png'}: no such file",
        f"error: {tmp_path / 'noisy' / 'd.png'}: reference {tmp_path / 'clean' / 'd.png'} is 48x40 grey, "
        "the image is 48x42 grey"]
    assert re.search(r"mean PSNR [0-9.]+ dB, mean SSIM [0-9.]+ over 2 files", out)
    assert "sigma (0-255 scale): 20 for every file (--sigma)" in out


@pytest.mark.parametrize("value,message", [("-5", "positive"), ("0", "positive"), ("abc", "expected a number"),
                                           ("nan", "positive"), ("inf", "positive"),
                                           ("255.5", "at most 255"), ("1e6", "at most 255")])
def test_bad_sigma_is_a_usage_error(tmp_path, rng, capsys, value, message):
    _, noisy = write_pair(tmp_path, rng)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "o.png", "--method", "nlm", f"--sigma={value}")
    assert code == 2 and "argument --sigma" in err and message in err and "0-255 scale" in err
    assert not (tmp_path / "o.png").exists()


def test_sigma_forms_and_small_images(tmp_path, rng, capsys):
    clean, noisy = make_pair(rng, h=20, w=24)
    write_image(tmp_path / "small.png", noisy)
    # Too small to estimate sigma: a clear error suggesting --sigma ...
    code, out, err = run(capsys, "denoise", tmp_path / "small.png", "-o", tmp_path / "o.png", "--method", "nlm")
    assert code == 1 and "too small to estimate the noise level" in err and "--sigma" in err
    # ... which works, given as "--sigma 12.5" (a float on the 0-255 scale).
    code, out, err = run(capsys, "denoise", tmp_path / "small.png", "-o", tmp_path / "o.png", "--method", "nlm",
                         "--sigma", "12.5")
    assert code == 0 and "sigma 12.50" in out
    # A noise-free (flat) image has no noise to estimate.
    write_image(tmp_path / "flat.png", np.full((H, W), 0.5, np.float32))
    code, out, err = run(capsys, "denoise", tmp_path / "flat.png", "-o", tmp_path / "f.png", "--method", "nlm")
    assert code == 1 and "no noise found" in err


# --------------------------------------------------------------------------------------------
# Methods: bm3d (stub and real), checkpoints
# --------------------------------------------------------------------------------------------

def test_bm3d_is_the_default_and_gets_sigma(tmp_path, rng, capsys, monkeypatch):
    calls = []

    def fake_bm3d(x, sigma=None, stage="all", profile="np", *, backend=None):
        calls.append((tuple(x.shape), sigma))
        return x * 0 + 0.25

    monkeypatch.setattr(classic, "bm3d", fake_bm3d, raising=False)
    _, noisy = write_pair(tmp_path, rng, c=3)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "o.png", "--sigma", "30")
    assert code == 0, err
    assert calls == [((1, 3, H, W), 30 / 255.0)]
    assert (read_pixels(tmp_path / "o.png") == 64).all()         # 0.25 * 255 rounded
    assert "method bm3d on cpu" in out
    calls.clear()
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "o2.png")
    x = read_image(noisy, as_tensor=True)
    assert code == 0 and calls[0][1] == pytest.approx(classic.estimate_sigma(x).item())


def test_missing_bm3d_is_a_clear_error(tmp_path, rng, capsys, monkeypatch):
    monkeypatch.delattr(classic, "bm3d", raising=False)
    _, noisy = write_pair(tmp_path, rng)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "o.png")
    assert code == 2 and err.startswith("error: --method bm3d: fastdenoise.classic.bm3d is not available")


def test_default_method_is_real_bm3d(tmp_path, rng, capsys):
    """THE REAL DEFAULT METHOD: fastdenoise.classic.bm3d, no stub, on a 40 x 40 grey image.
    Fails (exit code 2, 'bm3d is not available') until classic.bm3d exists."""
    clean, noisy = write_pair(tmp_path, rng, h=40, w=40)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "den.png", "--reference", clean)
    assert code == 0, err
    line = line_for(out, noisy)
    a = read_image(tmp_path / "den.png", as_tensor=True)
    b = read_image(clean, as_tensor=True)
    assert number(line, "PSNR") == pytest.approx(psnr(a, b).item(), abs=0.005 + 1e-9)
    assert number(line, "PSNR") > psnr(read_image(noisy, as_tensor=True), b).item() + 3
    assert "method bm3d" in out


def _as_cli(model, x, dtype=torch.float32):
    """The model and its input as the command line runs a checkpoint: channels_last, in ``dtype``."""
    return (model.to(dtype=dtype, memory_format=torch.channels_last).eval(),
            x.to(dtype).contiguous(memory_format=torch.channels_last))


def _save(model, path):
    torch.save({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() and "haar" not in k else v
                for k, v in model.state_dict().items()}, path)


def test_checkpoint_models(tmp_path, rng, capsys):
    # A colour FFDNet gets the noise level (given or estimated) ...
    ffd = tmp_path / "ffdnet.pth"
    _save(build("ffdnet", in_nc=3, out_nc=3, nc=8, nb=3, act_mode="R"), ffd)
    _, noisy = write_pair(tmp_path, rng, c=3)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "f.png", "--method", ffd, "--sigma", 15)
    assert code == 0, err
    from fastdenoise.models import load_official
    model, x = _as_cli(load_official(ffd), read_image(noisy, as_tensor=True))
    with torch.no_grad():
        expected = quantize(model(x, 15 / 255.0).clamp(0, 1)[0].permute(1, 2, 0).numpy(), 8)
    assert np.array_equal(read_pixels(tmp_path / "f.png"), expected)
    assert "method FFDNet (ffdnet.pth)" in out
    # ... and a grey image is a one-line error for that file.
    _, grey = write_pair(tmp_path, rng, name="grey.png")
    code, out, err = run(capsys, "denoise", grey, "-o", tmp_path / "g.png", "--method", ffd)
    assert code == 1
    assert err.strip() == (f"error: {grey}: FFDNet (ffdnet.pth) takes colour (3-channel) images, "
                           "this image is grey (1-channel)")
    # A blind grey DnCNN: no sigma, and a note when one is given.
    dn = tmp_path / "dncnn.pth"
    _save(build("dncnn", in_nc=1, out_nc=1, nc=8, nb=3, act_mode="R"), dn)
    code, out, err = run(capsys, "denoise", grey, "-o", tmp_path / "d.png", "--method", dn, "--sigma", 25)
    assert code == 0 and "sigma -" in line_for(out, grey) and "is not used by DnCNN" in err
    # InvDN on a size that is not a multiple of 4: padded and cropped back.
    inv = tmp_path / "invdn.pth"
    _save(build("invdn", channel_in=3, channel_out=3, subnet_constructor="Resnet", block_num=[1, 1],
                down_num=2), inv)
    _, odd = write_pair(tmp_path, rng, name="odd.png", c=3, h=37, w=45)
    code, out, err = run(capsys, "denoise", odd, "-o", tmp_path / "i.png", "--method", inv)
    assert code == 0, err
    assert read_pixels(tmp_path / "i.png").shape == (37, 45, 3)


@pytest.mark.parametrize("arch, kwargs, container", [
    ("nafnet", dict(img_channel=3, width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1]), "params"),
    ("baseline", dict(img_channel=3, width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1]), "params"),
    ("ridnet", dict(n_feats=16), None),
    ("mprnet", dict(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1), "state_dict"),
    ("restormer", dict(dim=4, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, LayerNorm_type="BiasFree"), "params"),
])
def test_checkpoints_of_the_attention_models(tmp_path, rng, capsys, arch, kwargs, container):
    """NAFNet / Baseline run on [0, 1] images, RIDNet, MPRNet and Restormer through their denoise(); odd
    sizes are padded and cropped back by the models."""
    model = build(arch, **kwargs).eval()
    sd = model.state_dict()
    path = tmp_path / f"{arch}.pth"
    torch.save({container: sd} if container else sd, path)
    _, noisy = write_pair(tmp_path, rng, c=3, h=29, w=35)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "o.png", "--method", path)
    assert code == 0, err
    model, x = _as_cli(model, read_image(noisy, as_tensor=True))
    with torch.no_grad():
        y = model.denoise(x) if hasattr(model, "denoise") else model(x).clamp(0, 1)
    expected = quantize(y.clamp(0, 1)[0].permute(1, 2, 0).numpy(), 8)
    assert np.array_equal(read_pixels(tmp_path / "o.png"), expected)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"\x89PNG\r\n\x1a\n" + bytes(40)])
def test_not_a_checkpoint_is_one_line(tmp_path, rng, capsys, content):
    _, noisy = write_pair(tmp_path, rng)
    bad = tmp_path / "model.pth"
    bad.write_bytes(content)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "o.png", "--method", bad)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {bad}: not a checkpoint torch.load(weights_only=True) can read (")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_dtype_runs_the_checkpoint_in_that_precision(tmp_path, rng, capsys, dtype_name):
    """--dtype: the model and its input in that dtype (channels_last), per file, tiled and streamed;
    the classical methods run in float32 only, and an unknown dtype is a usage error."""
    dtype = getattr(torch, dtype_name)
    model = build("nafnet", img_channel=3, width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
    path = tmp_path / "nafnet.pth"
    torch.save({"params": model.state_dict()}, path)
    _, noisy = write_pair(tmp_path, rng, c=3, h=29, w=35)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "half.png", "--method", path,
                         "--dtype", dtype_name)
    assert code == 0, err
    model, x = _as_cli(model, read_image(noisy, as_tensor=True), dtype)
    with torch.no_grad():
        y = model(x)
    assert y.dtype == dtype
    expected = quantize(y.float().clamp(0, 1)[0].permute(1, 2, 0).numpy(), 8)
    half = read_pixels(tmp_path / "half.png")
    assert np.array_equal(half, expected)
    # the same network as in float32, to the precision of the narrower type
    assert run(capsys, "denoise", noisy, "-o", tmp_path / "full.png", "--method", path)[0] == 0
    full = read_pixels(tmp_path / "full.png").astype(int)
    diff = np.abs(half.astype(int) - full)
    assert diff.max() <= 2 and diff.mean() < 0.6
    # tiled in that dtype: the model is not purely local (channel attention), so close, not equal
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "tiled.png", "--method", path,
                         "--dtype", dtype_name, "--tile", 16, "--overlap", 8)
    assert code == 0, err
    assert np.abs(read_pixels(tmp_path / "tiled.png").astype(int) - full).mean() < 4.0
    # streamed frames in that dtype: what the per-file path writes
    frames = tmp_path / "frames"
    frames.mkdir()
    write_image(frames / "000.png", read_pixels(noisy))
    code, out, err = run(capsys, "denoise", frames, "-o", tmp_path / "streamed", "--method", path,
                         "--dtype", dtype_name, "--stream")
    assert code == 0, err
    assert np.abs(read_pixels(tmp_path / "streamed" / "000.png").astype(int) - half).max() <= 1
    # bm3d / nlm: float32 only; an unknown dtype: argparse's usage error
    code, _, err = run(capsys, "denoise", noisy, "-o", tmp_path / "c.png", "--method", "nlm", "--dtype", dtype_name)
    assert code == 2
    assert err.strip() == (f"error: --dtype {dtype_name}: nlm runs in float32 only; --dtype sets the precision "
                           "of a checkpoint's model")
    assert not (tmp_path / "c.png").exists()
    code, _, err = run(capsys, "denoise", noisy, "-o", tmp_path / "c.png", "--method", path, "--dtype", "float64")
    assert code == 2 and "invalid choice: 'float64'" in err


def test_checkpoint_of_unknown_architecture_and_missing_path(tmp_path, rng, capsys):
    _, noisy = write_pair(tmp_path, rng)
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "o.png", "--method", tmp_path / "other.pth")
    assert code == 2 and "cannot infer the architecture" in err and len(err.strip().splitlines()) == 1
    one = tmp_path / "one.pth"          # DnCNN's keys, one layer: the constructor's error, as the file's
    torch.save({k: v for k, v in build("dncnn", nc=4, nb=3, act_mode="R").state_dict().items()
                if k.startswith("model.0.")}, one)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "o.png", "--method", one)
    assert code == 2 and err.startswith(f"error: {one}: its keys look like dncnn but") and \
        len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "o.png", "--method", "bm4d")
    assert code == 2
    assert err.strip() == "error: --method: expected bm3d, nlm or the path of a checkpoint, got 'bm4d' (no such file)"


def test_device_cuda_without_cuda(tmp_path, rng, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, noisy = write_pair(tmp_path, rng)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "o.png", "--method", "nlm", "--device", "cuda")
    assert code == 2 and "--device cuda" in err
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "o.png", "--method", "nlm")
    assert code == 0 and "on cpu" in out                        # the default without CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
def test_checkpoint_on_cuda_in_each_dtype(tmp_path, rng, capsys, shared_dir, dtype_name):
    """The real DnCNN on the GPU (the fused path, channels_last) in each --dtype writes the CPU
    float32 output to within the dtype's rounding; CUDA graphs with --stream agree with it."""
    ckpt = shared_dir / "checkpoints" / "dncnn_25.pth"
    _, noisy = write_pair(tmp_path, rng, h=70, w=57)
    assert run(capsys, "denoise", noisy, "-o", tmp_path / "cpu.png", "--method", ckpt, "--device", "cpu")[0] == 0
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "gpu.png", "--method", ckpt, "--device", "cuda",
                         "--dtype", dtype_name)
    assert code == 0, err
    assert "on cuda" in out
    cpu = read_pixels(tmp_path / "cpu.png").astype(int)
    gpu = read_pixels(tmp_path / "gpu.png").astype(int)
    # float32 (TF32 convolutions allowed by torch's default for cuDNN), float16: about a level;
    # bfloat16 (8 significant bits): a few
    limit = {"float32": 1, "float16": 2, "bfloat16": 6}[dtype_name]
    assert np.abs(gpu - cpu).max() <= limit
    frames = tmp_path / "frames"
    frames.mkdir()
    write_image(frames / "000.png", read_pixels(noisy))
    code, out, err = run(capsys, "denoise", frames, "-o", tmp_path / "streamed", "--method", ckpt, "--device", "cuda",
                         "--dtype", dtype_name, "--stream")
    assert code == 0, err
    assert np.abs(read_pixels(tmp_path / "streamed" / "000.png").astype(int) - gpu).max() <= 1


# --------------------------------------------------------------------------------------------
# Progress bar, summary, the command itself
# --------------------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_only(tmp_path, rng, monkeypatch, capsys):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", make_pair(rng)[1])
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    code = main(["denoise", str(tmp_path / "0.png"), str(tmp_path / "1.png"), str(tmp_path / "2.png"), "-o",
                 str(tmp_path / "out"), "--method", "nlm", "--sigma", "25"])
    assert code == 0
    drawn = term.getvalue()
    assert "\r[" in drawn and "] 0/3 0.png" in drawn and "] 2/3 2.png" in drawn
    assert drawn.endswith("\r\x1b[K")                            # cleared at the end
    out = capsys.readouterr().out
    assert "3 denoised, 0 skipped, 0 failed (3 files)" in out and re.search(r"in [0-9.]+ s; method nlm", out)
    term2 = _Terminal()
    monkeypatch.setattr(sys, "stderr", term2)
    main(["denoise", str(tmp_path / "0.png"), str(tmp_path / "1.png"), "-o", str(tmp_path / "out"),
          "--method", "nlm", "--overwrite", "--no-progress"])
    assert term2.getvalue() == ""
    capsys.readouterr()


def test_tile_counter_on_a_terminal_only(tmp_path, rng, monkeypatch, capsys):
    """A long tiled run draws fastdenoise.tiled's tile counter on a terminal, not into a log."""
    from fastdenoise import tiling

    ckpt = tmp_path / "dncnn.pth"
    _save(build("dncnn", in_nc=1, out_nc=1, nc=8, nb=3, act_mode="R"), ckpt)
    _, noisy = write_pair(tmp_path, rng, h=64, w=64)
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(tiling.time, "monotonic", lambda: next(ticks))      # a second per reading
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "log.png", "--method", ckpt, "--tile", 16)
    assert code == 0 and "fastdenoise.tiled" not in err
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["denoise", str(noisy), "-o", str(tmp_path / "term.png"), "--method", str(ckpt), "--tile", "16"]) == 0
    assert re.search(r"\rfastdenoise\.tiled: (\d+)/\1 tiles", term.getvalue())
    capsys.readouterr()


def test_per_file_lines_and_summary(tmp_path, rng, capsys):
    for i in range(2):
        write_image(tmp_path / f"{i}.png", make_pair(rng)[1])
    code, out, err = run(capsys, "denoise", tmp_path / "0.png", tmp_path / "1.png", "-o", tmp_path / "out",
                         "--method", "nlm")
    assert code == 0 and err == ""                                # stderr is no TTY here: no bar
    for i in range(2):
        line = line_for(out, tmp_path / f"{i}.png")
        src, dst = re.escape(str(tmp_path / f"{i}.png")), re.escape(str(tmp_path / "out" / f"{i}.png"))
        assert re.fullmatch(rf"{src} -> {dst}  sigma [0-9.]+  [0-9.]+ s", line)
    assert re.search(r"sigma \(0-255 scale, estimated\): 0\.png [0-9.]+, 1\.png [0-9.]+", out)


def test_usage_and_info(capsys):
    assert run(capsys, "--help")[0] == 0
    code, out, err = run(capsys, "denoise", "--help")
    assert code == 0 and "0-255 scale" in out and "exit status" in out
    assert run(capsys)[0] == 2                                    # no command
    assert run(capsys, "denoise")[0] == 2                          # no input, no -o
    code, out, err = run(capsys, "info")
    assert code == 0 and out.startswith("fastdenoise ")


def test_python_dash_m(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fastdenoise", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("fastdenoise ")


def test_tiled_checkpoint(tmp_path, rng, capsys, shared_dir):
    """--tile: the real DnCNN (sigma 25) in 48 x 48 tiles with --blend crop and the overlap the
    tile allows (40 >= twice its receptive-field radius 17) writes the untiled output's pixels;
    hann (exact only from an overlap of 68) within one level; tiling a classical method is a
    usage error."""
    ckpt = shared_dir / "checkpoints" / "dncnn_25.pth"
    _, noisy = write_pair(tmp_path, rng, h=70, w=57)
    assert run(capsys, "denoise", noisy, "-o", tmp_path / "whole.png", "--method", ckpt)[0] == 0
    for blend in ("crop", "hann"):
        code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / f"{blend}.png", "--method", ckpt,
                             "--tile", 48, "--blend", blend)
        assert code == 0, err
        diff = np.abs(read_pixels(tmp_path / f"{blend}.png").astype(int) - read_pixels(tmp_path / "whole.png"))
        assert diff.max() <= 1
        if blend == "crop":                  # float rounding may flip a level, very rarely
            assert (diff > 0).mean() < 0.002
    code, _, err = run(capsys, "denoise", noisy, "-o", tmp_path / "b.png", "--tile", 64)
    assert code == 2 and "--tile / --overlap: tiling runs a checkpoint's model" in err
    code, _, err = run(capsys, "denoise", noisy, "-o", tmp_path / "b.png", "--method", ckpt, "--tile", 16,
                       "--overlap", 16)
    assert code == 2 and "--overlap: expected less than --tile=16, got 16" in err
    code, _, err = run(capsys, "denoise", noisy, "-o", tmp_path / "b.png", "--method", ckpt, "--tile", 0)
    assert code == 2 and "expected a positive integer, got 0" in err


def test_overlap_must_fit_the_models_tile_grid(tmp_path, rng, capsys):
    """--tile with --overlap on a model that works on multiples of 4 pixels: an overlap the tile
    cannot hold with a stride of 4 is a usage error naming the limit; the limit itself runs."""
    from fastdenoise.tiling import model_multiple

    model = build("nafnet", img_channel=3, width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
    assert model_multiple(model) == 4
    path = tmp_path / "nafnet.pth"
    torch.save({"params": model.state_dict()}, path)
    _, noisy = write_pair(tmp_path, rng, c=3, h=29, w=35)
    code, _, err = run(capsys, "denoise", noisy, "-o", tmp_path / "a.png", "--method", path, "--tile", 16,
                       "--overlap", 13)
    assert code == 2 and "--overlap: expected at most 12 with --tile=16 (NAFNet (nafnet.pth) works on " \
        "multiples of 4 pixels" in err and err.strip().endswith("got 13")
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "b.png", "--method", path, "--tile", 16,
                         "--overlap", 12)
    assert code == 0, err


def test_host_memory_plan_tiles_a_checkpoint_on_the_cpu(tmp_path, rng, capsys, monkeypatch):
    """On the CPU, an image whose untiled run would not fit in the available host memory is tiled
    with the largest tile that fits (the checkpoint's memory per pixel measured once per channel
    count), says so, and writes the untiled output's pixels (a local model, default overlap);
    with memory to spare, or with --tile, nothing is planned."""
    from fastdenoise import cli, tiling

    ckpt = tmp_path / "dncnn.pth"
    _save(build("dncnn", in_nc=1, out_nc=1, nc=8, nb=3, act_mode="R"), ckpt)
    _, noisy = write_pair(tmp_path, rng, h=200, w=180)
    monkeypatch.setattr(cli, "MEMORY_PROBE", 64)          # images over 2 * 64^2 pixels are planned
    probes = []
    real_estimate = tiling.estimate_memory
    monkeypatch.setattr(tiling, "estimate_memory", lambda *a, **k: probes.append(k["size"]) or real_estimate(*a, **k))
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "whole.png", "--method", ckpt)
    assert code == 0, err
    assert "tiled" not in line_for(out, noisy) and probes == [64]

    # A budget between the 128-pixel tiled run's need and the untiled one's.
    from fastdenoise.models import load_official
    model, _ = _as_cli(load_official(ckpt), torch.zeros(1, 1, 1, 1))
    with torch.inference_mode():
        est = real_estimate(model, 1, size=64)
    overlap = min(tiling.default_overlap(model, 128), 127)
    low = tiling.tiled_bytes(est, 1, 200, 180, 128, overlap, 1)
    high = est.at(200, 180)
    assert low < high
    budget = int((low + high) / 2 / tiling.MEMORY_HEADROOM)
    monkeypatch.setattr(tiling, "available_memory", lambda device="cpu": budget)
    again = noisy.with_name("again.png")
    again.write_bytes(noisy.read_bytes())
    code, out, err = run(capsys, "denoise", noisy, again, "-o", tmp_path / "t",
                         "--method", ckpt, "--no-progress")
    assert code == 0, err
    line = line_for(out, noisy)
    assert re.search(r"untiled it needs about [0-9.]+ MiB, [0-9.]+ MiB of host memory is available: "
                     r"tiled 128x128$", line)
    assert probes == [64, 64]                             # measured once for both files
    diff = np.abs(read_pixels(tmp_path / "t" / "noisy.png").astype(int) - read_pixels(tmp_path / "whole.png"))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.002
    # No memory at all: the smallest tile whose overlap is at most half of it, and the line says
    # it still does not fit.
    monkeypatch.setattr(tiling, "available_memory", lambda device="cpu": 1)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "small.png", "--method", ckpt, "--no-progress")
    assert code == 0, err
    assert "tiled 64x64 (still more than that" in line_for(out, noisy)
    # --tile is the user's choice: no plan.
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "given.png", "--method", ckpt, "--tile", 96)
    assert code == 0 and "host memory" not in out and probes == [64, 64, 64]


@pytest.mark.cuda
def test_gpu_memory_plan_tiles_a_checkpoint(tmp_path, rng, capsys, monkeypatch):
    """On the GPU, as on the CPU: an image whose untiled run would not fit in the available GPU
    memory is tiled (batches of tiles per forward counted), and the output is the untiled one's."""
    from fastdenoise import cli, tiling

    ckpt = tmp_path / "dncnn.pth"
    _save(build("dncnn", in_nc=1, out_nc=1, nc=8, nb=3, act_mode="R"), ckpt)
    _, noisy = write_pair(tmp_path, rng, h=200, w=180)
    monkeypatch.setattr(cli, "MEMORY_PROBE", 64)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "whole.png", "--method", ckpt,
                         "--device", "cuda")
    assert code == 0 and "tiled" not in line_for(out, noisy), err
    monkeypatch.setattr(tiling, "available_memory", lambda device="cpu": 1)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "t.png", "--method", ckpt,
                         "--device", "cuda", "--no-progress")
    assert code == 0, err
    assert re.search(r"untiled it needs about [0-9.]+ MiB, 1 bytes of GPU memory is available: tiled 64x64 "
                     r"\(still more than that", line_for(out, noisy))
    diff = np.abs(read_pixels(tmp_path / "t.png").astype(int) - read_pixels(tmp_path / "whole.png"))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.002


def test_out_of_host_memory_retries_tiled(tmp_path, rng, capsys, monkeypatch):
    """A host allocation failure of the untiled run (PyTorch's CPU allocator error) is retried in
    tiles, noted on the file's line; any other RuntimeError is still the file's error."""
    from fastdenoise import cli
    from fastdenoise.models import DnCNN

    ckpt = tmp_path / "dncnn.pth"
    _save(build("dncnn", in_nc=1, out_nc=1, nc=8, nb=3, act_mode="R"), ckpt)
    _, noisy = write_pair(tmp_path, rng, h=70, w=57)
    assert run(capsys, "denoise", noisy, "-o", tmp_path / "whole.png", "--method", ckpt)[0] == 0
    real_forward = DnCNN.forward
    message = ["DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456789 bytes."]

    def forward(self, x):
        if x.shape[-2] * x.shape[-1] > 48 * 48:
            raise RuntimeError(message[0])
        return real_forward(self, x)

    monkeypatch.setattr(DnCNN, "forward", forward)
    monkeypatch.setattr(cli, "AUTO_TILE", 48)
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "t.png", "--method", ckpt, "--no-progress")
    assert code == 0, err
    assert "out of host memory untiled: tiled 48x48" in line_for(out, noisy)
    diff = np.abs(read_pixels(tmp_path / "t.png").astype(int) - read_pixels(tmp_path / "whole.png"))
    assert diff.max() <= 1
    message[0] = "some other failure"
    code, out, err = run(capsys, "denoise", noisy, "-o", tmp_path / "u.png", "--method", ckpt)
    assert code == 1 and err.strip() == f"error: {noisy}: some other failure"


def test_stream_frames(tmp_path, rng, capsys, shared_dir):
    """--stream: a folder of frames through StreamDenoiser (on the CPU: eager, channels_last)
    writes what the per-file path writes (within a level: another memory format); classical
    methods, noise-level models and --tile are usage errors."""
    ckpt = shared_dir / "checkpoints" / "dncnn_25.pth"
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(3):
        write_image(frames / f"{k:03d}.png", make_pair(rng, h=36, w=44)[1])
    assert run(capsys, "denoise", frames, "-o", tmp_path / "plain", "--method", ckpt)[0] == 0
    code, out, err = run(capsys, "denoise", frames, "-o", tmp_path / "streamed", "--method", ckpt, "--stream")
    assert code == 0, err
    for k in range(3):
        a = read_pixels(tmp_path / "plain" / f"{k:03d}.png").astype(int)
        b = read_pixels(tmp_path / "streamed" / f"{k:03d}.png").astype(int)
        assert np.abs(a - b).max() <= 1
    code, _, err = run(capsys, "denoise", frames, "-o", tmp_path / "x", "--stream")
    assert code == 2 and "--stream: runs a blind checkpoint's model" in err
    code, _, err = run(capsys, "denoise", frames, "-o", tmp_path / "x", "--stream", "--method", ckpt, "--tile", 32)
    assert code == 2 and "not with --tile" in err
