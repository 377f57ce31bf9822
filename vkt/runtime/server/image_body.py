"""Image request bodies: an allow-list of formats whose size is read from the header before decoding, and bounded decoding.

Accepted: PNG, JPEG, BMP, TIFF (integer samples), WebP and PPM/PGM/PBM. For each, the width,
height, channels and sample size come from the file header, so the pixel limit (413) and the
decode memory budget are applied before OpenCV allocates anything: a small file that claims a
huge canvas costs nothing. Every other format OpenCV could decode (JPEG 2000, AVIF, HDR, PFM,
OpenEXR, Sun Raster, GIF, PAM...) is refused with 415 by name, and a header that cannot be read
is a 400 — never "decode and see".
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from vkt.errors import InputError
from vkt.runtime.image import to_bgr_uint8
from vkt.runtime.server.admission import MemoryBudget
from vkt.runtime.server.errors import PayloadTooLargeError, RequestError, UnsupportedMediaError
from vkt.runtime.server.transport import Request

ACCEPTED = "PNG, JPEG, BMP, TIFF, WebP or PPM/PGM"
# Formats OpenCV decodes that are refused here, by their magic bytes (offset, bytes, name).
REFUSED = [(0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (0, b"\xffO\xffQ", "JPEG 2000"), (4, b"ftypavif", "AVIF"),
           (4, b"ftypheic", "HEIF"), (4, b"ftypmif1", "HEIF"), (0, b"#?RADIANCE", "Radiance HDR"), (0, b"#?RGBE", "Radiance HDR"),
           (0, b"PF", "PFM"), (0, b"Pf", "PFM"), (0, b"P7", "PAM"), (0, b"\x59\xa6\x6a\x95", "Sun Raster"),
           (0, b"\x76\x2f\x31\x01", "OpenEXR"), (0, b"GIF8", "GIF"), (0, b"II+\x00", "BigTIFF"), (0, b"MM\x00+", "BigTIFF")]
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageInfo:
    """What an image file's header says: format, size, channels and bytes per sample."""

    format: str
    height: int
    width: int
    channels: int
    sample_bytes: int = 1

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def decode_bytes(self) -> int:
        """Memory a decode holds: the decoded array plus its BGR uint8 copy (and a rotated one for JPEG)."""
        return self.pixels * (self.channels * self.sample_bytes + 6)


def image_info(data: bytes) -> ImageInfo:
    """The header of an accepted format; UnsupportedMediaError (415) for others, RequestError (400) for a bad header."""
    head = bytes(data[:16])
    for offset, magic, name in REFUSED:
        if head[offset:offset + len(magic)] == magic:
            raise UnsupportedMediaError(f"{name} images are not accepted; send {ACCEPTED}")
    reader = (_png if head[:8] == b"\x89PNG\r\n\x1a\n" else _jpeg if head[:2] == b"\xff\xd8" else _bmp if head[:2] == b"BM"
              else _tiff if head[:4] in (b"II*\x00", b"MM\x00*") else _webp if head[:4] == b"RIFF" and head[8:12] == b"WEBP"
              else _pnm if re.match(rb"P[1-6]\s", head) else None)
    if reader is None:
        raise UnsupportedMediaError(f"the body ({len(data)} bytes, starting with bytes {head[:8].hex(' ')}) is not an image in an accepted "
                                    f"format; send {ACCEPTED}")
    try:
        info = reader(data)
    except RequestError:
        raise
    except (struct.error, IndexError, KeyError, ValueError):
        info = None
    if info is None or info.height <= 0 or info.width <= 0:
        raise RequestError(f"cannot read the size from the {reader.__name__[1:].upper()} header ({len(data)} bytes): "
                           "corrupt or truncated file")
    return info


def _png(d: bytes) -> ImageInfo | None:
    if d[12:16] != b"IHDR":
        return None
    w, h, depth, color = struct.unpack(">IIBB", d[16:26])
    return ImageInfo("png", h, w, {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}[color], 2 if depth == 16 else 1)


