"""Baseline TIFF decoding and encoding with numpy, for 8- and 16-bit grey and RGB(A) images.

Pillow opens a 16-bit RGB TIFF as an 8-bit image (it keeps the high byte of every sample), so
:mod:`fastdenoise.io` reads and writes every 16-bit TIFF through this module. Pillow keeps the
8-bit ones.

The format (TIFF 6.0): an 8-byte header (``II`` little-endian or ``MM`` big-endian, the number
42, the offset of the first IFD), then image file directories: a count, 12-byte entries
``tag, type, count, value or offset`` and the offset of the next IFD. The image data is cut
into strips (rows) or tiles, each compressed on its own; ``PlanarConfiguration`` 1 interleaves
the samples of a pixel, 2 stores each sample plane apart.

Read: the first image of the file (classic TIFF or BigTIFF); unsigned 8- or 16-bit samples;
grey (``WhiteIsZero`` is inverted, ``BlackIsZero``) or RGB with any extra samples (alpha); strips or tiles; chunky or
planar; no compression, LZW, Deflate (Adobe and old-style) or PackBits; horizontal
differencing (``Predictor`` 2). LZW and PackBits are decoded in pure Python: a large LZW
image takes seconds. Anything else (JPEG or CCITT compression, palette, CMYK,
YCbCr, float or signed samples) raises ImageFormatError saying what it met.

Written: uncompressed little-endian strips of about 64 KiB, chunky, with the baseline tags.
"""

from __future__ import annotations

import struct
import zlib
from typing import Dict

import numpy as np

from ._png import check_encodable
from .errors import ImageFormatError

__all__ = ["is_tiff", "read_tags", "decode", "encode"]

# Tags used here.
WIDTH, LENGTH, BITS, COMPRESSION, PHOTOMETRIC, FILL_ORDER = 256, 257, 258, 259, 262, 266
STRIP_OFFSETS, SAMPLES, ROWS_PER_STRIP, STRIP_BYTES = 273, 277, 278, 279
X_RES, Y_RES, PLANAR, RES_UNIT, PREDICTOR = 282, 283, 284, 296, 317
TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTES = 322, 323, 324, 325
EXTRA_SAMPLES, SAMPLE_FORMAT = 338, 339

#: field type -> numpy dtype code (without the byte order) for the integer types read here
_TYPES = {1: "u1", 3: "u2", 4: "u4", 6: "i1", 8: "i2", 9: "i4", 13: "u4", 16: "u8", 17: "i8", 18: "u8"}
#: field type -> bytes per value, every type (for skipping what is not read)
_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}

_COMPRESSIONS = {1: "none", 2: "CCITT RLE", 3: "CCITT G3", 4: "CCITT G4", 5: "LZW", 6: "old JPEG",
                 7: "JPEG", 8: "Deflate", 32773: "PackBits", 32946: "Deflate", 34712: "JPEG 2000",
                 34887: "LERC", 50000: "Zstd", 50001: "WebP"}
_PHOTOMETRICS = {0: "WhiteIsZero", 1: "BlackIsZero", 2: "RGB", 3: "palette", 4: "transparency mask",
                 5: "CMYK", 6: "YCbCr", 8: "CIELab"}

#: Strips written hold about this many bytes.
_STRIP_BYTES = 1 << 16


def is_tiff(data: bytes) -> bool:
    """Classic TIFF or BigTIFF, either byte order."""
    return data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _layout(data: bytes):
    """(byte order, BigTIFF?, offset of the first IFD) from the header."""
    if data[:2] == b"II":
        order = "<"
    elif data[:2] == b"MM":
        order = ">"
    else:
        raise ImageFormatError("expected a TIFF file (II or MM first), got other bytes")
    if len(data) < 8:
        raise ImageFormatError(f"TIFF is truncated: expected an 8-byte header, got {len(data)} bytes")
    (version,) = struct.unpack(order + "H", data[2:4])
    if version == 42:
        return order, False, struct.unpack(order + "I", data[4:8])[0]
    if version == 43:               # BigTIFF: 8-byte offsets and counts, 20-byte IFD entries
        if len(data) < 16:
            raise ImageFormatError(f"TIFF is truncated: expected a 16-byte BigTIFF header, got {len(data)} bytes")
        offset_size, _, first = struct.unpack(order + "HHQ", data[4:16])
        if offset_size != 8:
            raise ImageFormatError(f"TIFF is corrupt: expected BigTIFF offsets of 8 bytes, got {offset_size}")
        return order, True, first
    raise ImageFormatError(f"TIFF is corrupt: expected the version number 42 (or 43, BigTIFF), got {version}")


