"""Decoding images (PNG, JPEG, BMP, WebP, GIF through Pillow; TIFF through tifffile) and encoding PNGs.

Array conventions: a decoded image is ``(H, W, C)`` with ``C`` in {1, 3}, ``uint8`` or ``uint16``
as the file holds it (alpha dropped, palettes expanded).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.errors import ErrorKind, SampleError, unreadable_kind

EIGHT_BIT_MODES = {"1": "L", "L": "L", "LA": "L", "P": "RGB", "PA": "RGB", "RGB": "RGB", "RGBA": "RGB"}


SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


DEFAULT_MAX_IMAGE_PIXELS = 16384 * 16384  # 256 megapixels: a 16k x 16k slide or scene; max_image_pixels raises it

# segpipe checks every image's declared size against max_image_pixels from its header before it
# decodes a pixel (open_header); Pillow's own check (a warning from 89 megapixels, an error from
# 179) would refuse images the user allowed and word it as a decompression bomb.
Image.MAX_IMAGE_PIXELS = None


def open_header(data: bytes, what: str = "image", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Return the encoded image opened but not decoded (Pillow reads only its header).

    Raises SampleError if the file is empty or not an image, or (kind ``image_too_large``) if its
    header declares more than ``max_pixels`` pixels (None: no limit).
    """
    bad = unreadable_kind(what)
    if not data:
        raise SampleError(f"{what} file is empty", bad)
    try:
        picture = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError as exc:
        raise SampleError(
            f"{what} cannot be decoded: not a recognised image format (PNG, JPEG, TIFF, BMP, WebP, GIF) or corrupt", bad
        ) from exc
    except Exception as exc:  # PIL raises several types for corrupt headers
        raise SampleError(f"{what} cannot be decoded ({type(exc).__name__}: {exc}); the header is corrupt",
                          bad) from exc
    width, height = picture.size
    if max_pixels is not None and width * height > max_pixels:
        raise SampleError(too_large_message(what, width, height, max_pixels), ErrorKind.IMAGE_TOO_LARGE)
    frames = getattr(picture, "n_frames", 1) if picture.format in ANIMATED_FORMATS else 1
    if frames > 1:
        raise SampleError(f"{what} is an animated {picture.format} of {frames} frames; segpipe reads still images: "
                          "save the frame to segment on its own (e.g. as PNG)", ErrorKind.MULTI_PAGE_IMAGE)
    return picture


ANIMATED_FORMATS = ("GIF", "PNG", "WEBP")  # formats whose extra frames are an animation (a JPEG's are not: MPO)


def too_large_message(what: str, width: int, height: int, max_pixels: int) -> str:
    """Return the message of an image larger than ``max_pixels``, naming the option that raises the limit."""
    return (f"{what} is {width}x{height} = {width * height / 1e6:.0f} megapixels, more than max_image_pixels="
            f"{max_pixels} ({max_pixels / 1e6:.0f} megapixels); to segment it, raise the limit "
            f"(segpipe segment --max-image-pixels N, or max_image_pixels: N in the config)")


ORIENTATION_TAG = 0x0112  # EXIF's Orientation: how a viewer turns the stored pixels to display them
TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # as Pillow's ImageOps.exif_transpose turns them


