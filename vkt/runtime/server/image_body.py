"""Image request bodies: the size from the file header without decoding, decoding under a pixel limit, and the
Content-Types accepted (the /detect routes and Triton's pipeline model take them)."""

from __future__ import annotations

import struct

import cv2
import numpy as np

from vkt.errors import InputError
from vkt.runtime.image import to_bgr_uint8
from vkt.runtime.server.errors import PayloadTooLargeError, RequestError, UnsupportedMediaError
from vkt.runtime.server.transport import Request


def image_header_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from a PNG, GIF, BMP or JPEG header without decoding; None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return h, w
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return h, w
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(h), abs(w)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):  # walk the marker segments to the first start-of-frame
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            seg = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return h, w
            i += 2 + seg
    return None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Image file bytes -> BGR uint8 ``[H, W, 3]`` (vkt.runtime.image's conversions); RequestError naming the problem."""
    if not data:
        raise RequestError("the body is empty; send the image file's bytes (PNG, JPEG, BMP, TIFF, WebP, PPM)")
    size = image_header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise PayloadTooLargeError(f"image is {size[1]}x{size[0]} = {size[0] * size[1]} pixels; this server accepts at "
                                   f"most {max_pixels} pixels")
    buf = np.frombuffer(data, dtype=np.uint8)
    # As read_image: JPEG decodes as colour so that OpenCV applies its EXIF rotation; the rest keeps alpha/depth.
    flags = cv2.IMREAD_COLOR if data[:2] == b"\xff\xd8" else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as e:
        raise RequestError(f"cannot decode the image ({len(data)} bytes): {str(e).strip().splitlines()[-1][:200]}") from None
    if img is None:
        raise RequestError(f"cannot decode the body ({len(data)} bytes, starting {data[:8]!r}) as an image: corrupt, "
                           "truncated or not an image file; expected PNG, JPEG, BMP, TIFF, WebP or PPM/PGM bytes")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise PayloadTooLargeError(f"image is {img.shape[1]}x{img.shape[0]} = {img.shape[0] * img.shape[1]} pixels; "
                                   f"this server accepts at most {max_pixels} pixels")
    try:
        return to_bgr_uint8(img, where="the image")
    except InputError as e:
        raise RequestError(str(e)) from None


def check_image_content_type(req: Request) -> None:
    """UnsupportedMediaError (415) for a body that is a form, JSON or text rather than an image file's bytes."""
    ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype.startswith("multipart/") or ctype in ("application/json", "application/x-www-form-urlencoded", "text/plain"):
        raise UnsupportedMediaError(f"Content-Type {ctype!r} is not accepted here; send the image file's bytes as the body "
                                    "with Content-Type image/png, image/jpeg (any image/*) or application/octet-stream")
