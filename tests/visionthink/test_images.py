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
from PIL import Image, ImageFile, ImageOps

from visionthink import images
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


# --- damaged files: every decoder error is an ImageError for a person -----------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DAMAGED = "is truncated or damaged and cannot be decoded"
NOT_AN_IMAGE = "is not an image this app can read"


def assert_refused_for_a_person(data: bytes, **kwargs) -> str:
    """``load_image`` refuses ``data`` with one of the two messages for a damaged upload; returns the message."""
    with pytest.raises(ImageError) as info:
        load_image(data, **kwargs)
    message = str(info.value)
    assert (DAMAGED in message and "Upload the complete file" in message) or NOT_AN_IMAGE in message, message
    return message


def png_ihdr(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    return _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


def tiff(width: int, height: int, *, strip_offset: int | None = None, strip_bytes: int | None = None,
         ifd_offset: int = 8, pixels: bytes = b"") -> bytes:
    """A little-endian 8-bit greyscale TIFF with one strip, its tags written by hand so they can lie.

    ``pixels`` follow the directory; the strip offset and byte count default to them.
    """
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
               (278, 4, height), (279, 4, len(pixels) if strip_bytes is None else strip_bytes)]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    entries[5] = (273, 4, data_offset if strip_offset is None else strip_offset)
    directory = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", tag, kind, 1, value)
                                                           for tag, kind, value in entries) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", ifd_offset) + directory + pixels


def test_hand_made_tiff_helper_is_a_valid_tiff():
    # Guard for the damaged-TIFF tests below: with honest tags the helper writes a file Pillow decodes.
    pixels = bytes(range(64))
    image = load_image(tiff(8, 8, pixels=pixels))
    assert_rgb(image, (8, 8))
    assert np.array_equal(np.asarray(image)[..., 0], np.frombuffer(pixels, np.uint8).reshape(8, 8))


def test_twenty_byte_fake_png():
    # The audit's file: the PNG signature, the start of an IHDR chunk, and nothing else. It used to escape as a raw
    # "OSError: Truncated File Read" (a traceback in the CLI, a bare "Error" on the web page).
    data = PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR" + struct.pack(">I", 640)
    assert len(data) == 20
    message = assert_refused_for_a_person(data)
    assert message.startswith("The uploaded data is truncated or damaged")


def test_twenty_byte_fake_png_file_names_the_file(tmp_path):
    path = tmp_path / "holiday.png"
    path.write_bytes(PNG_SIGNATURE + b"0123456789ab")
    with pytest.raises(ImageError, match=DAMAGED) as info:
        load_image(path)
    assert "holiday.png" in str(info.value)


def _valid_files() -> dict[str, bytes]:
    noise = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    rgb = Image.fromarray(noise)
    return {
        "PNG": encode(rgb, "PNG"),
        "JPEG": encode(rgb, "JPEG", quality=90),
        "GIF": encode(rgb, "GIF"),
        "TIFF": encode(rgb, "TIFF"),
        "WEBP": encode(rgb, "WEBP"),
        "BMP": encode(rgb, "BMP"),
        "16-bit PNG": encode(Image.fromarray(noise[..., 0].astype(np.uint16) * 257), "PNG"),
        "float TIFF": encode(Image.fromarray(noise[..., 0].astype(np.float32) / 255), "TIFF",
                             compression="tiff_adobe_deflate"),
    }


#: Pillow warns about each cut-off EXIF block it meets; the refusal is what these tests check.
quiet_pillow = pytest.mark.filterwarnings("ignore::UserWarning:PIL")


@quiet_pillow
@pytest.mark.parametrize("fmt", list(_valid_files()))
def test_truncated_headers_are_refused_for_a_person(fmt):
    data = _valid_files()[fmt]
    for size in range(1, 64):  # every cut inside the header
        assert_refused_for_a_person(data[:size])


