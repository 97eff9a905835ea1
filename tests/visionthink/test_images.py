"""Behaviour tests for visionthink.images: loading odd uploads, the low-res view and token accounting.

Every image is built here with Pillow/numpy; nothing is read from the repository.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from visionthink.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageError,
    TokenReport,
    check_aspect_ratio,
    downsample,
    full_resolution,
    load_image,
    low_res_size,
    smart_resize,
    visual_tokens,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# --- helpers ---------------------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def close(pixel, expected, tol: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected, strict=True))


def assert_rgb(image: Image.Image, size: tuple[int, int]) -> None:
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert image.size == size


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def one_bit_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit greyscale PNG, written row by row so no full-size raster ever exists in memory."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    block = row * 500
    parts = [compressor.compress(block) for _ in range(height // 500)]
    parts.append(compressor.compress(row * (height % 500)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    data = one_bit_png(20_000, 20_000)
    assert len(data) < 200_000  # a few tens of KB on disk for 400 megapixels
    return data


@pytest.fixture
def load_spy(monkeypatch):
    """Record every pixel decode (Image.load / ImageFile.load) while still running it."""
    calls: list[str] = []
    original_image_load = Image.Image.load
    original_file_load = ImageFile.ImageFile.load

    def image_load(self):
        calls.append(f"Image.load {self.size}")
        return original_image_load(self)

    def file_load(self):
        calls.append(f"ImageFile.load {self.size}")
        return original_file_load(self)

    monkeypatch.setattr(Image.Image, "load", image_load)
    monkeypatch.setattr(ImageFile.ImageFile, "load", file_load)
    return calls


# --- refused inputs --------------------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty \(0 bytes\)") as info:
        load_image(path)
    assert "empty.png" in str(info.value)


def test_empty_bytes():
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_text_file_renamed_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n" * 20)
    with pytest.raises(ImageError, match="not an image") as info:
        load_image(path)
    assert "notes.png" in str(info.value)


def test_truncated_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or damaged") as info:
        load_image(path)
    assert "cut.jpg" in str(info.value)
    assert "complete file" in str(info.value)


def test_truncated_png_bytes():
    noise = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    with pytest.raises(ImageError, match="truncated or damaged"):
        load_image(data[: len(data) // 2])


def test_truncated_jpeg_refused_even_when_pillow_is_lenient(monkeypatch):
    noise = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="truncated"):
        load_image(data[: len(data) // 2])


def test_png_bomb_refused_from_header_without_decoding(tmp_path, bomb_png, load_spy):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="too large") as info:
            load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert load_spy == []  # no pixel was ever decoded
    assert peak < 5_000_000  # decoding would need ≥ 400 MB (Pillow keeps 1 byte per 1-bit pixel)
    message = str(info.value)
    assert "limit" in message and "50 MP" in message
    assert "Scale it down" in message


def test_load_spy_sees_a_normal_decode(load_spy):
    # Guard for the bomb tests: the spy must notice decoding when it happens.
    data = one_bit_png(64, 32)
    assert load_spy == []
    assert_rgb(load_image(data), (64, 32))
    assert load_spy


def test_png_bomb_bytes_refused(bomb_png, load_spy):
    with pytest.raises(ImageError, match="too large"):
        load_image(bomb_png)
    assert load_spy == []


def test_image_above_default_limit_refused_with_its_size(load_spy):
    # 80 MP: below Pillow's own bomb threshold, above the app's 50 MP default, so our header check must catch it.
    assert 10_000 * 8_000 > DEFAULT_MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="10000x8000 pixels") as info:
        load_image(one_bit_png(10_000, 8_000))
    assert "80.0 MP" in str(info.value)
    assert load_spy == []


def test_configurable_max_pixels(tmp_path, load_spy):
    path = tmp_path / "small.png"
    path.write_bytes(encode(Image.new("RGB", (101, 100), RED), "PNG"))
    load_spy.clear()  # forget the decodes made while building the file
    with pytest.raises(ImageError, match="101x100") as info:
        load_image(path, max_pixels=101 * 100 - 1)
    assert "limit" in str(info.value)
    assert load_spy == []  # refused from the header
    image = load_image(path, max_pixels=101 * 100)  # exactly at the limit is allowed
    assert_rgb(image, (101, 100))
    assert_rgb(load_image(path, max_pixels=101 * 100 + 1), (101, 100))


def test_configurable_max_pixels_for_pil_and_bytes():
    image = Image.new("RGB", (50, 40), BLUE)
    with pytest.raises(ImageError, match="too large"):
        load_image(image, max_pixels=1999)
    assert_rgb(load_image(image, max_pixels=2000), (50, 40))
    data = encode(image, "PNG")
    with pytest.raises(ImageError, match="too large"):
        load_image(data, max_pixels=1999)
    assert_rgb(load_image(data, max_pixels=2000), (50, 40))


def test_missing_path(tmp_path):
    with pytest.raises(ImageError, match="does not exist") as info:
        load_image(tmp_path / "nowhere.jpg")
    assert "nowhere.jpg" in str(info.value)
    with pytest.raises(ImageError, match="does not exist"):
        load_image(str(tmp_path / "nowhere.jpg"))


def test_folder_path(tmp_path):
    folder = tmp_path / "photos.png"
    folder.mkdir()
    with pytest.raises(ImageError, match="is a folder"):
        load_image(folder)


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


# --- accepted inputs and colour conversion --------------------------------------------------------------------


def test_path_bytes_and_pil_inputs_agree(tmp_path):
    array = np.zeros((30, 40, 3), dtype=np.uint8)
    array[:, :20] = RED
    array[:, 20:] = GREEN
    source = Image.fromarray(array)
    data = encode(source, "PNG")
    path = tmp_path / "pic.png"
    path.write_bytes(data)
    results = [
        load_image(path),
        load_image(str(path)),
        load_image(data),
        load_image(bytearray(data)),
        load_image(memoryview(data)),
        load_image(source),
    ]
    for image in results:
        assert_rgb(image, (40, 30))
        assert np.array_equal(np.asarray(image), array)


def test_pil_input_non_rgb_is_converted():
    grey = Image.new("L", (8, 6), 77)
    image = load_image(grey)
    assert_rgb(image, (8, 6))
    assert image.getpixel((3, 3)) == (77, 77, 77)


def test_cmyk_jpeg_becomes_rgb_with_right_colours():
    cmyk = Image.new("CMYK", (48, 16))
    cmyk.paste((0, 255, 255, 0), (0, 0, 16, 16))  # red
    cmyk.paste((255, 0, 255, 0), (16, 0, 32, 16))  # green
    cmyk.paste((0, 0, 0, 255), (32, 0, 48, 16))  # black
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = load_image(data)
    assert_rgb(image, (48, 16))
    assert close(image.getpixel((8, 8)), RED, 20)
    assert close(image.getpixel((24, 8)), GREEN, 20)
    assert close(image.getpixel((40, 8)), (0, 0, 0), 20)


def test_16_bit_greyscale_png_is_scaled_not_clipped():
    gradient = np.linspace(0, 65535, 256).round().astype(np.uint16)
    array = np.tile(gradient, (4, 1))
    data = encode(Image.fromarray(array), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    image = load_image(data)
    assert_rgb(image, (256, 4))
    out = np.asarray(image)[0, :, 0].astype(int)
    assert out[0] == 0 and out[-1] == 255
    assert np.all(np.diff(out) >= 0)  # monotonic
    assert len(np.unique(out)) > 200  # a real ramp, not a clipped step
    assert abs(out[128] - 128) <= 2  # mid-grey stays mid-grey
    rgb = np.asarray(image)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])


def test_dark_16_bit_png_stays_dark():
    # Values 0..255 out of 65535 are almost black; they must not be read as 8-bit values.
    array = np.tile(np.arange(256, dtype=np.uint16), (2, 1))
    image = load_image(encode(Image.fromarray(array), "PNG"))
    assert np.asarray(image).max() <= 1


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (20, 10), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    image = load_image(data)
    assert_rgb(image, (20, 10))
    assert close(image.getpixel((5, 5)), RED, 2)
    assert close(image.getpixel((19, 9)), RED, 2)


def test_animated_gif_pil_input_positioned_on_later_frame():
    frames = [Image.new("RGB", (12, 12), colour) for colour in (RED, GREEN, BLUE)]
    opened = Image.open(io.BytesIO(encode(frames[0], "GIF", save_all=True, append_images=frames[1:])))
    opened.seek(2)
    image = load_image(opened)
    assert close(image.getpixel((6, 6)), RED, 2)


def _exif_jpeg(orientation: int) -> bytes:
    # Stored 60x30 (landscape): red 10x10 block in the stored top-left corner, the rest blue.
    stored = Image.new("RGB", (60, 30), BLUE)
    stored.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize(
    ("orientation", "red_corner"),
    [
        (6, (25, 5)),  # rotate 90° clockwise to view: stored top-left lands top-right
        (8, (5, 55)),  # rotate 90° counter-clockwise to view: stored top-left lands bottom-left
    ],
)
def test_exif_rotated_jpeg_is_upright(orientation, red_corner):
    data = _exif_jpeg(orientation)
    for image in (load_image(data), load_image(Image.open(io.BytesIO(data)))):
        assert_rgb(image, (30, 60))  # size swapped
        assert close(image.getpixel(red_corner), RED, 40)
        for corner in ((5, 5), (25, 5), (5, 55), (25, 55)):
            if corner != red_corner:
                assert close(image.getpixel(corner), BLUE, 40), corner
        assert image.getexif().get(0x0112, 1) == 1  # not rotated twice by a later consumer


def test_one_by_one_image():
    image = load_image(encode(Image.new("RGB", (1, 1), GREEN), "PNG"))
    assert_rgb(image, (1, 1))
    assert image.getpixel((0, 0)) == GREEN
    small = downsample(image)
    assert small.size == (28, 28)
    assert close(small.getpixel((14, 14)), GREEN, 2)
    assert full_resolution(image).size == (28, 28)
    assert low_res_size(1, 1) == (28, 28)


def test_extreme_aspect_ratio_loads_but_is_refused_for_the_model():
    image = load_image(encode(Image.new("RGB", (3000, 10), RED), "PNG"))  # 300:1
    assert_rgb(image, (3000, 10))
    for call in (lambda: downsample(image), lambda: full_resolution(image), lambda: visual_tokens(3000, 10)):
        with pytest.raises(ImageError, match="200:1") as info:
            call()
        assert "3000x10" in str(info.value) and "300:1" in str(info.value)
    with pytest.raises(ImageError, match="200:1"):
        visual_tokens(10, 3000)


def test_check_aspect_ratio_boundary():
    check_aspect_ratio(4000, 20)  # exactly 200:1 is allowed
    check_aspect_ratio(20, 4000)
    check_aspect_ratio(1, 1)
    with pytest.raises(ImageError, match="200:1"):
        check_aspect_ratio(4020, 20)
    with pytest.raises(ImageError, match="200:1"):
        check_aspect_ratio(20, 4020)


def test_rgba_png_flattened_over_white():
    rgba = Image.new("RGBA", (30, 10), (255, 0, 0, 0))  # fully transparent red: must become white
    rgba.paste((0, 0, 255, 255), (10, 0, 20, 10))  # opaque blue
    rgba.paste((0, 0, 0, 128), (20, 0, 30, 10))  # half-transparent black: mid grey
    for source in (encode(rgba, "PNG"), rgba):
        image = load_image(source)
        assert_rgb(image, (30, 10))
        assert image.getpixel((5, 5)) == WHITE
        assert image.getpixel((15, 5)) == BLUE
        assert close(image.getpixel((25, 5)), (127, 127, 127), 2)


def test_grey_alpha_png_flattened_over_white():
    la = Image.new("LA", (10, 10), (0, 0))
    la.paste((0, 255), (5, 0, 10, 10))
    image = load_image(encode(la, "PNG"))
    assert image.getpixel((2, 2)) == WHITE
    assert image.getpixel((7, 7)) == (0, 0, 0)


def test_palette_png_with_transparency():
    palette_image = Image.new("P", (20, 10), 0)
    palette_image.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)  # 0 red, 1 green
    palette_image.paste(1, (10, 0, 20, 10))
    data = encode(palette_image, "PNG", transparency=0)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == "P" and "transparency" in reopened.info
    image = load_image(data)
    assert_rgb(image, (20, 10))
    assert image.getpixel((5, 5)) == WHITE  # transparent red index is white, not red
    assert image.getpixel((15, 5)) == GREEN


def test_palette_png_without_transparency():
    palette_image = Image.new("P", (4, 4), 0)
    palette_image.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    image = load_image(encode(palette_image, "PNG"))
    assert image.getpixel((1, 1)) == BLUE


def test_other_formats_load():
    source = Image.new("RGB", (16, 8), GREEN)
    for fmt in ("BMP", "TIFF", "WEBP"):
        image = load_image(encode(source, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
        assert_rgb(image, (16, 8))
        assert close(image.getpixel((4, 4)), GREEN, 2), fmt


# --- views -----------------------------------------------------------------------------------------------------


def test_downsample_halves_each_side():
    image = Image.new("RGB", (1024, 768), RED)
    small = downsample(image)
    assert small.size == (512, 384)
    assert small.mode == "RGB"
    assert close(small.getpixel((100, 100)), RED, 2)
    assert image.size == (1024, 768)  # the original is untouched
    assert low_res_size(1024, 768) == (512, 384)
    assert low_res_size(1025, 769) == (512, 384)  # floor, as w // 2


def test_downsample_small_image_hits_the_28px_guard():
    small = downsample(Image.new("RGB", (50, 30), BLUE))
    # 25x15 is under 28 px; both sides scaled by 28/15: int(25 * 28/15) = 46, 15 * 28/15 = 28.
    assert small.size == (46, 28)
    width, height = small.size
    assert min(width, height) >= 28
    assert abs(width / height - 50 / 30) < 0.05
    assert low_res_size(50, 30) == (46, 28)
    assert low_res_size(30, 50) == (28, 46)


@pytest.mark.parametrize("size", [(1, 1), (2, 1000), (55, 55), (56, 2000), (3, 7), (10, 1999)])
def test_low_res_size_always_at_least_28(size):
    width, height = low_res_size(*size)
    assert width >= 28 and height >= 28


def test_full_resolution_is_the_original_unless_tiny():
    image = Image.new("RGB", (1024, 768))
    assert full_resolution(image) is image
    assert full_resolution(Image.new("RGB", (10, 20))).size == (28, 56)
    assert full_resolution(Image.new("RGB", (28, 28))).size == (28, 28)


# --- tokens ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "resized", "tokens"),
    [  # spec §3.4
        ((1024, 768), (1036, 756), 999),
        ((512, 384), (504, 392), 252),
        ((1280, 960), (1288, 952), 1564),
        ((640, 480), (644, 476), 391),
        ((2048, 1024), (2044, 1036), 2701),
        ((1024, 512), (1036, 504), 666),
        ((8000, 6000), (4116, 3080), 16170),
        ((4000, 3000), (4004, 2996), 15301),
        ((100, 60), (112, 56), 8),
        ((50, 30), (84, 56), 6),
    ],
)
def test_visual_tokens_match_spec_table(size, resized, tokens):
    assert smart_resize(*size) == resized
    assert visual_tokens(*size) == tokens


def test_token_report_direct_answer():
    report = TokenReport.build(low_res=252, high_res=0, full_res=999)
    assert report.used == 252
    assert report.saved == 747
    assert report.retained_ratio == pytest.approx(0.2523, abs=1e-4)
    assert report.to_dict() == {
        "low_res": 252,
        "high_res": 0,
        "used": 252,
        "full_res": 999,
        "saved": 747,
        "retained_ratio": report.retained_ratio,
    }


def test_token_report_after_resize_saves_negative():
    report = TokenReport.build(low_res=252, high_res=999, full_res=999)
    assert report.used == 1251
    assert report.saved == -252
    assert report.retained_ratio == pytest.approx(1251 / 999)
    assert report.retained_ratio > 1


def test_token_report_zero_full_res():
    report = TokenReport.build(low_res=0, high_res=0, full_res=0)
    assert report.retained_ratio == 0.0
    assert report.saved == 0