def read_tags(data: bytes) -> Dict[int, np.ndarray]:
    """The integer-valued fields of the first IFD: {tag: 1-D int64 array}. Rational, float and
    ASCII fields are skipped (none of those matters for the pixels)."""
    order, big, ifd = _layout(data)
    count_fmt, entry_size, inline, offset_fmt = ("Q", 20, 8, "Q") if big else ("H", 12, 4, "I")
    head = struct.calcsize(count_fmt)
    if ifd < 8 or ifd + head > len(data):
        raise ImageFormatError(f"TIFF is corrupt or truncated: its first IFD offset {ifd} is outside the "
                               f"{len(data)}-byte file")
    (count,) = struct.unpack(order + count_fmt, data[ifd:ifd + head])
    if ifd + head + entry_size * count > len(data):
        raise ImageFormatError(f"TIFF is truncated: its first IFD ({count} entries) runs past the end of the file")
    tags: Dict[int, np.ndarray] = {}
    for i in range(count):
        entry = data[ifd + head + entry_size * i:ifd + head + entry_size * (i + 1)]
        tag, ftype = struct.unpack(order + "HH", entry[:4])
        (n,) = struct.unpack(order + offset_fmt, entry[4:4 + inline])
        if ftype not in _TYPES:
            continue
        size = n * _SIZES[ftype]
        value = entry[4 + inline:]
        if size <= inline:
            raw = value[:size]
        else:
            (off,) = struct.unpack(order + offset_fmt, value)
            raw = data[off:off + size]
            if len(raw) < size:
                raise ImageFormatError(f"TIFF is truncated: the values of tag {tag} run past the end of the file")
        tags[tag] = np.frombuffer(raw, np.dtype(order + _TYPES[ftype])).astype(np.int64)
    return tags


def _one(tags, tag: int, name: str, default=None) -> int:
    v = tags.get(tag)
    if v is None or len(v) == 0:
        if default is None:
            raise ImageFormatError(f"TIFF is corrupt: the required tag {name} ({tag}) is missing")
        return default
    return int(v[0])


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

