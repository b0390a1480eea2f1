"""PNG decoding and encoding with zlib and numpy: 8- and 16-bit grey, grey + alpha, RGB and RGBA.

Pillow opens a 16-bit colour PNG as an 8-bit image (it drops the low byte of every sample),
so :mod:`fastdenoise.io` reads and writes every 16-bit PNG through this module instead.
Palette and 1/2/4-bit images are left to Pillow, which reads them exactly.

The format (PNG specification, 3rd edition): an 8-byte signature, then chunks
``length (4 bytes, big-endian) | type (4) | data | CRC-32 of type + data``. ``IHDR`` comes
first (width, height, bit depth, colour type, compression 0, filter method 0, interlace 0 or
1 for Adam7); the concatenated ``IDAT`` data is one zlib stream of *filtered rows*: each row
is one filter-type byte followed by the row's bytes (samples big-endian), where every byte
was replaced by its difference to a prediction from the byte ``bpp`` positions to the left
(``a``), the byte above (``b``) and the one above-left (``c``); ``bpp`` is the number of bytes
per pixel, neighbours outside the image are 0. The five filters predict 0 (None), ``a``
(Sub), ``b`` (Up), ``(a + b) // 2`` (Average) and the Paeth predictor of ``a, b, c``.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import numpy as np

from .errors import ImageFormatError

__all__ = ["SIGNATURE", "PNGHeader", "read_header", "decode", "encode", "unfilter", "filter_rows"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: colour type -> samples per pixel (the types this module reads and writes; 3 = palette is not)
CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}
_COLOUR_NAMES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey + alpha", 6: "RGBA"}
#: bit depths the PNG specification allows for each colour type
_ALLOWED_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}

#: Adam7 passes: (x0, y0, dx, dy) -- pass p holds the pixels (y0 + i dy, x0 + j dx).
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))

#: Rows unfiltered together by the wavefront (bounds its temporary memory: about
#: 4 * _BAND * row bytes).
_BAND = 512
#: Rows filtered together when encoding (bounds the five candidate filterings kept at once).
_ENCODE_BAND = 256
#: IDAT chunks written are at most this long.
_IDAT_SIZE = 1 << 20


class PNGHeader(NamedTuple):
    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int


# --------------------------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------------------------

def _chunks(data: bytes):
    """Yield (type, body) for every chunk after the signature, checking lengths and CRCs."""
    if not data.startswith(SIGNATURE):
        raise ImageFormatError("expected a PNG file (its 8-byte signature), got other bytes")
    pos = len(SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise ImageFormatError("PNG is truncated: the file ends before its IEND chunk")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ImageFormatError(f"PNG is truncated: the {_name(ctype)} chunk needs {length} bytes, "
                                   f"the file ends {end + 4 - len(data)} bytes early")
        body = data[pos + 8:end]
        (crc,) = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            raise ImageFormatError(f"PNG is corrupt: CRC mismatch in the {_name(ctype)} chunk at byte {pos}")
        yield ctype, body
        if ctype == b"IEND":
            return
        pos = end + 4


def _name(ctype: bytes) -> str:
    return ctype.decode("latin-1")


def _parse_ihdr(body: bytes) -> PNGHeader:
    if len(body) != 13:
        raise ImageFormatError(f"PNG is corrupt: expected a 13-byte IHDR chunk, got {len(body)} bytes")
    w, h, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", body)
    if w == 0 or h == 0 or w > 0x7FFFFFFF or h > 0x7FFFFFFF:
        raise ImageFormatError(f"PNG is corrupt: expected a width and height of 1 to 2^31 - 1, got {w} x {h}")
    if ctype not in _ALLOWED_DEPTHS or depth not in _ALLOWED_DEPTHS[ctype]:
        raise ImageFormatError(f"PNG is corrupt: colour type {ctype} with bit depth {depth} is not a valid "
                               "combination")
    if comp != 0 or filt != 0 or interlace not in (0, 1):
        raise ImageFormatError(f"PNG is corrupt: expected compression 0, filter method 0 and interlace 0 "
                               f"or 1, got {comp}, {filt} and {interlace}")
    return PNGHeader(w, h, depth, ctype, interlace)


def read_header(data: bytes) -> PNGHeader:
    """The IHDR fields of a PNG file's bytes (only the first chunk is looked at)."""
    if not data.startswith(SIGNATURE):
        raise ImageFormatError("expected a PNG file (its 8-byte signature), got other bytes")
    head = data[len(SIGNATURE):len(SIGNATURE) + 8 + 13]
    if len(head) < 21 or head[4:8] != b"IHDR":
        raise ImageFormatError("PNG is corrupt: expected the IHDR chunk first")
    return _parse_ihdr(head[8:])


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