@quiet_pillow
@pytest.mark.parametrize("fmt", list(_valid_files()))
def test_every_truncation_is_refused_or_loads_as_rgb(fmt):
    data = _valid_files()[fmt]
    for size in range(1, len(data)):
        try:
            image = load_image(data[:size])
        except ImageError as exc:
            message = str(exc)
            assert (DAMAGED in message and "Upload the complete file" in message) or NOT_AN_IMAGE in message, message
        else:  # a few cuts lose only trailing metadata (a GIF trailer, the end of a TIFF directory)
            assert image.mode == "RGB"


@pytest.mark.parametrize(
    ("what", "data"),
    [
        ("IHDR cut short", PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">II", 64, 64))
         + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10)) + _png_chunk(b"IEND", b"")),
        ("IHDR with a wrong CRC", PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR"
         + struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0) + b"\0\0\0\0" + _png_chunk(b"IEND", b"")),
        ("IHDR with bit depth 7", PNG_SIGNATURE + png_ihdr(64, 64, depth=7)
         + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10)) + _png_chunk(b"IEND", b"")),
        ("IHDR with colour type 5", PNG_SIGNATURE + png_ihdr(64, 64, colour=5)
         + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10)) + _png_chunk(b"IEND", b"")),
        ("IDAT that is not zlib", PNG_SIGNATURE + png_ihdr(64, 64) + _png_chunk(b"IDAT", b"garbage" * 20)
         + _png_chunk(b"IEND", b"")),
        ("IDAT too short for the IHDR size", PNG_SIGNATURE + png_ihdr(64, 64)
         + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _png_chunk(b"IEND", b"")),
    ],
    ids=lambda value: value if isinstance(value, str) else "file",
)
def test_png_with_corrupt_chunks(what, data):
    assert_refused_for_a_person(data)


@quiet_pillow
@pytest.mark.parametrize(
    ("what", "data"),
    [
        ("strip offset past the end", tiff(64, 64, strip_offset=10_000_000, strip_bytes=64 * 64)),
        ("strip shorter than its byte count", tiff(64, 64, strip_bytes=64 * 64, pixels=b"\x80" * 100)),
        ("absurd strip byte count", tiff(64, 64, strip_bytes=0xFFFFFFF0, pixels=b"\x80" * 100)),
        ("directory offset past the end", tiff(64, 64, ifd_offset=10_000_000, pixels=b"\x80" * 4096)),
        ("directory offset inside the header", tiff(64, 64, ifd_offset=2, pixels=b"\x80" * 4096)),
        ("zero width", tiff(0, 64, pixels=b"\x80" * 64)),
        ("cut inside the directory", tiff(64, 64, pixels=b"\x80" * 4096)[:40]),
    ],
    ids=lambda value: value if isinstance(value, str) else "file",
)
def test_tiff_with_bogus_offsets(what, data):
    with pytest.raises(ImageError) as info:
        load_image(data)
    message = str(info.value)
    assert DAMAGED in message or NOT_AN_IMAGE in message or "has no pixels" in message, message


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "JPEG"])  # not BMP: its raw pixels can be any bytes
def test_other_formats_with_garbage_after_the_header(fmt):
    data = _valid_files()[fmt]
    garbage = np.random.default_rng(4).integers(0, 256, len(data), dtype=np.uint8).tobytes()
    cut = {"GIF": 13, "WEBP": 30, "JPEG": 20}[fmt]  # the fixed header each format starts with
    assert_refused_for_a_person(data[:cut] + garbage[cut:])


DECODER_ERRORS = [
    OSError("image file is truncated"),
    SyntaxError("broken PNG file"),
    struct.error("unpack requires a buffer of 4 bytes"),
    EOFError(),
    ValueError("tile cannot extend outside image"),
    TypeError("'IFDRational' object cannot be interpreted as an integer"),
    IndexError("list index out of range"),
    KeyError(273),
    ZeroDivisionError("division by zero"),
    MemoryError(),
    RecursionError("maximum recursion depth exceeded"),
]


