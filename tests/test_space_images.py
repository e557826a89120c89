"""What the Space says about images it can barely use or cannot read: 12-bit data in a 16-bit PNG, degenerate
sizes, damaged PNGs and files that are not images. Stand-in files are built here; no model is needed."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from tests.test_space import load_space_module


@pytest.fixture(scope="module")
def space_module() -> ModuleType:
    return load_space_module()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _break_crc(png: bytes, chunk: bytes) -> bytes:
    """The PNG with the CRC of its first ``chunk`` flipped (the data intact): a file damaged in transfer."""
    at = png.index(chunk)
    (length,) = struct.unpack(">I", png[at - 4:at])
    crc_at = at + 4 + length
    return png[:crc_at] + bytes([png[crc_at] ^ 0xFF]) + png[crc_at + 1:]


def test_12_bit_image_in_a_16_bit_png_is_stretched_by_its_range(space_module: ModuleType, tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (32, 1))  # 12-bit data: at most 4,095
    path = tmp_path / "twelve-bit.png"
    path.write_bytes(_png(Image.fromarray(ramp)))
    assert Image.open(path).mode == "I;16"
    rgb, notes = space_module.open_image(path, max_megapixels=24)
    pixels = np.asarray(rgb)
    assert pixels.max() == 255 and pixels.min() == 0  # the full 8-bit range, not 0-15 (almost black)
    assert int(pixels[0, 32, 0]) == round(int(ramp[0, 32]) * 255 / 4095)  # a straight stretch by 4,095
    assert any("only reach 4,095 (a 12-bit image)" in n and "stretched" in n for n in notes), notes
    assert not any("brightest value" in n for n in notes)


def test_full_range_16_bit_png_keeps_the_usual_scaling(space_module: ModuleType, tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    path = tmp_path / "sixteen-bit.png"
    path.write_bytes(_png(Image.fromarray(ramp)))
    rgb, notes = space_module.open_image(path, max_megapixels=24)
    assert np.asarray(rgb).max() == 255
    assert any("16-bit pixels; they were scaled to 8 bits" in n for n in notes), notes


def test_a_dark_image_is_said_to_be_dark(space_module: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "dark.png"
    Image.new("RGB", (64, 64), (9, 6, 3)).save(path)
    _, notes = space_module.open_image(path, max_megapixels=24)
    assert any("almost black (its brightest value is 9 of 255)" in n for n in notes), notes


@pytest.mark.parametrize(("size", "expected"), [
    ((1, 1), ["only 1×1 pixels: too small"]),
    ((20000, 2), ["only 20000×2 pixels: too small", "20000×2 pixels, 10,000 times longer than wide"]),
    ((900, 60), ["900×60 pixels, 15 times longer than wide"]),
    ((64, 64), []),
])
def test_degenerate_sizes_get_a_warning(space_module: ModuleType, tmp_path: Path, size: tuple[int, int],
                                        expected: list[str]) -> None:
    path = tmp_path / "odd.png"
    Image.new("RGB", size, (180, 120, 100)).save(path)
    rgb, notes = space_module.open_image(path, max_megapixels=24)
    warnings = [n for n in notes if "pixels" in n]
    assert len(warnings) == len(expected) and all(e in w for e, w in zip(expected, warnings, strict=True)), notes


def test_a_pdf_is_called_a_pdf(space_module: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "report.png"  # named like an image
    path.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n")
    with pytest.raises(space_module.InputError, match=r"not an image this app can read \(it is a PDF document\)"):
        space_module.open_image(path, max_megapixels=24)


def test_a_png_with_a_bad_header_checksum_is_called_damaged(space_module: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "lesion.png"
    path.write_bytes(_break_crc(_png(Image.new("RGB", (16, 16), (200, 30, 30))), b"IHDR"))
    with pytest.raises(space_module.InputError) as info:
        space_module.open_image(path, max_megapixels=24)
    message = str(info.value)
    assert "damaged PNG file (the checksum of its 'IHDR' chunk does not match)" in message
    assert "unknown file type" not in message and str(tmp_path) not in message  # no server path either


def test_a_png_with_a_bad_data_checksum_decodes_with_a_note(space_module: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "lesion.png"
    path.write_bytes(_break_crc(_png(Image.new("RGB", (48, 48), (200, 30, 30))), b"IDAT"))
    rgb, notes = space_module.open_image(path, max_megapixels=24)
    assert rgb.size == (48, 48)
    assert any("PNG file is damaged (the checksum of its 'IDAT' chunk does not match)" in n for n in notes), notes


@pytest.mark.parametrize(("content", "kind"), [
    (b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 40, "a ZIP archive or an Office document"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "a HEIC photo"),
    ("Überweisung: Läsion am Rücken, 5 mm.\n".encode() * 3, "plain text"),
    (b"<!DOCTYPE html><html><body>lesion</body></html>", "an HTML page"),
    (b"\x00\x01\x02\x03\xfe\xfd" * 12, "unknown file type"),
])
def test_other_files_are_described(space_module: ModuleType, tmp_path: Path, content: bytes, kind: str) -> None:
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(space_module.InputError, match=kind):
        space_module.open_image(path, max_megapixels=24)


def test_a_png_checksum_walk_stops_at_the_end(space_module: ModuleType, tmp_path: Path) -> None:
    """A clean PNG has no problem; trailing bytes after IEND are not read as chunks."""
    path = tmp_path / "clean.png"
    path.write_bytes(_png(Image.new("RGB", (8, 8))) + b"trailing junk")
    assert space_module._png_checksum_problem(path) is None
    crc = zlib.crc32(b"IEND")
    assert crc == struct.unpack(">I", _png(Image.new("RGB", (1, 1)))[-4:])[0]
