"""One image reader for every entry point (the Space, `dermtrl eval`, DermBench, the client, the data pipeline):
every mode Pillow produces comes out as the same 8-bit RGB pixels, asserted pixel by pixel."""

from __future__ import annotations

import base64
import importlib.util
import io
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from dermtrl.bench.cases import load_case_image
from dermtrl.bench.generate import OpenAIGenerator
from dermtrl.cases.images import load_image, read_cell, read_image
from dermtrl.dermeval.eval_job import _decode
from dermtrl.llm.client import ClientConfig, image_to_data_url

ROOT = Path(__file__).resolve().parents[1]

WHITE, BLACK = (255, 255, 255), (0, 0, 0)
SIXTEEN = [0, 60 * 256, 32768, 65535]  # 8-bit: 0, 60, 128, 255 (top byte), never clipped to white


def _image(mode: str) -> tuple[Image.Image, list[tuple[int, int, int]]]:
    """A 4x2 image of ``mode`` with known content, and the RGB each of its four columns must come out as."""
    if mode == "1":
        img = Image.new("1", (4, 2))
        for x in (1, 3):
            for y in (0, 1):
                img.putpixel((x, y), 1)
        return img, [BLACK, WHITE, BLACK, WHITE]
    if mode in ("L", "LA"):
        gray = Image.fromarray(np.array([[0, 60, 128, 255]] * 2, dtype=np.uint8), "L")
        if mode == "L":
            return gray, [BLACK, (60,) * 3, (128,) * 3, WHITE]
        alpha = Image.fromarray(np.array([[255, 255, 0, 128]] * 2, dtype=np.uint8), "L")
        img = gray.convert("LA")
        img.putalpha(alpha)  # transparent is white; half-transparent white on white is white
        return img, [BLACK, (60,) * 3, WHITE, WHITE]
    if mode in ("P", "PA"):
        img = Image.new("P", (4, 2))
        img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
        img.putdata([0, 1, 2, 3] * 2)
        if mode == "P":
            return img, [(255, 0, 0), (0, 255, 0), (0, 0, 255), WHITE]
        img = img.convert("PA")
        img.putalpha(Image.fromarray(np.array([[255, 255, 0, 255]] * 2, dtype=np.uint8), "L"))
        return img, [(255, 0, 0), (0, 255, 0), WHITE, WHITE]
    if mode in ("RGB", "RGBA"):
        rgba = np.array([[(10, 20, 30, 255), (200, 100, 50, 255), (0, 0, 0, 0), (255, 0, 0, 255)]] * 2, np.uint8)
        if mode == "RGBA":
            return Image.fromarray(rgba, "RGBA"), [(10, 20, 30), (200, 100, 50), WHITE, (255, 0, 0)]
        return Image.fromarray(rgba[..., :3], "RGB"), [(10, 20, 30), (200, 100, 50), BLACK, (255, 0, 0)]
    if mode == "CMYK":
        cmyk = np.array([[(0, 255, 255, 0), (0, 0, 0, 0), (0, 0, 0, 255), (255, 0, 255, 0)]] * 2, np.uint8)
        return Image.fromarray(cmyk, "CMYK"), [(255, 0, 0), WHITE, BLACK, (0, 255, 0)]
    if mode == "YCbCr":
        ycc = np.array([[(76, 85, 255), (255, 128, 128), (0, 128, 128), (150, 44, 21)]] * 2, np.uint8)
        return Image.fromarray(ycc, "YCbCr"), [(254, 0, 0), WHITE, BLACK, (0, 255, 1)]
    gray = [BLACK, (60,) * 3, (128,) * 3, WHITE]
    if mode == "I":
        return Image.fromarray(np.array([SIXTEEN] * 2, dtype=np.int32), "I"), gray
    if mode in ("I;16", "I;16B"):
        data = np.array([SIXTEEN] * 2, dtype="<u2" if mode == "I;16" else ">u2").tobytes()
        return Image.frombytes(mode, (4, 2), data), gray
    if mode == "F":
        floats = np.array([[0.0, 0.25, 0.5, 1.0]] * 2, dtype=np.float32)
        return Image.fromarray(floats, "F"), [BLACK, (63,) * 3, (127,) * 3, WHITE]
    raise AssertionError(mode)


MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "I;16B", "F"]
FILE_MODES = [m for m in MODES if m != "YCbCr"]  # no file format stores YCbCr (JPEG reads back as RGB)


def _tiff(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="TIFF")
    return buffer.getvalue()


def _from_url(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def assert_pixels(img: Image.Image, expected: list[tuple[int, int, int]], what: str) -> None:
    assert img.mode == "RGB" and img.size == (4, 2), what
    for x, want in enumerate(expected):
        for y in (0, 1):
            got = img.getpixel((x, y))
            assert all(abs(a - b) <= 2 for a, b in zip(got, want, strict=True)), f"{what}: ({x},{y}) {got} != {want}"


@pytest.fixture(scope="module")
def space_module() -> ModuleType:
    name = "dermeval_space_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "space" / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _entry_points(space_module: ModuleType, tmp: Path) -> dict[str, Callable[[bytes, Path], Image.Image]]:
    """Every way an image file enters the project, each returning what the model would be given."""
    generator = OpenAIGenerator(ClientConfig(base_url="http://127.0.0.1:9/v1", model="vlm"))
    return {
        "data pipeline (read_image, bytes)": lambda data, path: read_image(data, "x").image,
        "data pipeline (read_image, file)": lambda data, path: read_image(path).image,
        "dataset cell (read_cell)": lambda data, path: read_cell({"bytes": data, "path": "x.tif"}).image,
        "dermtrl eval": lambda data, path: _decode({"bytes": data, "path": None}, "c0"),
        "DermBench local model": lambda data, path: load_case_image({"bytes": data, "path": "x.tif"}, "case 'c0'"),
        "DermBench endpoint": lambda data, path: _from_url(
            generator.message({"bytes": data, "path": "x.tif"})["content"][0]["image_url"]["url"]),
        "client (file)": lambda data, path: _from_url(image_to_data_url(path)),
        "Space upload": lambda data, path: space_module.open_image(str(path), max_megapixels=24)[0],
    }


@pytest.mark.parametrize("mode", FILE_MODES)
def test_every_entry_point_gives_the_same_pixels_for_every_file_mode(mode, space_module, tmp_path):
    img, expected = _image(mode)
    data = _tiff(img)
    assert Image.open(io.BytesIO(data)).mode == mode  # the file really holds that mode
    path = tmp_path / f"{mode.replace(';', '_')}.tif"
    path.write_bytes(data)
    for what, read in _entry_points(space_module, tmp_path).items():
        assert_pixels(read(data, path), expected, f"{mode} via {what}")


@pytest.mark.parametrize("mode", MODES)
def test_every_entry_point_gives_the_same_pixels_for_every_in_memory_mode(mode):
    img, expected = _image(mode)
    assert img.mode == mode
    assert_pixels(load_image(img), expected, f"{mode} via load_image")
    assert_pixels(read_cell(img).image, expected, f"{mode} via read_cell")
    assert_pixels(_from_url(image_to_data_url(img)).convert("RGB"), expected, f"{mode} via image_to_data_url")


def test_sixteen_bit_png_upload_in_the_space_is_not_white(space_module, tmp_path):
    """The attack's case: a 16-bit grayscale PNG, which a bare convert("RGB") turns 99.6% white."""
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    rgb, notes = space_module.open_image(str(path), max_megapixels=24)
    arr = np.asarray(rgb)[..., 0]
    assert np.array_equal(arr, (ramp >> 8).astype(np.uint8))  # every pixel: the top byte
    assert (arr == 255).mean() < 0.01 and "scaled to 8 bits" in " ".join(notes)