@pytest.mark.parametrize("error", DECODER_ERRORS, ids=lambda e: type(e).__name__)
def test_any_decoder_error_becomes_an_image_error(monkeypatch, error):
    data = encode(Image.new("RGB", (8, 8), RED), "PNG")

    def broken_load(self):
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(ImageError, match=DAMAGED) as info:
        load_image(data)
    assert info.value.__cause__ is error
    assert "Upload the complete file" in str(info.value)
    assert "()" not in str(info.value)  # an error with no text is named, not shown as "()"


@pytest.mark.parametrize("error", DECODER_ERRORS, ids=lambda e: type(e).__name__)
def test_any_error_while_opening_becomes_an_image_error(monkeypatch, error):
    def broken_open(*args, **kwargs):
        raise error

    monkeypatch.setattr(Image, "open", broken_open)
    with pytest.raises(ImageError, match=DAMAGED) as info:
        load_image(b"\x89PNG\r\n\x1a\nanything")
    assert info.value.__cause__ is error


def test_decoder_error_of_a_pil_image_becomes_an_image_error(monkeypatch):
    image = Image.open(io.BytesIO(encode(Image.new("RGB", (8, 8), RED), "PNG")))

    def broken_load(self):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(ImageError, match="The image is truncated or damaged"):
        load_image(image)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3)], ids=lambda e: type(e).__name__)
def test_interrupts_are_not_swallowed(monkeypatch, error):
    data = encode(Image.new("RGB", (8, 8), RED), "PNG")

    def interrupted(self):
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", interrupted)
    with pytest.raises(type(error)):
        load_image(data)
    monkeypatch.undo()
    monkeypatch.setattr(Image, "open", lambda *a, **k: (_ for _ in ()).throw(error))
    with pytest.raises(type(error)):
        load_image(data)


def test_image_error_from_inside_passes_unchanged(monkeypatch):
    data = encode(Image.new("RGB", (8, 8), RED), "PNG")
    own = ImageError("The image is in a colour mode nobody supports. Save it as PNG.")

    def refusing_load(self):
        raise own

    monkeypatch.setattr(ImageFile.ImageFile, "load", refusing_load)
    with pytest.raises(ImageError) as info:
        load_image(data)
    assert info.value is own


