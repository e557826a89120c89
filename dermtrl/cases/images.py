"""Reading images from users' folders robustly: one bad file costs one item, never the run or the machine.

Every image that enters the dataset pipeline (and, through :func:`load_image`, the evaluator) goes through
:func:`read_image`, which

* refuses zero-byte, corrupt and truncated files with a message naming the file (truncated data is never
  padded: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` stays off);
* reads the size from the header *before* decoding: an image over ``max_pixels`` (50 megapixels by default)
  is decoded at a reduced scale when the format allows it (JPEG's DCT scaling, so memory stays bounded) and
  noted as downscaled, or refused with a message otherwise; PIL's decompression-bomb limit refuses the rest;
* converts every mode to 8-bit RGB: CMYK, palette, grayscale, alpha (flattened onto white, not black) and
  16-bit or float images (scaled, not clipped: PIL's own ``convert("L")`` saturates 16-bit values at 255),
  and applies the EXIF orientation;
* hashes the decoded pixels, so a duplicate is found whatever its file name, format or metadata.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from dermtrl.errors import DermtrlError

__all__ = ["MAX_PIXELS", "ImageError", "LoadedImage", "content_hash", "image_value", "load_image", "read_cell",
           "image_to_data_url", "read_image", "to_rgb"]

#: Images with more pixels than this are downscaled (JPEG) or refused (other formats).
MAX_PIXELS = 50_000_000
Oversize = Literal["downscale", "refuse"]
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
_DRAFT_SCALES = (2, 4, 8)  # what libjpeg can decode at reduced size


class ImageError(DermtrlError, ValueError):
    """An image that cannot be used; ``reason`` is a short code (missing, zero-byte, unreadable, truncated,
    too-large); ``size`` is the size its header claims, when known."""

    def __init__(self, message: str, reason: str, size: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.size = size


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _exc_text(exc: BaseException) -> str:
    """``Type: message`` of a library exception, without object reprs (``<_io.BytesIO object at 0x…>``)."""
    text = _OBJECT_REPR.sub("the data", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class LoadedImage:
    """A decoded 8-bit RGB image, what was done to it, and the bytes to store for it."""

    image: Image.Image
    content_hash: str
    source_format: str | None
    original_size: tuple[int, int]
    original_mode: str
    notes: list[str] = field(default_factory=list)
    _original_bytes: bytes | None = None

    @property
    def unchanged_jpeg(self) -> bytes | None:
        """The file's own bytes when it is an RGB JPEG that nothing was done to, else ``None``."""
        return self._original_bytes

    def encoded(self) -> tuple[bytes, str]:
        """Bytes to store and their extension: an unchanged RGB JPEG keeps its own bytes, the rest is PNG."""
        if self._original_bytes is not None:
            return self._original_bytes, ".jpg"
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue(), ".png"