def decode(data: bytes) -> np.ndarray:
    """Decode a PNG file's bytes: (H, W, C) uint8 (bit depth 8) or uint16 (bit depth 16) with
    C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA), samples as stored (no gamma or
    colour management applied). Interlaced (Adam7) images are supported. Raises
    ImageFormatError for a corrupt or truncated file, and for palette or 1/2/4-bit images
    (which Pillow reads exactly)."""
    header, idat = None, []
    for ctype, body in _chunks(data):
        if header is None:
            if ctype != b"IHDR":
                raise ImageFormatError(f"PNG is corrupt: expected the IHDR chunk first, got {_name(ctype)}")
            header = _parse_ihdr(body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IHDR":
            raise ImageFormatError("PNG is corrupt: a second IHDR chunk")
        elif not ctype[0] & 0x20 and ctype not in (b"PLTE", b"IEND"):
            # Bit 5 of the first letter clear: a critical chunk, which a decoder must understand.
            raise ImageFormatError(f"PNG has an unknown critical chunk {_name(ctype)}")
    if header is None:  # pragma: no cover - _chunks always yields IHDR or raises first
        raise ImageFormatError("PNG is corrupt: no IHDR chunk")
    if header.colour_type not in CHANNELS or header.bit_depth not in (8, 16):
        raise ImageFormatError(f"expected an 8- or 16-bit grey/RGB(A) PNG, got a {header.bit_depth}-bit "
                               f"{_COLOUR_NAMES[header.colour_type]} PNG")
    if not idat:
        raise ImageFormatError("PNG is corrupt: no IDAT chunk (no image data)")

    w, h, c = header.width, header.height, CHANNELS[header.colour_type]
    nbytes = header.bit_depth // 8
    bpp = c * nbytes
    passes = ADAM7 if header.interlace else ((0, 0, 1, 1),)
    sizes = []
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(w - x0) // dx), -(-(h - y0) // dy)
        sizes.append((pw, ph) if pw > 0 and ph > 0 else (0, 0))   # empty passes store nothing
    expected = sum(ph * (1 + pw * bpp) for pw, ph in sizes)

    raw = _inflate(b"".join(idat), expected)
    dtype = np.dtype(">u2") if nbytes == 2 else np.dtype(np.uint8)
    out = np.empty((h, w, c), np.uint16 if nbytes == 2 else np.uint8)
    pos = 0
    for (x0, y0, dx, dy), (pw, ph) in zip(passes, sizes):
        if pw == 0:
            continue
        n = ph * (1 + pw * bpp)
        rows = unfilter(raw[pos:pos + n].reshape(ph, 1 + pw * bpp), bpp)
        out[y0::dy, x0::dx] = rows.view(dtype).reshape(ph, pw, c)
        pos += n
    return out


def _inflate(stream: bytes, expected: int) -> np.ndarray:
    """Decompress the zlib stream, which must hold at least ``expected`` bytes (more is ignored,
    as libpng does); at most ``expected`` bytes are ever produced."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(stream, expected)
    except zlib.error as exc:
        raise ImageFormatError(f"PNG is corrupt: its compressed image data does not decompress ({exc})") from None
    if len(raw) < expected:
        raise ImageFormatError(f"PNG is truncated: expected {expected} bytes of image data, got {len(raw)}")
    return np.frombuffer(raw, np.uint8)


def unfilter(filtered: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG row filtering: (h, 1 + n) uint8 rows, each a filter-type byte then n filtered
    bytes, -> the (h, n) uint8 row bytes. ``bpp``: bytes per pixel (n is a multiple of it).

    Rows filtered with None, Sub or Up are undone a row at a time (Sub is a running sum mod 256
    along each of the ``bpp`` byte lanes). Average and Paeth make each byte depend on the
    decoded byte to its left, which would mean a Python loop over every pixel; instead bands
    of rows are decoded along anti-diagonals (a wavefront): the pixels (y, x) with x + y = s
    depend only on the diagonals s - 1 and s - 2, so each step decodes a whole diagonal with
    numpy, and a band of r rows of w pixels takes r + w - 1 steps.
    """
    h, n1 = filtered.shape
    n = n1 - 1
    types = filtered[:, 0]
    if h and int(types.max()) > 4:
        bad = sorted(set(int(t) for t in types[types > 4]))[:5]
        raise ImageFormatError(f"PNG is corrupt: expected row filter types 0 to 4, got {bad}")
    out = np.empty((h, n), np.uint8)
    prior = np.zeros(n, np.uint8)
    for y0 in range(0, h, _BAND):
        y1 = min(h, y0 + _BAND)
        t = types[y0:y1]
        if (t >= 3).any():
            _unfilter_wavefront(filtered[y0:y1, 1:], t, prior, bpp, out[y0:y1])
        else:
            _unfilter_rows(filtered[y0:y1, 1:], t, prior, bpp, out[y0:y1])
        prior = out[y1 - 1]
    return out


def _unfilter_rows(raw: np.ndarray, types: np.ndarray, prior: np.ndarray, bpp: int, out: np.ndarray) -> None:
    """Rows filtered with None (0), Sub (1) or Up (2) only. uint8 arithmetic wraps mod 256."""
    for i, t in enumerate(types):
        if t == 0:
            out[i] = raw[i]
        elif t == 1:
            out[i] = np.cumsum(raw[i].reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        else:
            np.add(raw[i], prior, out=out[i])
        prior = out[i]


def _unfilter_wavefront(raw: np.ndarray, types: np.ndarray, prior: np.ndarray, bpp: int,
                        out: np.ndarray) -> None:
    """Rows with any filter types, decoded one anti-diagonal of pixels at a time.

    The decoded pixels live in a (r + 1) x (w + 1) grid of int16 ``bpp``-byte pixels: row 0 is
    the prior row (the last decoded row above the band, zeros at the top of the image) and
    column 0 is zeros, so the left (a), up (b) and up-left (c) neighbours of every pixel exist.
    Pixel (y, x) of the band is grid[y + 1, x + 1], at flat position (y + 1)(w + 1) + x + 1.
    Along an anti-diagonal (y + 1, x - 1) follows (y, x) at a flat distance of w, so each
    diagonal -- and its a, b and c neighbours, at flat offsets -1, -(w + 1), -(w + 2) -- is a
    strided slice: no gathers. The filtered bytes are laid out with the same pitch.
    """
    r, n = raw.shape
    w = n // bpp
    pitch = w + 1
    grid = np.zeros(((r + 1) * pitch, bpp), np.int16)
    grid.reshape(r + 1, pitch, bpp)[0, 1:] = prior.reshape(w, bpp)
    src = np.zeros((r * pitch, bpp), np.int16)
    src.reshape(r, pitch, bpp)[:, 1:] = raw.reshape(r, w, bpp)

    kinds = [int(t) for t in np.unique(types)]
    single = kinds[0] if len(kinds) == 1 else None      # one filter for the whole band: no selects
    t_col = types.astype(np.int16)[:, None]

    for s in range(r + w - 1):
        ylo, yhi = max(0, s - w + 1), min(r - 1, s)
        k = yhi - ylo + 1
        cur = ylo * w + w + s + 2                  # flat index of pixel (ylo, s - ylo)
        stop = cur + (k - 1) * w + 1
        a = grid[cur - 1:stop - 1:w]
        b = grid[cur - pitch:stop - pitch:w]
        c = grid[cur - pitch - 1:stop - pitch - 1:w]
        if single is not None:
            pred = _predict(single, a, b, c)
        else:
            t = t_col[ylo:yhi + 1]
            pred = np.zeros_like(a)
            for kind in kinds:
                if kind:
                    pred = np.where(t == kind, _predict(kind, a, b, c), pred)
        first = ylo * w + s + 1                    # flat index of filtered byte (ylo, s - ylo)
        np.bitwise_and(src[first:first + (k - 1) * w + 1:w] + pred, 0xFF, out=grid[cur:stop:w])

    out[:] = grid.reshape(r + 1, pitch, bpp)[1:, 1:].reshape(r, n)


def _predict(kind: int, a, b, c):
    """The prediction of filter ``kind`` from the int16 neighbours a (left), b (up), c (up-left)."""
    if kind == 0:
        return np.zeros_like(a)
    if kind == 1:
        return a
    if kind == 2:
        return b
    if kind == 3:
        return (a + b) >> 1
    return _paeth(a, b, c)


def _paeth(a, b, c):
    """Paeth's predictor: whichever of a, b, c is closest to a + b - c (ties: a, then b)."""
    pa = np.abs(b - c)              # |p - a| with p = a + b - c
    pb = np.abs(a - c)              # |p - b|
    pc = np.abs(a + b - c - c)      # |p - c|
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------

def filter_rows(rows: np.ndarray, bpp: int, filter_type=None) -> np.ndarray:
    """Filter (h, n) uint8 row bytes -> (h, 1 + n) uint8 rows, each with its filter-type byte.

    ``filter_type``: 0 to 4 to use one filter for every row, a sequence of h types, or None
    to choose per row the filter whose output has the smallest sum of absolute values (as
    signed bytes) -- libpng's heuristic.
    """
    h, n = rows.shape
    out = np.empty((h, n + 1), np.uint8)
    if filter_type is not None:
        forced = np.broadcast_to(np.asarray(filter_type, dtype=np.int64), (h,))
        if forced.size and (forced.min() < 0 or forced.max() > 4):
            raise ValueError(f"filter_type: expected filter types 0 to 4, got {filter_type!r}")
    prior = np.zeros(n, np.uint8)
    for y0 in range(0, h, _ENCODE_BAND):
        y1 = min(h, y0 + _ENCODE_BAND)
        x = rows[y0:y1].astype(np.int16)
        a = np.zeros_like(x)
        a[:, bpp:] = x[:, :-bpp]
        b = np.empty_like(x)
        b[0] = prior
        b[1:] = x[:-1]
        c = np.zeros_like(x)
        c[:, bpp:] = b[:, :-bpp]
        cands = np.stack([(x - _predict(k, a, b, c)) & 0xFF for k in range(5)]).astype(np.uint8)
        if filter_type is None:
            cost = np.abs(cands.view(np.int8).astype(np.int32)).sum(axis=2)   # (5, rows)
            chosen = cost.argmin(axis=0)
        else:
            chosen = forced[y0:y1]
        out[y0:y1, 0] = chosen
        out[y0:y1, 1:] = cands[chosen, np.arange(y1 - y0)]
        prior = rows[y1 - 1]
    return out


def check_encodable(img) -> None:
    """Raise unless ``img`` is a non-empty (H, W, C) uint8 / uint16 array with C = 1, 2, 3 or 4
    (what the PNG and TIFF encoders take)."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        shape = list(img.shape) if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"img: expected an (H, W, C) array with C = 1, 2, 3 or 4, got {shape}")
    if img.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"img: expected uint8 or uint16 samples, got {img.dtype}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"img: expected a non-empty image, got {list(img.shape)}")


def encode(img: np.ndarray, *, level: int = 6, filter_type=None) -> bytes:
    """Encode an (H, W, C) uint8 or uint16 array (C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA) as
    a non-interlaced 8- or 16-bit PNG (IHDR, IDAT, IEND). ``level``: zlib level;
    ``filter_type``: see :func:`filter_rows` (None: adaptive)."""
    check_encodable(img)
    h, w, c = img.shape
    depth = 8 * img.dtype.itemsize
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    samples = img.astype(">u2") if depth == 16 else img
    rows = np.ascontiguousarray(samples).view(np.uint8).reshape(h, w * c * img.dtype.itemsize)
    stream = zlib.compress(filter_rows(rows, c * img.dtype.itemsize, filter_type).tobytes(), level)

    parts = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0))]
    for i in range(0, max(len(stream), 1), _IDAT_SIZE):
        parts.append(_chunk(b"IDAT", stream[i:i + _IDAT_SIZE]))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
