"""Robust image reading: every mode to 8-bit RGB, bad files refused by name, size checked before decoding."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermtrl.cases.images import ImageError, content_hash, load_image, read_image


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose (valid) header claims a size its data does not have."""
    data = bytearray(_encode(Image.new("L", (1, 1))))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def test_modes_become_8bit_rgb_with_notes() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white, not black
    loaded = read_image(_encode(rgba), "rgba.png")
    assert loaded.image.mode == "RGB" and loaded.image.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.image.getpixel((1, 1)) == (255, 0, 0) and "flattened onto white" in loaded.notes[0]

    palette = Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.ADAPTIVE)
    assert read_image(_encode(palette)).image.getpixel((2, 2)) == (10, 200, 30)

    gray = read_image(_encode(Image.new("L", (4, 4), 77)))
    assert gray.image.getpixel((0, 0)) == (77, 77, 77) and "grayscale" in gray.notes[0]

    cmyk = read_image(_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95), "cmyk.jpg")
    r, g, b = cmyk.image.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60 and "CMYK" in cmyk.notes[0]

    sixteen = Image.fromarray(np.array([[0, 32768], [65535, 256]], dtype=np.uint16))
    loaded = read_image(_encode(sixteen), "16bit.png")
    values = [loaded.image.getpixel((x, y))[0] for y in range(2) for x in range(2)]
    assert values == [0, 128, 255, 1]  # scaled by 1/256, not clipped at 255 as convert("L") would
    assert "scaled to 8 bits" in loaded.notes[0]

    floats = read_image(_encode(Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)), "TIFF"))
    assert floats.image.getpixel((0, 1))[0] == 255 and floats.image.getpixel((0, 0))[0] == 0

    bilevel = read_image(_encode(Image.new("1", (3, 3), 1)))
    assert bilevel.image.getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = read_image(_encode(img, "JPEG", exif=exif), "phone.jpg")
    assert loaded.image.size == (20, 40) and "EXIF orientation" in loaded.notes[0]


def test_unchanged_jpeg_keeps_its_bytes_and_png_is_lossless() -> None:
    data = _encode(Image.new("RGB", (16, 16), (1, 2, 3)), "JPEG", quality=90)
    stored, ext = read_image(data).encoded()
    assert (stored, ext) == (data, ".jpg")
    png, ext = read_image(_encode(Image.new("L", (5, 5), 9))).encoded()
    assert ext == ".png" and Image.open(io.BytesIO(png)).getpixel((0, 0)) == (9, 9, 9)


@pytest.mark.parametrize(
    ("data", "reason", "text"),
    [
        (b"", "zero-byte", "zero-byte"),
        (b"GIF89a but not really an image at all", "unreadable", "not a readable image"),
        (_encode(Image.new("RGB", (64, 64), (5, 6, 7)), "JPEG")[:300], "truncated", "truncated"),
        (_png_claiming(8000, 8000), "too-large", "PNG cannot be decoded at reduced size"),
        (_png_claiming(20000, 20000), "too-large", "decompression-bomb"),
    ],
)
def test_bad_files_are_refused_with_a_message_naming_them(data: bytes, reason: str, text: str) -> None:
    with pytest.raises(ImageError, match=text) as info:
        read_image(data, "cases/bad-file.img")
    assert info.value.reason == reason and "cases/bad-file.img" in str(info.value)


def test_missing_file_and_evaluator_loader(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such image file"):
        load_image(tmp_path / "nope.png")
    path = tmp_path / "x.png"
    path.write_bytes(_encode(Image.new("LA", (3, 3), (10, 255))))
    assert load_image(path).getpixel((0, 0)) == (10, 10, 10)
    assert load_image(Image.new("RGBA", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_over_50_megapixels_jpeg_is_downscaled_at_decode_time() -> None:
    data = _encode(Image.new("L", (7200, 7000), 128), "JPEG", quality=40)  # 50.4 MP
    loaded = read_image(data, "scan.jpg")
    assert loaded.image.size == (3600, 3500) and loaded.original_size == (7200, 7000)
    assert loaded.notes[0].startswith("downscaled from 7200x7000 to 3600x3500")
    with pytest.raises(ImageError, match="refused"):
        read_image(data, "scan.jpg", oversize="refuse")


def test_content_hash_ignores_name_and_format() -> None:
    img = Image.new("RGB", (6, 6), (9, 99, 199))
    a = read_image(_encode(img), "a.png").content_hash
    b = read_image(_encode(img, "BMP"), "b.bmp").content_hash
    c = read_image(_encode(Image.new("RGB", (6, 6), (9, 99, 198))), "c.png").content_hash
    assert a == b == content_hash(img) and a != c