def test_long_decoder_messages_are_shortened(monkeypatch):
    def chatty_load(self):
        raise OSError("x" * 5000)

    monkeypatch.setattr(ImageFile.ImageFile, "load", chatty_load)
    with pytest.raises(ImageError, match=DAMAGED) as info:
        load_image(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    assert len(str(info.value)) < 400


# --- the size limit comes from the header, whatever follows it -------------------------------------------------


HEADER_ONLY_BIG_FILES = {
    # 7000x7000 claimed by the header; what should hold the 49 million pixels is missing or garbage.
    "PNG, IDAT announced but missing": PNG_SIGNATURE + png_ihdr(7000, 7000) + struct.pack(">I", 10_000_000) + b"IDAT",
    "PNG, IDAT of garbage": PNG_SIGNATURE + png_ihdr(7000, 7000) + _png_chunk(b"IDAT", b"\x13\x37" * 2000),
    "16-bit PNG, IDAT of garbage": PNG_SIGNATURE + png_ihdr(7000, 7000, depth=16, colour=0)
    + _png_chunk(b"IDAT", b"\xff" * 4000),
    "TIFF, strip past the end": tiff(7000, 7000, strip_offset=1_000_000, strip_bytes=7000 * 7000),
    "TIFF, strip of garbage": tiff(7000, 7000, strip_bytes=7000 * 7000, pixels=b"\x13\x37" * 2000),
}


@pytest.mark.parametrize("what", list(HEADER_ONLY_BIG_FILES))
def test_size_limit_is_checked_from_the_header_before_any_pixel(what, load_spy):
    data = HEADER_ONLY_BIG_FILES[what]
    assert len(data) < 10_000
    with pytest.raises(ImageError, match="too large") as info:
        load_image(data, max_pixels=1_000_000)
    message = str(info.value)
    assert "7000x7000 pixels (49.0 MP)" in message and "limit of 1 MP" in message
    assert DAMAGED not in message  # refused for its size, not discovered to be truncated while decoding
    assert load_spy == []


def test_size_limit_of_a_hand_made_tiff_is_exact(load_spy):
    header = tiff(1000, 1000, strip_offset=1_000_000, strip_bytes=1000 * 1000)
    with pytest.raises(ImageError, match="1000x1000"):
        load_image(header, max_pixels=999_999)
    assert load_spy == []
    # At the limit the header passes, so the missing strip is found by decoding: damaged, not too large.
    with pytest.raises(ImageError, match=DAMAGED):
        load_image(header, max_pixels=1_000_000)
    assert load_spy


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


# --- 16/32-bit and float greyscale, scaled strip by strip -------------------------------------------------------


def reference_to_uint8(values: np.ndarray, top: int | None = None) -> np.ndarray:
    """The whole-image conversion ``load_image`` used before it worked in strips (kept as the oracle)."""
    if values.dtype.kind == "f":
        values = np.nan_to_num(values.astype(np.float64))
        top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        with np.errstate(over="ignore"):
            return np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
    values = values.astype(np.int64)
    if top is not None:
        return np.clip(values * 255 // top, 0, 255).astype(np.uint8)
    peak = values.max(initial=0)
    if peak <= 255:
        return np.clip(values, 0, 255).astype(np.uint8)
    top = 65535 if peak <= 65535 else int(peak)
    return np.clip(values * 255 // top, 0, 255).astype(np.uint8)


def reference_rgb(image: Image.Image) -> np.ndarray:
    """What the old ``load_image`` gave for a wide greyscale image: rotate, scale the whole array, grey to RGB."""
    image = ImageOps.exif_transpose(image)
    top = 65535 if image.mode.startswith("I;16") else None
    grey = reference_to_uint8(np.asarray(image), top)
    return np.repeat(grey[..., None], 3, axis=2)


def wide_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    shape = (37, 53)
    unit = rng.random(shape, dtype=np.float32)
    wide = (rng.standard_normal(shape) * 300).astype(np.float32)
    wide[0, 0], wide[1, 1], wide[2, 2] = np.nan, np.inf, -np.inf
    unit_nan = unit.copy()
    unit_nan[3, 3] = np.nan
    halves = (np.arange(37 * 53) / (37 * 53 - 1)).astype(np.float32).reshape(shape)  # k/255 + 0.5 ties included
    return {
        "I;16 full range": rng.integers(0, 65536, shape, dtype=np.uint16),
        "I;16 dark (all <= 255)": rng.integers(0, 256, shape, dtype=np.uint16),
        "I;16B": rng.integers(0, 65536, shape).astype(">u2"),
        "I up to 255, negatives": rng.integers(-50, 256, shape, dtype=np.int32),
        "I up to 65535": rng.integers(-50, 65536, shape, dtype=np.int32),
        "I full int32": rng.integers(-(2**31), 2**31 - 1, shape, dtype=np.int32),
        "F in [0, 1]": unit,
        "F in [0, 1] with NaN": unit_nan,
        "F wide with NaN and infinities": wide,
        "F all NaN": np.full(shape, np.nan, np.float32),
        "F negative": -unit,
        "F ramp": halves,
        "F ramp x 255": halves * 255,
    }


@pytest.mark.parametrize("strip_pixels", [7, 53, 54, 1000, 1 << 18])  # one row, exact rows, a partial last strip
@pytest.mark.parametrize("what", list(wide_arrays()))
def test_strip_conversion_matches_the_whole_image_conversion(monkeypatch, what, strip_pixels):
    monkeypatch.setattr(images, "STRIP_PIXELS", strip_pixels)
    source = Image.fromarray(wide_arrays()[what])
    assert source.mode == what.split()[0]
    image = load_image(source)
    assert_rgb(image, (53, 37))
    assert np.array_equal(np.asarray(image), reference_rgb(source))
    np.asarray(source)  # a PIL image handed in is the caller's: still usable afterwards


@pytest.mark.parametrize(
    ("what", "array", "fmt", "options"),
    [
        ("16-bit PNG", np.random.default_rng(6).integers(0, 65536, (61, 83), dtype=np.uint16), "PNG", {}),
        ("16-bit TIFF", np.random.default_rng(7).integers(0, 65536, (61, 83), dtype=np.uint16), "TIFF", {}),
        ("32-bit TIFF", np.random.default_rng(8).integers(0, 100_000, (61, 83), dtype=np.int32), "TIFF", {}),
        ("float TIFF, deflate", np.random.default_rng(9).random((61, 83), dtype=np.float32) * 3, "TIFF",
         {"compression": "tiff_adobe_deflate"}),
        ("float TIFF in [0, 1]", np.random.default_rng(10).random((61, 83), dtype=np.float32), "TIFF", {}),
    ],
)
def test_wide_files_match_the_whole_image_conversion(monkeypatch, what, array, fmt, options):
    monkeypatch.setattr(images, "STRIP_PIXELS", 500)
    data = encode(Image.fromarray(array), fmt, **options)
    image = load_image(data)
    assert_rgb(image, (83, 61))
    assert np.array_equal(np.asarray(image), reference_rgb(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("orientation", [2, 3, 5, 6, 8])
def test_rotated_16_bit_png_matches_rotating_first(monkeypatch, orientation):
    monkeypatch.setattr(images, "STRIP_PIXELS", 100)
    array = np.random.default_rng(11).integers(0, 65536, (30, 50), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(array), "PNG", exif=exif)
    image = load_image(data)
    expected = reference_rgb(Image.open(io.BytesIO(data)))
    assert image.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(np.asarray(image), expected)


def test_rotated_16_bit_tiff_is_rotated_once():
    array = np.zeros((20, 40), dtype=np.uint16)
    array[:5, :5] = 65535  # a white corner, stored top-left
    data = encode(Image.fromarray(array), "TIFF", tiffinfo={0x0112: 6})  # rotate 90° clockwise to view
    image = load_image(data)
    assert_rgb(image, (20, 40))
    assert image.getpixel((17, 2)) == WHITE  # stored top-left lands top-right
    assert image.getpixel((2, 2)) == (0, 0, 0)


@pytest.mark.parametrize(
    ("what", "array", "fmt", "options"),
    [
        ("float TIFF", np.random.default_rng(12).random((512, 2048), dtype=np.float32) * 4, "TIFF",
         {"compression": "tiff_adobe_deflate"}),
        ("16-bit PNG", np.random.default_rng(13).integers(0, 65536, (512, 2048), dtype=np.uint16), "PNG", {}),
        ("32-bit TIFF", np.random.default_rng(14).integers(0, 100_000, (512, 2048), dtype=np.int32), "TIFF", {}),
    ],
)
def test_wide_images_are_scaled_without_a_full_size_wide_copy(monkeypatch, what, array, fmt, options):
    # tracemalloc sees numpy's buffers (Pillow's own pixels are outside it): the whole-image conversion made float64
    # or int64 copies of the image, 24 bytes a pixel at its peak; strips keep to the 1-byte result, one strip and
    # what the decoder reads.
    monkeypatch.setattr(images, "STRIP_PIXELS", 1 << 16)
    data = encode(Image.fromarray(array), fmt, **options)
    pixels = array.size
    tracemalloc.start()
    try:
        image = load_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_rgb(image, (2048, 512))
    assert peak < 3 * pixels, f"{peak / pixels:.1f} bytes a pixel"


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
    [  # docs/tokens.md §5
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
