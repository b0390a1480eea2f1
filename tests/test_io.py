"""fastdenoise.io with its own PNG and TIFF codecs: 8- and 16-bit grey and colour round trips
keep every bit; the codecs against the PNG / TIFF definitions and against independent
implementations (Pillow for 8-bit files, tifffile -- a scikit-image dependency -- for TIFF);
corrupt and unsupported files raise ImageFormatError.

The float-image behaviour of read_image / write_image is in tests/test_metrics_io.py.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from fastdenoise import _png, _tiff
from fastdenoise.errors import DTypeError, ImageFormatError, ShapeError
from fastdenoise.io import quantize, read_image, read_pixels, to_float, write_image


@pytest.fixture
def rng(_seed):
    return np.random.default_rng(_seed)


def _rand(rng, shape, dtype):
    return rng.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)


def _smooth16(rng, h, w, c):
    """A 16-bit image with structure (the filters and LZW then have something to predict)."""
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [(yy * 311 + xx * 97 * (i + 1)) % 65536 for i in range(c)]
    img = np.stack(planes, axis=-1) + rng.integers(0, 300, (h, w, c))
    return np.uint16(img % 65536)


# --------------------------------------------------------------------------------------------
# PNG by hand: the definitions the codec must follow, written plainly
# --------------------------------------------------------------------------------------------

def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png_bytes(samples: np.ndarray, rows_stream: bytes, interlace: int = 0) -> bytes:
    h, w, c = samples.shape
    depth = 8 * samples.dtype.itemsize
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (_png.SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))
            + _chunk(b"IDAT", zlib.compress(rows_stream)) + _chunk(b"IEND", b""))


def _raw_rows(samples: np.ndarray) -> bytes:
    """Rows with filter type 0 (None): a zero byte, then the big-endian samples."""
    be = samples.astype(samples.dtype.newbyteorder(">"))
    return b"".join(b"\x00" + be[y].tobytes() for y in range(samples.shape[0]))


def _reference_unfilter(filtered: np.ndarray, bpp: int) -> np.ndarray:
    """PNG row unfiltering byte by byte, as the specification words it."""
    h, n1 = filtered.shape
    out = np.zeros((h, n1 - 1), np.int64)
    for y in range(h):
        kind = filtered[y, 0]
        for i in range(n1 - 1):
            a = out[y, i - bpp] if i >= bpp else 0
            b = out[y - 1, i] if y > 0 else 0
            c = out[y - 1, i - bpp] if y > 0 and i >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[y, i] = (int(filtered[y, i + 1]) + pred) % 256
    return out.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Round trips through the public functions
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("c", [1, 3])
def test_round_trip_keeps_depth_and_values(tmp_path, rng, ext, dtype, c):
    img = _rand(rng, (13, 21, c), dtype)
    path = tmp_path / f"img{ext}"
    write_image(path, img)
    got = read_pixels(path)
    assert got.dtype == dtype and got.shape == (13, 21, c)
    assert np.array_equal(got, img)
    f = read_image(path)
    assert f.dtype == np.float32 and np.array_equal(f, np.float32(img / float(np.iinfo(dtype).max)))
    t = read_image(path, as_tensor=True)
    assert t.shape == (1, c, 13, 21) and np.array_equal(t[0].permute(1, 2, 0).numpy(), f)


def test_sixteen_bit_files_are_read_by_other_readers(tmp_path, rng):
    """What we write is what other readers see: 16-bit grey PNG and TIFF through Pillow, 16-bit
    RGB TIFF through tifffile."""
    grey = _rand(rng, (9, 14, 1), np.uint16)
    write_image(tmp_path / "g.png", grey)
    write_image(tmp_path / "g.tif", grey)
    for name in ("g.png", "g.tif"):
        with Image.open(tmp_path / name) as im:
            assert im.mode.startswith("I;16") and np.array_equal(np.asarray(im), grey[:, :, 0])
    rgb = _rand(rng, (9, 14, 3), np.uint16)
    write_image(tmp_path / "c.tif", rgb)
    assert np.array_equal(tifffile.imread(tmp_path / "c.tif"), rgb)


def test_pillow_alone_loses_the_low_byte_of_16_bit_rgb(tmp_path, rng):
    """Why the codecs exist: Pillow opens 16-bit RGB PNG and TIFF as 8-bit. read_pixels does not."""
    rgb = _rand(rng, (5, 6, 3), np.uint16)
    (tmp_path / "c.png").write_bytes(_png_bytes(rgb, _raw_rows(rgb)))
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    for name in ("c.png", "c.tif"):
        with Image.open(tmp_path / name) as im:
            assert np.asarray(im).dtype == np.uint8
        assert np.array_equal(read_pixels(tmp_path / name), rgb)


def test_float_and_uint8_input_at_16_bits(tmp_path, rng):
    f = rng.random((7, 9, 3)).astype(np.float32) * 1.2 - 0.1
    write_image(tmp_path / "f.png", f, bits=16)
    expected = np.uint16((np.clip(f, 0, 1) * 65535.0).round())
    assert np.array_equal(read_pixels(tmp_path / "f.png"), expected)
    assert np.array_equal(quantize(torch.from_numpy(f).permute(2, 0, 1)[None], 16), expected)
    u8 = _rand(rng, (7, 9, 1), np.uint8)
    write_image(tmp_path / "u.tif", u8, bits=16)                  # 0..255 -> 0..65535 exactly
    got = read_pixels(tmp_path / "u.tif")
    assert got.dtype == np.uint16 and np.array_equal(got, u8.astype(np.uint16) * 257)


def test_jpeg_round_trip(tmp_path, rng):
    yy, xx = np.mgrid[0:24, 0:32]
    smooth = np.uint8(np.stack([yy * 8, xx * 6, (yy + xx) * 4], axis=-1))
    for img in (smooth, smooth[:, :, :1]):
        write_image(tmp_path / "a.jpg", img)
        with Image.open(tmp_path / "a.jpg") as im:
            assert im.format == "JPEG" and im.mode == ("RGB" if img.shape[2] == 3 else "L")
        got = read_pixels(tmp_path / "a.jpg")
        assert got.dtype == np.uint8 and got.shape == img.shape
        assert np.abs(got.astype(int) - img).max() <= 8               # lossy, quality 95
    with pytest.raises(ValueError, match="bits: 16-bit samples need"):
        write_image(tmp_path / "b.jpg", smooth, bits=16)
    with pytest.raises(ValueError, match="bits: 16-bit samples need"):
        write_image(tmp_path / "b.jpeg", smooth.astype(np.uint16))


def test_write_rejects_lossy_or_bad_values(tmp_path, rng):
    with pytest.raises(ValueError, match="low byte"):
        write_image(tmp_path / "a.png", _rand(rng, (4, 4), np.uint16), bits=8)
    with pytest.raises(ValueError, match="finite"):
        write_image(tmp_path / "a.png", np.full((4, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="bits: expected 8 or 16"):
        write_image(tmp_path / "a.png", np.zeros((4, 4), np.float32), bits=12)
    with pytest.raises(ShapeError, match=r"^img: expected a non-empty image, got \(H, W, C\) = \[0, 4, 3\]$"):
        write_image(tmp_path / "a.png", np.zeros((0, 4, 3), np.float32))
    with pytest.raises(ShapeError, match=r"^img: expected \(H, W\), \(H, W, 1\) or \(H, W, 3\), got \[4, 4, 2\]$"):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 2), np.float32))
    with pytest.raises(ShapeError, match=r"^img: expected one image \(1, C, H, W\), got \[2, 3, 4, 4\]$"):
        write_image(tmp_path / "a.png", torch.zeros(2, 3, 4, 4))
    with pytest.raises(ShapeError, match=r"^img: expected a \(C, H, W\) or \(1, C, H, W\) tensor, got \[4, 4\]$"):
        write_image(tmp_path / "a.png", torch.zeros(4, 4))
    with pytest.raises(DTypeError, match=r"^img: expected float values in \[0, 1\], uint8 or uint16, got int32$"):
        write_image(tmp_path / "a.png", np.zeros((4, 4), np.int32))
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("quality", [0, 101, -5, 95.5, "high", True, None])
def test_write_rejects_a_bad_quality_before_writing(tmp_path, quality):
    with pytest.raises(ValueError, match=rf"^quality: expected an int from 1 to 100 \(JPEG quality\), "
                                         rf"got {re.escape(repr(quality))}$"):
        write_image(tmp_path / "a.jpg", np.zeros((4, 4), np.float32), quality=quality)
    assert not (tmp_path / "a.jpg").exists()


def test_jpeg_quality_is_used(tmp_path, rng):
    img = _rand(rng, (32, 32, 3), np.uint8)
    sizes = {}
    for q in (1, np.int64(50), 100):
        write_image(tmp_path / f"q{q}.jpg", img, quality=q)
        sizes[int(q)] = (tmp_path / f"q{q}.jpg").stat().st_size
    assert sizes[1] < sizes[50] < sizes[100]


@pytest.mark.parametrize("name", ["a.xyz", "noext", "a."])
def test_write_names_an_extension_pillow_cannot_write(tmp_path, name):
    ext = {"a.xyz": "'.xyz'", "noext": "'no extension'", "a.": "'.'"}[name]
    with pytest.raises(ValueError, match=rf"^path: expected a file extension Pillow can write \(.png, .jpg, "
                                         rf"\.tif, \.\.\.\), got {re.escape(ext)} in "):
        write_image(tmp_path / name, np.zeros((4, 4), np.float32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", [".bmp", ".PNG", ".gif", ".webp"])
def test_write_any_extension_pillow_writes(tmp_path, ext):
    img = np.uint8(np.arange(48).reshape(4, 4, 3))
    write_image(tmp_path / f"a{ext}", img)
    with Image.open(tmp_path / f"a{ext}") as im:
        assert im.size == (4, 4)


def test_to_float_checks_its_samples():
    with pytest.raises(TypeError, match=r"^pixels: expected a numpy array of uint8 or uint16 samples, got list$"):
        to_float([[1]])
    for dtype in (np.float32, np.int32, np.bool_):
        with pytest.raises(TypeError, match=r"^pixels: expected uint8 or uint16 samples \(as read_pixels gives "
                                            rf"them\), got {np.dtype(dtype)}$"):
            to_float(np.zeros((2, 2, 1), dtype))
    with pytest.raises(ShapeError, match=r"^pixels: expected \(H, W, C\) or \(H, W\) samples, got shape "
                                         r"\[1, 2, 2, 1\]$"):
        to_float(np.zeros((1, 2, 2, 1), np.uint8))
    grey = np.array([[0, 255], [51, 102]], np.uint8)
    t = to_float(grey, as_tensor=True)
    assert t.shape == (1, 1, 2, 2) and torch.equal(t[0, 0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    assert np.array_equal(to_float(grey)[:, :, 0], np.float32(grey / 255.0))
    assert np.array_equal(to_float(np.array([[65535]], np.uint16)), np.ones((1, 1, 1), np.float32))


def test_modes_on_16_bit_files(tmp_path, rng):
    rgba = _rand(rng, (6, 7, 4), np.uint16)
    (tmp_path / "a.png").write_bytes(_png_bytes(rgba, _raw_rows(rgba)))
    assert np.array_equal(read_pixels(tmp_path / "a.png"), rgba[:, :, :3])          # alpha dropped
    la = _rand(rng, (6, 7, 2), np.uint16)
    (tmp_path / "la.png").write_bytes(_png_bytes(la, _raw_rows(la)))
    assert np.array_equal(read_pixels(tmp_path / "la.png"), la[:, :, :1])
    grey = read_pixels(tmp_path / "a.png", mode="L")
    r, g, b = (rgba[:, :, i].astype(np.float64) for i in range(3))
    assert grey.dtype == np.uint16 and grey.shape == (6, 7, 1)
    assert np.abs(grey[:, :, 0] - (0.299 * r + 0.587 * g + 0.114 * b)).max() <= 1.0
    rgb = read_pixels(tmp_path / "la.png", mode="RGB")
    assert rgb.shape == (6, 7, 3) and all(np.array_equal(rgb[:, :, i], la[:, :, 0]) for i in range(3))


def test_input_arrays_not_modified(tmp_path, rng):
    f = rng.random((5, 6, 3)).astype(np.float32) * 2 - 0.5
    before = f.copy()
    write_image(tmp_path / "x.png", f, bits=16)
    write_image(tmp_path / "x.tif", f)
    assert np.array_equal(f, before)


# --------------------------------------------------------------------------------------------
# PNG codec
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bpp", [1, 2, 3, 4, 6, 8])
def test_unfilter_matches_the_definition(rng, bpp, monkeypatch):
    monkeypatch.setattr(_png, "_BAND", 5)             # several bands, so their seams are tested
    for h, w in ((1, 1), (1, 9), (11, 1), (12, 7), (7, 13)):
        filtered = _rand(rng, (h, 1 + w * bpp), np.uint8)
        for kinds in (rng.integers(0, 5, h), *([k] * h for k in range(5)), rng.integers(3, 5, h)):
            filtered[:, 0] = kinds
            assert np.array_equal(_png.unfilter(filtered, bpp), _reference_unfilter(filtered, bpp)), (h, w, kinds)


@pytest.mark.parametrize("filter_type", [None, 0, 1, 2, 3, 4])
def test_filter_rows_inverts_unfilter(rng, filter_type, monkeypatch):
    monkeypatch.setattr(_png, "_ENCODE_BAND", 4)
    for bpp, w, h in ((1, 9, 10), (3, 5, 9), (6, 4, 3), (8, 1, 6)):
        rows = _rand(rng, (h, w * bpp), np.uint8)
        filtered = _png.filter_rows(rows, bpp, filter_type)
        if filter_type is not None:
            assert (filtered[:, 0] == filter_type).all()
        assert np.array_equal(_reference_unfilter(filtered, bpp), rows)


@pytest.mark.parametrize("filter_type", [None, 0, 1, 2, 3, 4])
def test_png_encoder_output_read_by_pillow(tmp_path, rng, filter_type):
    """8-bit PNGs from our encoder, every filter, decoded by Pillow (an independent decoder)."""
    for c, mode in ((1, "L"), (3, "RGB"), (4, "RGBA")):
        img = _rand(rng, (10, 17, c), np.uint8)
        data = _png.encode(img, filter_type=filter_type)
        with Image.open(io.BytesIO(data)) as im:
            assert im.mode == mode
            got = np.asarray(im)
        assert np.array_equal(got.reshape(img.shape), img)
        assert np.array_equal(_png.decode(data), img)


def test_png_decoder_reads_pillow_and_hand_made_files(tmp_path, rng):
    """Pillow's 8-bit PNGs (its own adaptive filtering) and hand-made 16-bit ones (filter None)."""
    for shape in ((23, 31), (23, 31, 3), (23, 31, 4)):
        img = np.uint8(_smooth16(rng, 23, 31, 1 if len(shape) == 2 else shape[2]) >> 8).reshape(shape)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        assert np.array_equal(_png.decode(buf.getvalue()).reshape(shape), img)
    for c in (1, 2, 3, 4):
        img = _rand(rng, (5, 8, c), np.uint16)
        assert np.array_equal(_png.decode(_png_bytes(img, _raw_rows(img))), img)


