"""Images in, the 1/4-resolution view, and visual-token accounting, exactly as Qwen2.5-VL counts them.

``load_image`` turns whatever a person uploads into a plain RGB picture or refuses it with an ``ImageError`` whose
message says what was wrong. ``visual_tokens`` reproduces the Qwen2.5-VL image processor's ``smart_resize`` without
importing transformers, so the app and the evaluation can report token costs for any size.

Two rules give the two views. ``downsample``/``full_resolution`` are this project's (the serving engine, the
evaluation, training on store exports); ``released_views`` is the released training's, used only to train on
VisionThink's own data (``train.data`` chooses).
"""

from __future__ import annotations

import functools
import io
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

#: Refuse images with more pixels than this (checked from the header, before decoding).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
#: Qwen2.5-VL patch size times merge size: the grid every image is resized to.
PATCH_FACTOR = 28
#: The checkpoint's image-processor limits (preprocessor_config.json of Qwen2.5-VL / VisionThink).
MIN_PIXELS = 3136
MAX_PIXELS = 12845056
#: Qwen2.5-VL refuses images whose long side is more than this many times the short side.
MAX_ASPECT_RATIO = 200
#: The smallest side the model is given (docs/tokens.md §4).
MIN_SIDE = 28
#: The released training's area clamp (docs/tokens.md §7): an image without a target size is first scaled,
#: keeping its aspect ratio, to hold between these many pixels, and then halved.
RELEASED_MIN_PIXELS = 512 * 512
RELEASED_MAX_PIXELS = 2048 * 2048


class ImageError(ValueError):
    """An image that cannot be used; the message says what was wrong and what to do, for a person to read."""


def load_image(source: str | os.PathLike | bytes | Image.Image, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open a path, bytes or PIL image as an upright RGB image.

    EXIF orientation is applied; transparency is flattened over white; CMYK, palette, grey and 16-bit images are
    converted; an animation gives its first frame. Raises ``ImageError`` for an empty, undecodable or truncated
    file, or for an image above ``max_pixels`` (refused from its header, never decoded).
    """
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        return _decode_rgb(source, "The image", max_pixels, owned=False)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "The uploaded data"
    else:
        path = Path(source)
        name = f"The file {path.name!r}"
        if not path.exists():
            raise ImageError(f"{name} does not exist. Check the path and try again.")
        if path.is_dir():
            raise ImageError(f"{path} is a folder, not an image file.")
        data = path.read_bytes()
    if not data:
        raise ImageError(f"{name} is empty (0 bytes). Upload a PNG, JPEG, WebP or GIF image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(_too_large_message(None, max_pixels)) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"{name} is not an image this app can read. Upload a PNG, JPEG, WebP, GIF, BMP or TIFF image."
        ) from exc
    except Exception as exc:
        # A plugin recognised the format, then met a damaged header: Pillow raises a dozen types for that.
        raise _damaged(name, exc) from exc
    _check_size(image.size, max_pixels)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Another library switched Pillow to padding truncated files with grey, so a damaged upload could no
        # longer be told from a complete one.
        raise ImageError("Pillow is set to accept truncated images; refusing to guess the missing pixels.")
    return _decode_rgb(image, name, max_pixels, owned=True)


def _decode_rgb(image: Image.Image, name: str, max_pixels: int, *, owned: bool) -> Image.Image:
    """Decode the first frame and make it RGB, turning every decoder error into ``ImageError``.

    ``owned`` images were opened here, so their pixels may be freed as soon as the 8-bit copy exists.
    """
    try:
        image = _first_frame(image)
        _check_size(image.size, max_pixels)  # a PIL image seeked back to its first frame can change size
        image.load()
        return _to_rgb(image, owned=owned)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(_too_large_message(None, max_pixels)) from exc
    except Exception as exc:
        # Damaged data fails deep inside Pillow's decoders with OSError, SyntaxError, struct.error, EOFError,
        # ValueError, TypeError, IndexError, KeyError, ZeroDivisionError or MemoryError (an absurd header), so no
        # fixed list is complete. KeyboardInterrupt and other BaseExceptions still pass.
        raise _damaged(name, exc) from exc


def _damaged(name: str, exc: Exception) -> ImageError:
    detail = str(exc) or type(exc).__name__
    if len(detail) > 200:
        detail = detail[:200] + "…"
    return ImageError(f"{name} is truncated or damaged and cannot be decoded ({detail}). Upload the complete file.")


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"The image has no pixels ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageError(_too_large_message(size, max_pixels))


def _too_large_message(size: tuple[int, int] | None, max_pixels: int) -> str:
    what = f"{size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.1f} MP)" if size else "too many pixels"
    return (
        f"The image is too large: {what}, above the limit of {max_pixels / 1e6:g} MP. "
        "Scale it down and upload it again (the limit is VISIONTHINK_MAX_IMAGE_PIXELS)."
    )


def _first_frame(image: Image.Image) -> Image.Image:
    if getattr(image, "is_animated", False):
        image.seek(0)
    return image


def _to_rgb(image: Image.Image, *, owned: bool = False) -> Image.Image:
    """Upright, 8-bit RGB with any alpha flattened onto white."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return _wide_grey_to_rgb(image, owned=owned)
    image = ImageOps.exif_transpose(image)
    if mode == "RGB":
        return image
    try:
        if (mode == "P" and "transparency" in image.info) or mode in ("PA", "LA", "La", "RGBA", "RGBa"):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"Images in the {mode} colour mode are not supported ({exc}). Save it as an RGB PNG or JPEG.") from exc


