"""Images for vision jobs: a URL passes through; a local file becomes a base64 data URL."""

from __future__ import annotations

import base64
from pathlib import Path

from worker.contract.models import DEFAULT_MAX_IMAGE_BYTES, check_image_url

# Magic numbers of the types the gateway takes.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class ImageError(ValueError):
    """The image cannot be sent; the message says why and what to do."""


def sniff_mime(data: bytes) -> str | None:
    for signature, mime in _SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def file_to_data_url(path: str | Path, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> str:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ImageError(f"image file {str(path)!r} is {len(data)} bytes, over the {max_bytes}-byte limit")
    mime = sniff_mime(data)
    if mime is None:
        raise ImageError(f"image file {str(path)!r} is not a PNG, JPEG, GIF or WebP image")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def resolve_image(ref: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> str:
    """An http(s) or data URL (checked), or a local path read into a data URL."""
    if ref.startswith(("http://", "https://", "data:")):
        try:
            return check_image_url(ref, max_bytes)
        except ValueError as exc:
            raise ImageError(f"image: {exc}") from None
    return file_to_data_url(ref, max_bytes)