def content_hash(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and the size: equal for the same picture under any name or format."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    import numpy as np

    arr = np.asarray(img)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.nan_to_num(scaled).clip(0, 255).astype(np.uint8), "L")
    arr = arr.astype(np.int64)
    top = int(arr.max()) if arr.size else 0
    if top <= 255 and int(arr.min() if arr.size else 0) >= 0:
        out = arr
    elif top <= 65535 and int(arr.min()) >= 0:
        out = arr >> 8  # 16-bit data: keep the top byte
    else:
        lo = int(arr.min())
        out = (arr - lo) * 255 // max(1, top - lo)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """8-bit RGB from any PIL mode; ``notes`` (if given) records each conversion that changed the data."""
    notes = notes if notes is not None else []
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "F") or mode.startswith("I;16"):
        notes.append(f"{'floating-point' if mode == 'F' else '16/32-bit'} {mode} image scaled to 8 bits")
        return _scale_to_8bit(img).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append(f"{mode} transparency flattened onto white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode == "P":
        notes.append("palette image converted to RGB")
    elif mode in ("L", "1"):
        notes.append("grayscale image converted to RGB")
    else:
        notes.append(f"{mode} image converted to RGB")
    return img.convert("RGB")


def _describe(source: object, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "image bytes"


def read_image(
    source: str | os.PathLike[str] | bytes,
    name: str | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    oversize: Oversize = "downscale",
) -> LoadedImage:
    """Decode ``source`` (a path or encoded bytes) safely into a :class:`LoadedImage`.

    Raises :class:`ImageError` (a ``ValueError``) naming the file for zero-byte, missing, unreadable,
    truncated and too-large images.
    """
    if oversize not in ("downscale", "refuse"):
        raise ValueError(f"oversize must be 'downscale' or 'refuse', got {oversize!r}")
    label = _describe(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{label}: no such image file", "missing")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{label}: cannot read the file ({exc.strerror or exc})", "unreadable") from None
    if not data:
        what = "empty image bytes (zero-byte data)" if isinstance(source, (bytes, bytearray, memoryview)) else (
            "zero-byte file")
        raise ImageError(f"{label}: {what}, not an image", "zero-byte")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label}: refused by PIL's decompression-bomb limit ({_OBJECT_REPR.sub('it', str(exc))})",
                         "too-large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        if "truncated" in str(exc).lower():
            raise ImageError(f"{label}: truncated image file ({_exc_text(exc)})", "truncated") from None
        if isinstance(exc, UnidentifiedImageError):  # PIL's text only names the stream object
            raise ImageError(f"{label}: not a readable image (no image format recognised)", "unreadable") from None
        raise ImageError(f"{label}: not a readable image ({_exc_text(exc)})", "unreadable") from None
    width, height = img.size
    fmt, mode = img.format, img.mode
    notes: list[str] = []
    pixels = width * height
    if width < 1 or height < 1:
        raise ImageError(f"{label}: empty image ({width}x{height})", "unreadable")
    if pixels > max_pixels:
        size_text = f"{width}x{height} ({pixels / 1e6:.1f} MP, over the {max_pixels / 1e6:g} MP limit)"
        if oversize == "refuse":
            raise ImageError(f"{label}: {size_text}; refused (downscale it, or allow downscaling)", "too-large",
                             (width, height))
        scale = next((s for s in _DRAFT_SCALES if pixels / (s * s) <= max_pixels), None)
        if fmt not in _DRAFT_FORMATS or scale is None:
            why = f"{fmt} cannot be decoded at reduced size" if scale is not None else "too large even at 1/8 scale"
            raise ImageError(
                f"{label}: {size_text}; refused: {why} without exceeding the memory budget; downscale it first",
                "too-large",
                (width, height),
            )
        img.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))
        notes.append(f"downscaled from {width}x{height} to {img.size[0]}x{img.size[1]} ({size_text.split(' (')[1]}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() or isinstance(exc, EOFError) else "unreadable"
        raise ImageError(f"{label}: {reason} image data ({_exc_text(exc)})", reason) from None
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not cost the image
        orientation = 1
        notes.append("EXIF block unreadable; orientation kept as stored")
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        img = ImageOps.exif_transpose(img)
        notes.append(f"rotated by its EXIF orientation ({orientation})")
    rgb = to_rgb(img, notes)
    keep_original = fmt == "JPEG" and mode == "RGB" and not notes
    return LoadedImage(
        image=rgb,
        content_hash=content_hash(rgb),
        source_format=fmt,
        original_size=(width, height),
        original_mode=mode,
        notes=notes,
        _original_bytes=data if keep_original else None,
    )


def load_image(image: Image.Image | str | os.PathLike[str] | bytes, name: str | None = None) -> Image.Image:
    """An 8-bit RGB image from a PIL image, a path or encoded bytes; ``ValueError`` naming what is unusable.

    The drop-in loader for the evaluator: the same checks and conversions as :func:`read_image`.
    """
    if isinstance(image, Image.Image):
        return to_rgb(image)
    return read_image(image, name).image


def image_value(
    value: object, *, base_dir: str | os.PathLike[str] | None = None, where: str | None = None
) -> bytes | str | Image.Image:
    """What an image *value* of a dataset holds, checked: non-empty encoded bytes, an absolute path, or a PIL image.

    ``value`` is a ``datasets`` ``Image`` cell (``{"bytes", "path"}``), encoded bytes, a path or a PIL image. A
    cell's bytes, when present, are the image: empty bytes are an error (``"empty image bytes"``), never a reason
    to open a file of the same name. A relative path resolves against ``base_dir`` (the dataset's folder), never
    the working directory; without one it is refused. ``where`` (e.g. ``"case 'c3'"``) starts every message.
    Raises :class:`ImageError`.
    """
    label = where or "image"
    path: object = value
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ImageError(f"{label}: the image cell's bytes are a {type(data).__name__}, not bytes",
                                 "unreadable")
            if len(data) == 0:
                stored = f" (stored under the name {str(path)!r})" if path else ""
                raise ImageError(f"{label}: empty image bytes{stored}", "zero-byte")
            return bytes(data)
        if not path:
            raise ImageError(f"{label}: the image cell holds neither bytes nor a path", "missing")
    if isinstance(path, (bytes, bytearray, memoryview)):
        if len(path) == 0:
            raise ImageError(f"{label}: empty image bytes", "zero-byte")
        return bytes(path)
    if path is None or path == "":
        raise ImageError(f"{label}: no image (the value is empty)", "missing")
    if not isinstance(path, (str, os.PathLike)):
        raise ImageError(f"{label}: an image value must be bytes, a path or an image cell, got {type(path).__name__}",
                         "unreadable")
    resolved = Path(path)
    if not resolved.is_absolute():
        if base_dir is None:
            raise ImageError(f"{label}: relative image path {str(path)!r} and no dataset folder to resolve it against "
                             "(images resolve against their dataset's folder, never the working directory; load the "
                             "cases from their file or folder, or give absolute paths)", "missing")
        resolved = Path(base_dir) / resolved
    return str(resolved)


def read_cell(
    value: object,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    where: str | None = None,
    max_pixels: int = MAX_PIXELS,
    oversize: Oversize = "downscale",
) -> LoadedImage:
    """Decode one image value of a dataset (see :func:`image_value`) with :func:`read_image`'s checks.

    The one way the Space, ``dermtrl eval``, DermBench and the data pipeline turn an image into 8-bit RGB.
    """
    source = image_value(value, base_dir=base_dir, where=where)
    if isinstance(source, Image.Image):
        notes: list[str] = []
        rgb = to_rgb(source, notes)
        return LoadedImage(rgb, content_hash(rgb), source.format, source.size, source.mode, notes)
    name = source if isinstance(source, str) else None
    if where and name:
        name = f"{where} ({name})"
    elif where:
        name = where
    elif isinstance(value, Mapping) and value.get("path"):
        name = str(value["path"])
    return read_image(source, name, max_pixels=max_pixels, oversize=oversize)


def image_to_data_url(
    image: Image.Image | str | os.PathLike[str] | bytes, *, max_side: int | None = 1024
) -> str:
    """A base64 ``data:`` URL for an image (a PIL image, a file path, or encoded bytes).

    The image is read by the project's one image reader (:func:`dermtrl.cases.images.read_image`: every mode to
    8-bit RGB, 16-bit and float scaled, alpha flattened onto white, EXIF orientation applied, size checked), so
    a model behind an endpoint sees what DermEval sees. The longer side is shrunk to ``max_side`` (``None``:
    never). An unchanged RGB JPEG keeps its own bytes, a resized JPEG stays JPEG (quality 95), everything else
    becomes PNG. A string that already is a ``data:image/`` URL is returned unchanged. Raises
    ``FileNotFoundError``/``ValueError`` naming the file when it is missing or not a readable image. The same
    input always gives the same URL (stable cache keys).
    """
    if max_side is not None and (not isinstance(max_side, int) or isinstance(max_side, bool) or max_side < 1):
        raise ValueError(f"max_side must be None or an integer >= 1, got {max_side!r}")
    if isinstance(image, str) and image.startswith("data:image/"):
        return image
    if isinstance(image, Image.Image):
        img, source_format, original = to_rgb(image), image.format, None
    else:
        if isinstance(image, (bytes, bytearray, memoryview)):
            loaded = read_image(bytes(image), f"the given image bytes ({len(image)} bytes)")
        elif isinstance(image, (str, os.PathLike)):
            path = Path(image).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"image file {str(path)!r} does not exist")
            loaded = read_image(path, f"image file {str(path)!r}")
        else:
            raise TypeError(f"image must be a PIL image, a path or bytes, got {type(image).__name__}")
        img, source_format = loaded.image, loaded.source_format
        original = loaded.unchanged_jpeg
    if max_side is not None and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        original = None
    if original is not None:
        data, mime = original, "image/jpeg"
    else:
        buffer = io.BytesIO()
        if source_format == "JPEG":
            img.save(buffer, format="JPEG", quality=95)
            mime = "image/jpeg"
        else:
            img.save(buffer, format="PNG")
            mime = "image/png"
        data = buffer.getvalue()
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