# --- 16/32-bit and float greyscale -----------------------------------------------------------------------------

#: Pixels per strip when scaling a wide greyscale image: the temporaries stay a few MB whatever the image size.
STRIP_PIXELS = 1 << 18

_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _wide_grey_to_rgb(image: Image.Image, *, owned: bool) -> Image.Image:
    """A 16/32-bit integer or float greyscale image as 8-bit RGB, never holding a full-size wide copy.

    Scaling is per pixel, so the EXIF rotation (as ``ImageOps.exif_transpose`` reads it) is applied to the 8-bit
    result: the same picture as rotating first, without a second copy of the wide source.
    """
    method = _ORIENTATION.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    grey = Image.fromarray(_grey_to_uint8(image), "L")
    if owned:
        image.close()  # the wide source is no longer needed: free it before the RGB copy is made
    if method is not None:
        grey = grey.transpose(method)
    return grey.convert("RGB")


def _strips(image: Image.Image):
    """``(top, bottom, pixels)`` for horizontal strips of about ``STRIP_PIXELS`` pixels, top to bottom."""
    width, height = image.size
    rows = max(1, STRIP_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        yield top, bottom, np.asarray(image.crop((0, top, width, bottom)))


def _grey_to_uint8(image: Image.Image) -> np.ndarray:
    """Scale a 16/32-bit integer or float greyscale image to 0..255, one strip at a time.

    The rules: I;16* modes are 16-bit by definition and scale by 65535 even when every value happens to be <= 255;
    float images scale by 1.0 when no value is above 1, else by 255, clipped, NaN as 0; other integer images keep
    values up to 255 and otherwise scale by 65535, or by their peak when it is higher. Where the scale depends on
    the peak, a first pass finds it.
    """
    if image.mode == "F":
        # np.fmax ignores NaN; starting from 0, the peak is above 1 exactly when the NaN-as-0 maximum is.
        peak = max(float(np.fmax.reduce(strip, axis=None, initial=0.0)) for _, _, strip in _strips(image))
        convert = functools.partial(_scale_float, scale=1.0 if peak <= 1.0 else 255.0)
    elif image.mode.startswith("I;16"):
        convert = functools.partial(_scale_int, scale=65535)
    else:
        peak = max(int(strip.max(initial=0)) for _, _, strip in _strips(image))
        convert = functools.partial(_scale_int, scale=None if peak <= 255 else 65535 if peak <= 65535 else peak)
    width, height = image.size
    out = np.empty((height, width), dtype=np.uint8)
    for top, bottom, strip in _strips(image):
        out[top:bottom] = convert(strip)
    return out


def _scale_float(values: np.ndarray, scale: float) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), copy=False)
    with np.errstate(over="ignore"):  # +inf became the largest float64; * 255 may overflow, and then clips to 255
        values /= scale
        values *= 255.0
    return np.clip(values, 0, 255, out=values).round(out=values)


def _scale_int(values: np.ndarray, scale: int | None) -> np.ndarray:
    values = values.astype(np.int64)
    if scale is not None:
        values *= 255
        values //= scale
    return np.clip(values, 0, 255, out=values)


# --- Views -----------------------------------------------------------------------------------------------------