@pytest.mark.parametrize("c", [1, 3])
def test_png_encoder_16_bit_follows_the_format(rng, c):
    """Decode our 16-bit output by hand: chunks, zlib, the reference unfilter, big-endian samples."""
    img = _smooth16(rng, 19, 11, c)
    data = _png.encode(img)
    assert data.startswith(_png.SIGNATURE)
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(ctype + body)
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat += body
        pos += 12 + length
    assert ihdr == (11, 19, 16, 0 if c == 1 else 2, 0, 0, 0)
    rows = _reference_unfilter(np.frombuffer(zlib.decompress(idat), np.uint8).reshape(19, -1), 2 * c)
    assert np.array_equal(rows.view(">u2").reshape(19, 11, c), img)


def _adam7_stream(img: np.ndarray) -> bytes:
    """The interlaced rows (filter None) of an image, pass by pass, as the specification orders them."""
    out = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                           (0, 1, 1, 2)):
        sub = img[y0::dy, x0::dx]
        if sub.size:
            out += _raw_rows(sub)
    return out


def test_png_interlaced(rng):
    for h, w in ((1, 1), (3, 2), (9, 13), (16, 16)):
        u8 = _rand(rng, (h, w, 3), np.uint8)
        data8 = _png_bytes(u8, _adam7_stream(u8), interlace=1)
        with Image.open(io.BytesIO(data8)) as im:                # our Adam7 packing is Pillow's
            assert np.array_equal(np.asarray(im), u8)
        assert np.array_equal(_png.decode(data8), u8)
        u16 = _rand(rng, (h, w, 1), np.uint16)
        assert np.array_equal(_png.decode(_png_bytes(u16, _adam7_stream(u16), interlace=1)), u16)