def _jpeg(d: bytes) -> ImageInfo | None:
    """Walk the marker segments to the frame header, skipping stray bytes between them as libjpeg does."""
    i, n = 2, len(d)
    while i < n:
        if d[i] != 0xFF:
            i += 1  # extraneous data before a marker: libjpeg warns and skips it
            continue
        while i < n and d[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = d[i]
        i += 1
        if marker in JPEG_SOF:
            precision, h, w, comps = struct.unpack(">BHHB", d[i + 2:i + 8])
            return ImageInfo("jpeg", h, w, max(3, comps), 2 if precision > 8 else 1)
        if marker in (0xDA, 0xD9):  # scan data or end of image before any frame header
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            continue
        i += struct.unpack(">H", d[i:i + 2])[0]
    return None


def _bmp(d: bytes) -> ImageInfo:
    w, h = struct.unpack("<ii", d[18:26])
    bits = struct.unpack("<H", d[28:30])[0]
    return ImageInfo("bmp", abs(h), abs(w), 4 if bits == 32 else 3)


def _tiff(d: bytes) -> ImageInfo | None:
    """The first IFD (the page OpenCV decodes): size, samples, bits and sample format."""
    e = "<" if d[:2] == b"II" else ">"
    off = struct.unpack(e + "I", d[4:8])[0]
    count = struct.unpack(e + "H", d[off:off + 2])[0]
    tags: dict[int, int] = {}
    for k in range(count):
        tag, typ, cnt = struct.unpack(e + "HHI", d[off + 2 + 12 * k:off + 10 + 12 * k])
        raw = d[off + 10 + 12 * k:off + 14 + 12 * k]
        if typ == 3:  # SHORT; with several values (BitsPerSample per channel) stored elsewhere when they do not fit
            pos = struct.unpack(e + "I", raw)[0] if cnt > 2 else None
            tags[tag] = struct.unpack(e + "H", raw[:2] if pos is None else d[pos:pos + 2])[0]
        elif typ == 4:
            tags[tag] = struct.unpack(e + "I", raw)[0]
    if 256 not in tags or 257 not in tags:
        return None
    bits, fmt = tags.get(258, 1), tags.get(339, 1)
    if fmt != 1 or bits > 16:
        kind = {2: "signed-integer", 3: "floating-point"}.get(fmt, f"{bits}-bit")
        raise UnsupportedMediaError(f"{kind} TIFF images are not accepted; send 8- or 16-bit TIFF, or {ACCEPTED}")
    return ImageInfo("tiff", tags[257], tags[256], max(1, tags.get(277, 1)), 2 if bits > 8 else 1)


def _webp(d: bytes) -> ImageInfo | None:
    chunk = d[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(d[24:27], "little") + 1
        h = int.from_bytes(d[27:30], "little") + 1
        return ImageInfo("webp", h, w, 4)
    if chunk == b"VP8L" and d[20] == 0x2F:
        bits = int.from_bytes(d[21:25], "little")
        return ImageInfo("webp", ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1, 4)
    if chunk == b"VP8 " and d[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", d[26:30])
        return ImageInfo("webp", h & 0x3FFF, w & 0x3FFF, 3)
    return None


def _pnm(d: bytes) -> ImageInfo | None:
    kind = d[1] - ord("0")  # 1/4 bitmap, 2/5 greymap, 3/6 pixmap
    tokens = re.sub(rb"#[^\n]*", b" ", bytes(d[2:256])).split()
    want = 2 if kind in (1, 4) else 3
    if len(tokens) < want or not all(t.isdigit() and len(t) < 10 for t in tokens[:want]):
        return None
    w, h = int(tokens[0]), int(tokens[1])
    maxval = int(tokens[2]) if want == 3 else 1
    return ImageInfo("pnm", h, w, 3 if kind in (3, 6) else 1, 2 if maxval > 255 else 1)


def check_image(data: bytes, max_pixels: int) -> ImageInfo:
    """The header of an image body that may be decoded: 400 if empty, 415 off the allow-list, 413 over ``max_pixels``."""
    if not data:
        raise RequestError(f"the body is empty; send the image file's bytes ({ACCEPTED})")
    info = image_info(data)
    if info.pixels > max_pixels:
        raise PayloadTooLargeError(f"image is {info.width}x{info.height} = {info.pixels} pixels; this server accepts at "
                                   f"most {max_pixels} pixels")
    return info


def decode_image(data: bytes, max_pixels: int, budget: MemoryBudget | None = None) -> np.ndarray:
    """Image file bytes -> BGR uint8 ``[H, W, 3]`` (vkt.runtime.image's conversions); RequestError naming the problem."""
    info = check_image(data, max_pixels)
    budget = budget or MemoryBudget(info.decode_bytes)
    with budget.hold(info.decode_bytes):
        img = _decode(data, info)
        try:
            return to_bgr_uint8(img, where="the image")
        except InputError as e:
            raise RequestError(str(e)) from None


def _decode(data: bytes, info: ImageInfo) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    # As read_image: JPEG decodes as colour so that OpenCV applies its EXIF rotation; the rest keeps alpha/depth.
    flags = cv2.IMREAD_COLOR if info.format == "jpeg" else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as e:
        raise RequestError(f"cannot decode the image ({len(data)} bytes): {str(e).strip().splitlines()[-1][:200]}") from None
    if img is None:
        raise RequestError(f"cannot decode the body ({len(data)} bytes) as {info.format.upper()}: corrupt or truncated")
    if img.shape[0] * img.shape[1] > info.pixels:  # the decoder saw a bigger image than the header said
        raise RequestError(f"the {info.format.upper()} decodes to {img.shape[1]}x{img.shape[0]} pixels but its header "
                           f"says {info.width}x{info.height}")
    return img


def check_image_content_type(req: Request) -> None:
    """UnsupportedMediaError (415) for a body that is a form, JSON or text rather than an image file's bytes."""
    ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype.startswith("multipart/") or ctype in ("application/json", "application/x-www-form-urlencoded", "text/plain"):
        raise UnsupportedMediaError(f"Content-Type {ctype!r} is not accepted here; send the image file's bytes as the body "
                                    "with Content-Type image/png, image/jpeg (any image/*) or application/octet-stream")