def orientation_of(picture: Image.Image) -> int:
    """Return an opened picture's EXIF orientation, 1..8 (1: shown as stored, also when it has none or a
    broken one), from the EXIF its header carries (JPEG, PNG, WebP), without decoding a pixel."""
    raw = picture.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = int(exif.get(ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the pixels
        return 1
    return value if value in TRANSPOSES else 1


def displayed(picture: Image.Image, orientation: int) -> Image.Image:
    """Return a decoded picture turned as viewers display it (its EXIF ``orientation``)."""
    return picture.transpose(TRANSPOSES[orientation]) if orientation in TRANSPOSES else picture


def displayed_size(picture: Image.Image, orientation: int) -> tuple[int, int]:
    """Return ``(width, height)`` of a picture as displayed: orientations 5 to 8 swap the sides."""
    return (picture.height, picture.width) if orientation >= 5 else (picture.width, picture.height)


def image_orientation(data: bytes) -> int:
    """Return the EXIF orientation of an encoded image (1 for TIFF, read as stored, and for a file
    Pillow cannot open: reading it says why)."""
    if is_tiff(data):
        return 1
    try:
        return orientation_of(Image.open(io.BytesIO(data)))
    except Exception:  # noqa: BLE001 - the read itself reports an unreadable file
        return 1


def load_picture(picture: Image.Image, what: str = "image") -> Image.Image:
    """Return ``picture`` with its pixels decoded; raise SampleError if the data is corrupt or truncated."""
    try:
        picture.load()
    except Exception as exc:  # PIL raises several types for corrupt and truncated files
        raise SampleError(f"{what} cannot be decoded ({type(exc).__name__}: {exc}); the file is corrupt or truncated",
                          unreadable_kind(what)) from exc
    return picture


def open_image(data: bytes, what: str = "image", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Return the fully decoded first frame of an encoded image; raise SampleError if unusable."""
    return load_picture(open_header(data, what, max_pixels), what)


def usable_picture(picture: Image.Image) -> Image.Image:
    """Return a decoded picture in a mode segpipe reads: ``L`` or ``RGB`` (8-bit), ``I;16`` or ``I`` (16-bit).

    Alpha is dropped and palettes expanded. Other modes (CMYK, float, YCbCr, ...) and 32-bit
    values outside 0..65535 raise SampleError (kind ``unsupported_image``) saying how to convert them.
    """
    mode = picture.mode
    if mode in EIGHT_BIT_MODES:
        return picture if mode == EIGHT_BIT_MODES[mode] else picture.convert(EIGHT_BIT_MODES[mode])
    if mode in SIXTEEN_BIT_MODES:
        if mode == "I":
            low, high = picture.getextrema()
            if low < 0 or high > 65535:
                raise SampleError(f"image mode {mode} holds values outside 0..65535; save it as 8- or 16-bit",
                                  ErrorKind.UNSUPPORTED_IMAGE)
        return picture if mode in ("I;16", "I") else picture.convert("I")  # Pillow resizes only I;16 and I
    raise SampleError(f"unsupported image mode {mode!r}; convert it to 8- or 16-bit grayscale or RGB (e.g. PNG)",
                      ErrorKind.UNSUPPORTED_IMAGE)


def picture_array(picture: Image.Image) -> np.ndarray:
    """Return a :func:`usable_picture` as ``(H, W, C)``, C in {1, 3}, uint8 (8-bit) or uint16 (16-bit)."""
    array = np.asarray(picture)
    if array.dtype not in (np.uint8, np.uint16):
        array = array.astype(np.uint16)  # mode I, checked to lie in 0..65535
    return array[:, :, np.newaxis] if array.ndim == 2 else array


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, either byte order


def is_tiff(data: bytes) -> bool:
    """Return whether ``data`` starts like a TIFF or BigTIFF file."""
    return data[:4] in TIFF_MAGIC


def read_tiff(data: bytes, what: str = "image", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
              page: int | None = None) -> np.ndarray:
    """Return one page of a TIFF (strips or tiles, classic or BigTIFF, any codec tifffile knows) as
    ``(H, W, C)``, C in {1, 3}, uint8 or uint16.

    A file of several pages needs ``page`` (0-based; ``tiff_page`` in the run's config); its size is
    checked against ``max_pixels`` from the page's tags before any pixel is decoded. Palette pages
    are expanded to RGB, bilevel pages read as 0/255, an alpha or extra channel dropped; other
    sample types (float, signed, 32-bit) raise SampleError saying how to convert them.
    """
    import tifffile

    bad = unreadable_kind(what)
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            pages = len(tiff.pages)
            if page is None and pages > 1:
                raise SampleError(f"{what} is a TIFF of {pages} pages; choose one with tiff_page: N (segpipe segment "
                                  "--tiff-page N, 0 for the first) or save the page alone", ErrorKind.MULTI_PAGE_IMAGE)
            index = page or 0
            if index >= pages:
                raise SampleError(f"{what} is a TIFF of {pages} page(s); tiff_page={index} does not exist",
                                  ErrorKind.MULTI_PAGE_IMAGE)
            chosen = tiff.pages[index]
            height, width = int(chosen.imagelength), int(chosen.imagewidth)
            if max_pixels is not None and height * width > max_pixels:
                raise SampleError(too_large_message(what, width, height, max_pixels), ErrorKind.IMAGE_TOO_LARGE)
            array = chosen.asarray()
            photometric, colormap, axes = int(chosen.photometric), chosen.colormap, chosen.axes
    except SampleError:
        raise
    except Exception as exc:  # tifffile raises several types for corrupt and truncated files
        raise SampleError(f"{what} cannot be decoded as TIFF ({type(exc).__name__}: {exc}); the file is corrupt, "
                          "truncated or uses a codec that is not installed", bad) from exc
    return tiff_planes(array, photometric, colormap, axes, what)


def tiff_planes(array: np.ndarray, photometric: int, colormap: np.ndarray | None, axes: str,
                what: str) -> np.ndarray:
    """Return a decoded TIFF page as ``(H, W, C)``, C in {1, 3}, uint8 or uint16 (see :func:`read_tiff`)."""
    if axes.startswith("S") and array.ndim == 3:  # planar: samples first
        array = np.moveaxis(array, 0, -1)
    if array.dtype == bool:
        array = array.astype(np.uint8) * np.uint8(255)
    if array.dtype not in (np.uint8, np.uint16):
        raise SampleError(f"{what} is a TIFF of {array.dtype} samples; save it as 8- or 16-bit unsigned integers",
                          ErrorKind.UNSUPPORTED_IMAGE)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if photometric == 3 and colormap is not None and array.shape[2] == 1:  # palette: indices into the colour map
        palette = (np.asarray(colormap).T >> 8).astype(np.uint8)  # (entries, 3), 16-bit levels to 8
        array = palette[array[:, :, 0]]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise SampleError(f"{what} is a TIFF of shape {array.shape}; save one 2-D page of 1 or 3 channels",
                          ErrorKind.UNSUPPORTED_IMAGE)
    if array.shape[2] in (2, 4):  # an alpha (or extra) channel: dropped, as for PNG
        array = array[:, :, :array.shape[2] - 1]
    if photometric == 0:  # min-is-white: invert, so that bright means bright as everywhere else
        array = np.iinfo(array.dtype).max - array
    return np.ascontiguousarray(array)


def tiff_picture(array: np.ndarray, channel: int | None = None) -> Image.Image:
    """Return a TIFF's ``(H, W, C)`` array (or one channel of it) as a Pillow image in its own type."""
    plane = array[:, :, channel] if channel is not None else (array[:, :, 0] if array.shape[2] == 1 else array)
    return Image.fromarray(np.ascontiguousarray(plane))  # uint8: L or RGB; uint16: I;16


def decode_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, tiff_page: int | None = None) -> np.ndarray:
    """Return the image as ``(H, W, C)``, C in {1, 3}, uint8 (8-bit input) or uint16 (16-bit input).

    Accepts 1-bit, 8-bit and 16-bit grayscale, palette, RGB and RGBA (alpha dropped). Other modes
    (CMYK, float, YCbCr, ...) raise SampleError saying how to convert them; so does an image of
    more than ``max_pixels`` pixels, before it is decoded. An EXIF orientation is applied, so the
    array is the image as viewers display it. TIFFs are read by :func:`read_tiff`, as stored.
    """
    if is_tiff(data):
        return read_tiff(data, "image", max_pixels, tiff_page)
    opened = open_image(data, "image", max_pixels)
    return picture_array(displayed(usable_picture(opened), orientation_of(opened)))


def encode_png(array: np.ndarray, compress_level: int = 6) -> bytes:
    """Return ``array`` encoded as a lossless PNG.

    Accepts uint8 ``(H, W)`` (grey, e.g. a class-index mask), uint8 ``(H, W, 3)`` (RGB),
    uint8 ``(H, W, 4)`` (RGBA) or uint16 ``(H, W)`` (16-bit grey). ``compress_level`` 1 is
    several times faster than the default 6 and costs little on class-index masks.
    """
    array = np.asarray(array)
    grey = array.ndim == 2 and array.dtype in (np.uint8, np.uint16)
    colour = array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8
    if not (grey or colour):
        raise ValueError(
            f"cannot encode an array of shape {array.shape} and dtype {array.dtype} as PNG; "
            "give uint8 (H, W), (H, W, 3) or (H, W, 4), or uint16 (H, W)"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