def test_png_corrupt_files(tmp_path, rng):
    img = _smooth16(rng, 12, 10, 3)
    good = _png.encode(img)
    path = tmp_path / "x.png"

    def read(data):
        path.write_bytes(data)
        return read_pixels(path)

    bad_crc = bytearray(good)
    bad_crc[45] ^= 0xFF                                          # inside the IDAT data (from byte 41)
    with pytest.raises(ImageFormatError, match="CRC mismatch"):
        read(bytes(bad_crc))
    with pytest.raises(ImageFormatError, match="truncated"):
        read(good[:len(good) // 2])
    too_few_rows = _png_bytes(img, _raw_rows(img[:6]))             # IHDR says 12 rows, IDAT has 6
    with pytest.raises(ImageFormatError, match="truncated: expected"):
        read(too_few_rows)
    rows = bytearray(_raw_rows(img))
    rows[0] = 7                                                   # filter type 7 does not exist
    with pytest.raises(ImageFormatError, match="filter types 0 to 4"):
        read(_png_bytes(img, bytes(rows)))
    not_zlib = good[:33] + _chunk(b"IDAT", b"not a zlib stream") + _chunk(b"IEND", b"")
    with pytest.raises(ImageFormatError, match="does not decompress"):
        read(not_zlib)
    path.write_bytes(good)
    assert np.array_equal(read_pixels(path), img)


# --------------------------------------------------------------------------------------------
# TIFF codec
# --------------------------------------------------------------------------------------------

TIFFFILE_VARIANTS = {
    "plain": dict(),
    "deflate": dict(compression="zlib"),
    "deflate_predictor": dict(compression="zlib", predictor=True),
    "strips_of_5": dict(rowsperstrip=5),
    "tiles": dict(tile=(16, 32)),
    "tiles_deflate_predictor": dict(tile=(16, 16), compression="zlib", predictor=True),
    "big_endian": dict(byteorder=">"),
    "big_endian_predictor": dict(byteorder=">", compression="zlib", predictor=True),
    "bigtiff": dict(bigtiff=True),
    "bigtiff_big_endian_tiles": dict(bigtiff=True, byteorder=">", tile=(16, 16), compression="zlib"),
}


@pytest.mark.parametrize("variant", list(TIFFFILE_VARIANTS))
def test_tiff_decoder_reads_tifffile_variants(tmp_path, rng, variant):
    img = _smooth16(rng, 37, 45, 3)
    tifffile.imwrite(tmp_path / "a.tif", img, photometric="rgb", **TIFFFILE_VARIANTS[variant])
    assert np.array_equal(read_pixels(tmp_path / "a.tif"), img)
    grey = img[:, :, 1]
    tifffile.imwrite(tmp_path / "g.tif", grey, photometric="minisblack", **TIFFFILE_VARIANTS[variant])
    assert np.array_equal(read_pixels(tmp_path / "g.tif")[:, :, 0], grey)


def test_tiff_planar_and_white_is_zero(tmp_path, rng):
    img = _smooth16(rng, 21, 30, 3)
    for kw in (dict(), dict(rowsperstrip=4, compression="zlib", predictor=True), dict(tile=(16, 16))):
        tifffile.imwrite(tmp_path / "p.tif", np.ascontiguousarray(img.transpose(2, 0, 1)), photometric="rgb",
                         planarconfig="separate", **kw)
        assert np.array_equal(read_pixels(tmp_path / "p.tif"), img)
    tifffile.imwrite(tmp_path / "w.tif", img[:, :, 0], photometric="miniswhite")
    assert np.array_equal(read_pixels(tmp_path / "w.tif")[:, :, 0], 65535 - img[:, :, 0])


@pytest.mark.parametrize("compression", ["tiff_lzw", "packbits", "tiff_adobe_deflate"])
def test_tiff_decoder_reads_pillow_compressions(tmp_path, rng, compression):
    """LZW and PackBits as libtiff (through Pillow) writes them: 8-bit RGB straight into the
    decoder, 16-bit grey through read_pixels."""
    rgb = np.uint8(_smooth16(rng, 40, 33, 3) >> 8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="TIFF", compression=compression)
    assert np.array_equal(_tiff.decode(buf.getvalue()), rgb)
    grey = _smooth16(rng, 40, 33, 1)[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "g.tif", compression=compression)
    assert np.array_equal(read_pixels(tmp_path / "g.tif")[:, :, 0], grey)


def test_tiff_encoder_read_by_tifffile(rng):
    for c in (1, 2, 3, 4):
        for dtype in (np.uint8, np.uint16):
            img = _rand(rng, (300, 7, c), dtype)                  # several strips
            got = tifffile.imread(io.BytesIO(_tiff.encode(img)))
            assert np.array_equal(got.reshape(img.shape), img)


def test_tiff_unsupported_and_corrupt(tmp_path, rng):
    img = _smooth16(rng, 8, 9, 3)
    cases = {
        "signed": (lambda p: tifffile.imwrite(p, img.astype(np.int16), photometric="rgb"), "signed"),
        "float": (lambda p: tifffile.imwrite(p, img[:, :, 0].astype(np.float32)), "BitsPerSample"),
        "int32": (lambda p: tifffile.imwrite(p, img[:, :, 0].astype(np.uint32)), "BitsPerSample"),
        "float_rgb": (lambda p: tifffile.imwrite(p, img.astype(np.float32), photometric="rgb"), "BitsPerSample"),
        "cmyk": (lambda p: tifffile.imwrite(p, np.concatenate([img, img[:, :, :1]], 2), photometric="separated"),
                 "CMYK"),
    }
    for name, (make, message) in cases.items():
        path = tmp_path / f"{name}.tif"
        make(path)
        with pytest.raises(ImageFormatError, match=message):
            read_pixels(path)
    good = (tmp_path / "good.tif")
    write_image(good, img)
    data = good.read_bytes()
    (tmp_path / "short.tif").write_bytes(data[:len(data) // 2])     # the IFD is at the end
    with pytest.raises(ImageFormatError, match="truncated"):
        read_pixels(tmp_path / "short.tif")
    # Strip data cut off, IFD kept: move the IFD offset past the file's end instead.
    (tmp_path / "offset.tif").write_bytes(data[:4] + struct.pack("<I", len(data) + 100) + data[8:])
    with pytest.raises(ImageFormatError, match="IFD offset"):
        read_pixels(tmp_path / "offset.tif")