def low_res_size(width: int, height: int) -> tuple[int, int]:
    """The 1/4-resolution size: each side halved, then scaled up together if a side falls under 28 px."""
    return _min_side_size(max(1, width // 2), max(1, height // 2))


def full_res_size(width: int, height: int) -> tuple[int, int]:
    """The high-resolution size: the original, enlarged only if a side is under 28 px."""
    return _min_side_size(width, height)


def _min_side_size(width: int, height: int) -> tuple[int, int]:
    if min(width, height) >= MIN_SIDE:
        return width, height
    scale = max(MIN_SIDE / width, MIN_SIDE / height)
    return max(MIN_SIDE, int(width * scale)), max(MIN_SIDE, int(height * scale))


def downsample(image: Image.Image) -> Image.Image:
    """What the model sees first: half width and half height (LANCZOS), each side at least 28 px."""
    check_aspect_ratio(*image.size)
    size = low_res_size(*image.size)
    check_aspect_ratio(*size, original=image.size)  # the 28 px guard can stretch a thin image past the limit
    return image.resize(size, Image.Resampling.LANCZOS)


def full_resolution(image: Image.Image) -> Image.Image:
    """The high-resolution view: the original, enlarged only if a side is under 28 px."""
    check_aspect_ratio(*image.size)
    size = full_res_size(*image.size)
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def released_view_sizes(width: int, height: int, target: tuple[int, int] | None = None
                        ) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (low, high) sizes the released training gave a ``width`` x ``height`` image (docs/tokens.md §7).

    With a ``target`` (the dataset's ``info.tgt_width``/``tgt_height``) the low view is exactly that size, not halved
    again. Without one the image is area-clamped to [512², 2048²] pixels (each side scaled by the same factor and
    truncated, as the released code does) and then halved. The high view is always twice the low one on each side,
    not the original. Raises ``ImageError`` where the released code refused the image: a low side under 28 px or an
    aspect ratio Qwen2.5-VL rejects.
    """
    if target is not None:
        low = (int(target[0]), int(target[1]))
    else:
        check_aspect_ratio(width, height)
        w, h = width, height
        if w * h > RELEASED_MAX_PIXELS:
            w, h = _scaled_to_area(w, h, RELEASED_MAX_PIXELS)
        if w * h < RELEASED_MIN_PIXELS:
            w, h = _scaled_to_area(w, h, RELEASED_MIN_PIXELS)
        low = (w // 2, h // 2)
    if min(low) < MIN_SIDE:
        where = f"its target size {low[0]}x{low[1]}" if target is not None else f"its low view {low[0]}x{low[1]}"
        raise ImageError(f"The image is {width}x{height} and {where} has a side under {MIN_SIDE} px, which the "
                         "released training refused.")
    check_aspect_ratio(*low, original=(width, height))
    return low, (2 * low[0], 2 * low[1])


def _scaled_to_area(width: int, height: int, pixels: int) -> tuple[int, int]:
    factor = math.sqrt(pixels / (width * height))
    return int(width * factor), int(height * factor)


def released_views(image: Image.Image, target: tuple[int, int] | None = None) -> tuple[Image.Image, Image.Image]:
    """The released training's (low, high) views of ``image``, sized by ``released_view_sizes`` (LANCZOS).

    Both are resampled once from the original; the released code reaches the same low size through two resamplings
    (clamp, then halve).
    """
    low, high = released_view_sizes(*image.size, target)
    return image.resize(low, Image.Resampling.LANCZOS), image.resize(high, Image.Resampling.LANCZOS)


# --- Token accounting ------------------------------------------------------------------------------------------


def check_aspect_ratio(width: int, height: int, *, original: tuple[int, int] | None = None) -> None:
    """Raise ``ImageError`` for a size Qwen2.5-VL refuses (a side of 0, or more than 200:1)."""
    if width < 1 or height < 1:
        raise ImageError(f"The image has no pixels ({width}x{height}).")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        shown = f"{ratio:.0f}" if ratio >= MAX_ASPECT_RATIO + 1 else f"{ratio:.2f}"
        what = f"{width}x{height}"
        if original:
            what = f"{original[0]}x{original[1]} (its 1/4-resolution view is {width}x{height})"
        raise ImageError(
            f"The image is {what}, an aspect ratio of {shown}:1; Qwen2.5-VL accepts at most "
            f"{MAX_ASPECT_RATIO}:1. Crop it to the part you are asking about and upload that."
        )


def smart_resize(width: int, height: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) Qwen2.5-VL's image processor resizes an image to: multiples of 28 within the pixel limits."""
    check_aspect_ratio(width, height)
    f = PATCH_FACTOR
    h, w = round(height / f) * f, round(width / f) * f
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(f, math.floor(height / beta / f) * f)
        w = max(f, math.floor(width / beta / f) * f)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / f) * f
        w = math.ceil(width * beta / f) * f
    return w, h


def visual_tokens(width: int, height: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> int:
    """Visual tokens Qwen2.5-VL spends on a ``width`` x ``height`` image (the two delimiter tokens not counted)."""
    w, h = smart_resize(width, height, min_pixels, max_pixels)
    return (w // PATCH_FACTOR) * (h // PATCH_FACTOR)


@dataclass(frozen=True)
class TokenReport:
    """Visual tokens of one episode against a single pass on the full image.

    ``saved`` is negative when the model asked for the full image: it then holds both images in context.
    """

    low_res: int
    high_res: int
    used: int
    full_res: int
    saved: int
    retained_ratio: float

    @classmethod
    def build(cls, *, low_res: int, high_res: int, full_res: int) -> TokenReport:
        used = low_res + high_res
        return cls(
            low_res=low_res,
            high_res=high_res,
            used=used,
            full_res=full_res,
            saved=full_res - used,
            retained_ratio=used / full_res if full_res else 0.0,
        )

    def to_dict(self) -> dict:
        return asdict(self)