def decode(data: bytes) -> np.ndarray:
    """Decode the first image of a TIFF file's bytes: (H, W, S) uint8 or uint16, S the samples
    per pixel (1 grey, 3 RGB, plus any extra samples such as alpha), as stored except that
    ``WhiteIsZero`` grey is inverted to black-is-zero."""
    order = _layout(data)[0]
    tags = read_tags(data)
    w = _one(tags, WIDTH, "ImageWidth")
    h = _one(tags, LENGTH, "ImageLength")
    spp = _one(tags, SAMPLES, "SamplesPerPixel", 1)
    bits = tags.get(BITS, np.array([1]))
    compression = _one(tags, COMPRESSION, "Compression", 1)
    photometric = _one(tags, PHOTOMETRIC, "PhotometricInterpretation")
    planar = _one(tags, PLANAR, "PlanarConfiguration", 1)
    predictor = _one(tags, PREDICTOR, "Predictor", 1)
    sample_format = tags.get(SAMPLE_FORMAT, np.array([1]))

    if w <= 0 or h <= 0 or spp <= 0:
        raise ImageFormatError(f"TIFF is corrupt: expected a positive size and sample count, got {w} x {h} "
                               f"with {spp} samples per pixel")
    if len(set(bits.tolist())) != 1 or int(bits[0]) not in (8, 16):
        raise ImageFormatError(f"expected 8 or 16 bits per sample, got BitsPerSample {bits.tolist()}")
    if (sample_format != 1).any():
        kinds = {1: "unsigned", 2: "signed", 3: "floating-point"}
        raise ImageFormatError(f"expected unsigned integer samples, got "
                               f"{kinds.get(int(sample_format.max()), 'SampleFormat ' + str(sample_format.tolist()))}"
                               " samples")
    if photometric not in (0, 1, 2):
        name = _PHOTOMETRICS.get(photometric, str(photometric))
        raise ImageFormatError(f"expected a grey or RGB TIFF, got photometric interpretation {name}")
    colours = 3 if photometric == 2 else 1
    if spp < colours:
        raise ImageFormatError(f"TIFF is corrupt: RGB with {spp} samples per pixel")
    if compression not in (1, 5, 8, 32773, 32946):
        raise ImageFormatError(f"TIFF compression {_COMPRESSIONS.get(compression, compression)} is not "
                               "supported (expected none, LZW, Deflate or PackBits)")
    if predictor not in (1, 2):
        raise ImageFormatError(f"TIFF predictor {predictor} is not supported (expected 1 or 2)")
    if planar not in (1, 2):
        raise ImageFormatError(f"TIFF is corrupt: expected PlanarConfiguration 1 or 2, got {planar}")
    if _one(tags, FILL_ORDER, "FillOrder", 1) != 1:
        raise ImageFormatError("TIFF FillOrder 2 (bits reversed in each byte) is not supported")

    nbytes = int(bits[0]) // 8
    sample = np.dtype(order + ("u2" if nbytes == 2 else "u1"))
    planes = spp if planar == 2 else 1
    seg_spp = 1 if planar == 2 else spp

    if TILE_WIDTH in tags:
        tw = _one(tags, TILE_WIDTH, "TileWidth")
        th = _one(tags, TILE_LENGTH, "TileLength")
        offsets, counts = tags.get(TILE_OFFSETS), tags.get(TILE_BYTES)
        across, down = -(-w // max(tw, 1)), -(-h // max(th, 1))
        # (y0, x0, rows stored, columns stored) of each segment of one plane
        grid = [(ty * th, tx * tw, th, tw) for ty in range(down) for tx in range(across)]
        kind = "tile"
    else:
        rps = min(_one(tags, ROWS_PER_STRIP, "RowsPerStrip", h), h)
        offsets, counts = tags.get(STRIP_OFFSETS), tags.get(STRIP_BYTES)
        grid = [(y0, 0, min(rps, h - y0), w) for y0 in range(0, h, max(rps, 1))]
        kind = "strip"
    if offsets is None or counts is None:
        raise ImageFormatError(f"TIFF is corrupt: its {kind} offsets or byte counts are missing")
    if min(len(offsets), len(counts)) < len(grid) * planes:
        raise ImageFormatError(f"TIFF is corrupt: expected {len(grid) * planes} {kind}s, its tags list "
                               f"{min(len(offsets), len(counts))}")

    out = np.empty((h, w, spp), np.uint16 if nbytes == 2 else np.uint8)
    for p in range(planes):
        for i, (y0, x0, rows, cols) in enumerate(grid):
            idx = p * len(grid) + i
            off, cnt = int(offsets[idx]), int(counts[idx])
            if off < 0 or cnt < 0 or off + cnt > len(data):
                raise ImageFormatError(f"TIFF is truncated: {kind} {idx} (bytes {off} to {off + cnt}) runs past "
                                       f"the end of the {len(data)}-byte file")
            need = rows * cols * seg_spp * nbytes
            buf = _decompress(compression, data[off:off + cnt], need, f"{kind} {idx}")
            seg = np.frombuffer(buf, sample, count=rows * cols * seg_spp).reshape(rows, cols, seg_spp)
            seg = seg.astype(out.dtype)              # native byte order (a copy: writable)
            if predictor == 2:                       # horizontal differencing, mod 2^bits
                seg = np.cumsum(seg, axis=1, dtype=out.dtype)
            r, c = min(rows, h - y0), min(cols, w - x0)   # tiles overhang the image's edges
            if planar == 2:
                out[y0:y0 + r, x0:x0 + c, p] = seg[:r, :c, 0]
            else:
                out[y0:y0 + r, x0:x0 + c] = seg[:r, :c]
    if photometric == 0:
        out[..., 0] = np.iinfo(out.dtype).max - out[..., 0]
    return out


def _decompress(compression: int, src: bytes, need: int, what: str) -> bytes:
    """The first ``need`` bytes of a segment, decompressed."""
    if compression == 1:
        buf = src
    elif compression in (8, 32946):
        d = zlib.decompressobj()
        try:
            buf = d.decompress(src, need)
        except zlib.error as exc:
            raise ImageFormatError(f"TIFF is corrupt: {what} does not decompress ({exc})") from None
    elif compression == 5:
        buf = _lzw_decode(src, need, what)
    else:
        buf = _packbits_decode(src, need)
    if len(buf) < need:
        raise ImageFormatError(f"TIFF is truncated or corrupt: {what} holds {len(buf)} bytes of image data, "
                               f"expected {need}")
    return buf


def _packbits_decode(src: bytes, need: int) -> bytes:
    """PackBits: a header byte n; 0..127: copy the next n + 1 bytes; 129..255: repeat the next
    byte 257 - n times; 128: nothing."""
    out = bytearray()
    i, n = 0, len(src)
    while i < n and len(out) < need:
        head = src[i]
        i += 1
        if head < 128:
            out += src[i:i + head + 1]
            i += head + 1
        elif head > 128:
            out += src[i:i + 1] * (257 - head)
            i += 1
    return bytes(out)


def _lzw_decode(src: bytes, need: int, what: str) -> bytes:
    """TIFF's LZW: codes of 9 to 12 bits, most significant bit first; 256 clears the table,
    257 ends the data; the code width grows one code early (when the next free code is
    2^width - 1), unlike GIF's."""
    if src[:2] == b"\x00\x01":
        raise ImageFormatError(f"TIFF {what} uses the old-style (pre-6.0, bit-reversed) LZW, which is not supported")
    data = src + b"\x00\x00\x00"                 # so every code can read three bytes
    nbits = 8 * len(src)
    base = [bytes((i,)) for i in range(256)] + [b"", b""]
    table = list(base)
    out = bytearray()
    width, pos, prev = 9, 0, None
    while pos + width <= nbits and len(out) < need:
        p = pos >> 3
        code = (((data[p] << 16) | (data[p + 1] << 8) | data[p + 2]) >> (24 - (pos & 7) - width)) & ((1 << width) - 1)
        pos += width
        if code == 256:
            table = list(base)
            width, prev = 9, None
            continue
        if code == 257:
            break
        if code < len(table):
            entry = table[code]
            if prev is not None:
                table.append(prev + entry[:1])
        elif code == len(table) and prev is not None:
            entry = prev + prev[:1]
            table.append(entry)
        else:
            raise ImageFormatError(f"TIFF is corrupt: invalid LZW code {code} in {what}")
        out += entry
        prev = entry
        if len(table) >= (1 << width) - 1 and width < 12:
            width += 1
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------

def encode(img: np.ndarray) -> bytes:
    """An (H, W, C) uint8 or uint16 array (C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA) as an
    uncompressed little-endian baseline TIFF."""
    check_encodable(img)
    h, w, c = img.shape
    pixels = np.ascontiguousarray(img.astype(img.dtype.newbyteorder("<"))).tobytes()
    if len(pixels) > 0xFFFF0000:
        raise ValueError(f"img: {len(pixels)} bytes do not fit a classic TIFF (at most 4 GiB)")
    row = w * c * img.dtype.itemsize
    rps = max(1, _STRIP_BYTES // row)
    starts = list(range(0, h, rps))
    counts = [min(rps, h - y) * row for y in starts]
    offsets = [8 + y * row for y in starts]

    # Field values: (type, values). 3 = SHORT, 4 = LONG, 5 = RATIONAL.
    bits = 8 * img.dtype.itemsize
    fields = {
        WIDTH: (4, [w]), LENGTH: (4, [h]), BITS: (3, [bits] * c), COMPRESSION: (3, [1]),
        PHOTOMETRIC: (3, [2 if c >= 3 else 1]), STRIP_OFFSETS: (4, offsets), SAMPLES: (3, [c]),
        ROWS_PER_STRIP: (4, [rps]), STRIP_BYTES: (4, counts), X_RES: (5, [72, 1]), Y_RES: (5, [72, 1]),
        PLANAR: (3, [1]), RES_UNIT: (3, [2]),
    }
    if c in (2, 4):
        fields[EXTRA_SAMPLES] = (3, [2])             # unassociated alpha
    ifd = 8 + len(pixels)
    ifd += ifd & 1                                   # IFDs start on a word boundary
    extra_at = ifd + 2 + 12 * len(fields) + 4        # values longer than 4 bytes follow the IFD
    entries, extra = [], bytearray()
    for tag in sorted(fields):
        ftype, values = fields[tag]
        fmt = {3: "H", 4: "I", 5: "I"}[ftype]
        raw = struct.pack("<" + fmt * len(values), *values)
        count = len(values) // 2 if ftype == 5 else len(values)
        if len(raw) <= 4:
            entries.append(struct.pack("<HHI", tag, ftype, count) + raw.ljust(4, b"\x00"))
        else:
            entries.append(struct.pack("<HHII", tag, ftype, count, extra_at + len(extra)))
            extra += raw
            extra += b"\x00" * (len(extra) & 1)
    head = b"II*\x00" + struct.pack("<I", ifd)
    body = pixels + b"\x00" * (ifd - 8 - len(pixels))
    directory = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return head + body + directory + bytes(extra)
