"""Synthetic labelled images for the demo, the tests and benchmarks.

Each sample is an RGB picture and a class-index mask of the same height and width. The scene is
built so that a small U-Net can learn it in a few epochs, yet is not trivially thresholdable:

- **Background (class 0)**: a smooth, low-frequency grey field (random linear gradient plus a
  slow wave pattern, slightly tinted). Near-Gaussian noise (σ 4–10 grey levels) covers the whole
  picture, objects included, after they are painted.
- **Objects**: every foreground class gets one to three objects per image, of random size (about 5 %
  to 20 % of the shorter side as half-size), position (centre inside the image, the rest may be cut
  off by the border), orientation and brightness jitter (±10 %). Objects are painted in random
  order and may overlap: the later object wins, in the mask and in the picture alike, so the mask is
  exactly what was painted. Each class has its own shape *and* its own texture and tint:

  ====  =================================  ==========================================
  cls   shape                              texture / colour
  ====  =================================  ==========================================
  1     ellipse (disc when round)          bright, smooth radial shading, warm white
  2     rectangle                          dark stripes across the long axis, blue
  3     equilateral triangle               black/white checkerboard, neutral grey
  4     ring (annulus)                     flat, mid-bright green
  5     diamond (rhombus)                  polka dots, red
  6     plus-shaped cross                  flat, magenta
  7     hexagon                            concentric rings, cyan
  ====  =================================  ==========================================

With ``num_classes = C`` only classes ``1..C-1`` are painted (2..8 classes are supported).
Textures are defined in the object's own rotated frame, so stripes and checks turn with the object.

Everything is vectorised NumPy, each object drawn on its bounding box only; a 256×256 sample
takes a few milliseconds. :mod:`pipeline.sample_data` writes them as shards.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

Array = np.ndarray
# (u, v, r, b) -> bool region; u, v are coordinates in the object's rotated frame (pixels),
# r is the half-size along u and b the half-size along v.
ShapeFn = Callable[[Array, Array, float, float], Array]
# (u, v, r, rng) -> intensity (0..255 scale) at each of the given coordinates (1-D arrays).
TextureFn = Callable[[Array, Array, float, np.random.Generator], Array]


# ----------------------------------------------------------------------------------------- shapes


def _ellipse(u: Array, v: Array, r: float, b: float) -> Array:
    """Return the region inside the ellipse with half-axes ``r`` (along u) and ``b`` (along v)."""
    return (u / r) ** 2 + (v / b) ** 2 <= 1.0


def _rectangle(u: Array, v: Array, r: float, b: float) -> Array:
    """Return the region inside the rectangle of half-sizes ``r`` × ``b``."""
    return (np.abs(u) <= r) & (np.abs(v) <= b)


def _triangle(u: Array, v: Array, r: float, b: float) -> Array:
    """Return the region inside the equilateral triangle with circumradius ``r`` (``b`` unused)."""
    inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for angle in (0.0, 2.0 * math.pi / 3.0, 4.0 * math.pi / 3.0):  # Python floats keep float32 arrays
        inside &= u * math.cos(angle) + v * math.sin(angle) <= r / 2.0
    return inside


def _ring(u: Array, v: Array, r: float, b: float) -> Array:
    """Return the annulus with outer radius ``r`` and inner radius ``min(0.6 r, r - 2)`` (``b`` unused)."""
    inner = min(0.6 * r, r - 2.0)
    dist2 = u**2 + v**2
    return (dist2 <= r**2) & (dist2 >= inner**2)


def _diamond(u: Array, v: Array, r: float, b: float) -> Array:
    """Return the rhombus with half-diagonals ``r`` (along u) and ``b`` (along v)."""
    return np.abs(u) / r + np.abs(v) / b <= 1.0


def _cross(u: Array, v: Array, r: float, b: float) -> Array:
    """Return a plus sign with arms of half-length ``r`` and half-width ``max(1.5, 0.3 r)``."""
    half_width = max(1.5, 0.3 * r)
    au, av = np.abs(u), np.abs(v)
    return ((au <= half_width) & (av <= r)) | ((au <= r) & (av <= half_width))


def _hexagon(u: Array, v: Array, r: float, b: float) -> Array:
    """Return the regular hexagon with circumradius ``r`` (``b`` unused)."""
    apothem = r * math.cos(math.pi / 6.0)
    inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for angle in (math.pi / 6.0, math.pi / 2.0, 5.0 * math.pi / 6.0):
        inside &= np.abs(u * math.cos(angle) + v * math.sin(angle)) <= apothem
    return inside


# --------------------------------------------------------------------------------------- textures


def _smooth_bright(u: Array, v: Array, r: float, rng: np.random.Generator) -> Array:
    """Return a bright dome: 240 at the centre falling smoothly to about 205 at radius ``r``."""
    return 240.0 - 35.0 * np.minimum((u**2 + v**2) / r**2, 1.0)


def _dark_stripes(u: Array, v: Array, r: float, rng: np.random.Generator) -> Array:
    """Return stripes across ``u`` alternating 35 and 100, with a period of 4–8 px."""
    period = rng.uniform(4.0, 8.0)
    return np.where(np.sin(2.0 * np.pi * u / period) > 0.0, 100.0, 35.0)


def _checkerboard(u: Array, v: Array, r: float, rng: np.random.Generator) -> Array:
    """Return a checkerboard alternating 25 and 235, with square cells of 3–5 px."""
    cell = rng.uniform(3.0, 5.0)
    parity = (np.floor(u / cell) + np.floor(v / cell)) % 2.0
    return 25.0 + 210.0 * parity


def _flat(level: float) -> TextureFn:
    """Return a texture function giving the constant intensity ``level``."""

    def flat(u: Array, v: Array, r: float, rng: np.random.Generator) -> Array:
        """Return ``level`` at every coordinate."""
        return np.full(u.shape, level, dtype=np.float32)

    return flat


def _dots(u: Array, v: Array, r: float, rng: np.random.Generator) -> Array:
    """Return light dots (230) on a darker field (110) on a 5–8 px grid."""
    period = rng.uniform(5.0, 8.0)
    wave = np.cos(2.0 * np.pi * u / period) * np.cos(2.0 * np.pi * v / period)
    return np.where(wave > 0.5, 230.0, 110.0)


def _concentric(u: Array, v: Array, r: float, rng: np.random.Generator) -> Array:
    """Return concentric rings around the centre between 80 and 220, period 4–7 px."""
    period = rng.uniform(4.0, 7.0)
    return 150.0 + 70.0 * np.cos(2.0 * np.pi * np.sqrt(u**2 + v**2) / period)


# ------------------------------------------------------------------------------------ class table


@dataclasses.dataclass(frozen=True)
class _ClassStyle:
    """How one foreground class is drawn: its shape, texture and RGB tint.

    ``reach`` is the radius, in units of the half-size ``r``, of a circle that holds the shape; it
    bounds the box of pixels the shape is evaluated on.
    """

    shape: ShapeFn
    texture: TextureFn
    tint: tuple[float, float, float]
    reach: float = 1.0


# Index i holds class i + 1 (class 0 is the background).
_CLASS_STYLES: tuple[_ClassStyle, ...] = (
    _ClassStyle(_ellipse, _smooth_bright, (1.0, 0.93, 0.78)),
    _ClassStyle(_rectangle, _dark_stripes, (0.65, 0.8, 1.15), reach=math.sqrt(2.0)),
    _ClassStyle(_triangle, _checkerboard, (1.0, 1.0, 1.0)),
    _ClassStyle(_ring, _flat(175.0), (0.55, 1.15, 0.5)),
    _ClassStyle(_diamond, _dots, (1.15, 0.5, 0.45)),
    _ClassStyle(_cross, _flat(170.0), (1.1, 0.45, 1.1), reach=math.sqrt(2.0)),
    _ClassStyle(_hexagon, _concentric, (0.45, 1.05, 1.15)),
)
MAX_CLASSES = len(_CLASS_STYLES) + 1


# ---------------------------------------------------------------------------------------- drawing


NATIVE_COVER = 0.25  # at native scale: the expected fraction of an image the objects cover, all classes together


def synthetic_sample(
    rng: np.random.Generator, height: int, width: int, num_classes: int, object_size: float | None = None,
    instances: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return one synthetic ``(image, mask)`` pair drawn with ``rng``.

    ``image`` is uint8 RGB of shape ``(height, width, 3)``; ``mask`` is uint8 of shape
    ``(height, width)`` holding class indices ``0..num_classes-1`` (0 = background). The scene is
    described in the module docstring. The result depends only on ``rng``'s state and the arguments.

    With ``object_size`` (pixels) the objects have a physical size instead, as under a microscope:
    each spans 0.7 to 1.3 times ``object_size`` across whatever the image's size, and their number
    grows with the image's area (together they cover about ``NATIVE_COVER`` of it), so resizing a
    large image to a small tile shrinks them to nothing.

    ``instances``, an int32 ``(height, width)`` array of zeros, receives each object's label
    (1, 2, ... in painting order, a later object covering an earlier one; an object wholly covered
    leaves its label unused); the draws are the same with or without it.
    """
    _check_sample_arguments(height, width, num_classes)
    canvas = _background(rng, height, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    order = _painting_order(rng, num_classes) if object_size is None else _native_order(
        rng, height, width, num_classes, object_size)
    for number, class_index in enumerate(order, start=1):
        radius = None if object_size is None else rng.uniform(0.35, 0.65) * object_size
        _paint_object(rng, canvas, mask, int(class_index), radius, instances, number)
    canvas += _noise(rng, canvas.shape, sigma=rng.uniform(4.0, 10.0))
    canvas += np.float32(0.5)  # round to nearest on the cast below
    np.clip(canvas, 0.0, 255.0, out=canvas)
    image = canvas.astype(np.uint8)
    return image, mask


def _check_sample_arguments(height: int, width: int, num_classes: int) -> None:
    """Raise ValueError, naming the fix, when a sample cannot be drawn with these arguments."""
    if height < 8 or width < 8:
        raise ValueError(f"sample size {height}x{width} is too small; use at least 8x8 pixels")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes={num_classes}: synthetic samples support 2..{MAX_CLASSES} classes")


def _background(rng: np.random.Generator, height: int, width: int) -> Array:
    """Return the float32 RGB background canvas ``(height, width, 3)``: gradient + slow waves, tinted grey.

    The grey level is a random linear gradient plus the product of one slow sine wave along each
    axis (at most two periods across the image), so it varies smoothly and never looks like an object.
    """
    ys = np.arange(height, dtype=np.float32) / height - 0.5
    xs = np.arange(width, dtype=np.float32) / width - 0.5
    # Python floats (.tolist()) keep the arithmetic in float32; NumPy float64 scalars would promote it.
    grad_y, grad_x = rng.uniform(-40.0, 40.0, size=2).tolist()
    freq_y, freq_x = (2.0 * math.pi * rng.uniform(0.3, 2.0, size=2)).tolist()
    phase_y, phase_x = rng.uniform(0.0, 2.0 * math.pi, size=2).tolist()
    grey = np.add.outer(rng.uniform(95.0, 140.0) + grad_y * ys, grad_x * xs)
    grey += np.multiply.outer(15.0 * np.sin(freq_y * ys + phase_y), np.sin(freq_x * xs + phase_x))
    tint = 1.0 + rng.uniform(-0.06, 0.06, size=3)
    canvas = np.empty((height, width, 3), dtype=np.float32)
    for channel in range(3):  # one contiguous multiply per channel; broadcasting over a last axis of 3 is slow
        np.multiply(grey, np.float32(tint[channel]), out=canvas[:, :, channel])
    return canvas


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> Array:
    """Return float32 zero-mean noise of standard deviation ``sigma``, close to Gaussian.

    Each value is the sum of four uniform random bytes (Irwin-Hall, n = 4: bell-shaped, bounded at
    about ±3.5 sigma). Raw random bits are several times cheaper than ``standard_normal``, whose
    cost would otherwise exceed the rest of the sample.
    """
    count = math.prod(shape)
    raw = rng.bit_generator.random_raw((4 * count + 7) // 8).view(np.uint8)[: 4 * count].reshape(4, count)
    total = raw.sum(axis=0, dtype=np.uint16).astype(np.float32)
    # four uniform bytes: mean 4 * 127.5 = 510, variance 4 * (256**2 - 1) / 12
    total -= np.float32(510.0)
    total *= np.float32(sigma / math.sqrt(4.0 * (256.0**2 - 1.0) / 12.0))
    return total.reshape(shape)


def _painting_order(rng: np.random.Generator, num_classes: int) -> Array:
    """Return the class index of every object to paint, 1–3 per foreground class, in random order."""
    counts = rng.integers(1, 4, size=num_classes - 1)
    order = np.repeat(np.arange(1, num_classes), counts)
    rng.shuffle(order)
    return order


def _native_order(rng: np.random.Generator, height: int, width: int, num_classes: int, object_size: float) -> Array:
    """Return the class index of every object of a native-scale scene: as many per class as cover
    ``NATIVE_COVER`` of the image together (Poisson), in random order."""
    per_class = NATIVE_COVER * height * width / (0.6 * object_size**2 * (num_classes - 1))
    order = np.repeat(np.arange(1, num_classes), rng.poisson(per_class, size=num_classes - 1))
    rng.shuffle(order)
    return order


def _paint_object(rng: np.random.Generator, canvas: Array, mask: Array, class_index: int,
                  radius: float | None = None, instances: Array | None = None, label: int = 0) -> None:
    """Paint one object of ``class_index`` into ``canvas`` (RGB float) and ``mask`` in place (and
    ``label`` into ``instances``, if given); its half-size is ``radius`` pixels, or 5-20 % of the
    image's shorter side."""
    height, width = mask.shape
    style = _CLASS_STYLES[class_index - 1]
    r = radius if radius is not None else max(3.0, rng.uniform(0.05, 0.2) * min(height, width))
    b = r * rng.uniform(0.5, 1.0)
    angle = rng.uniform(0.0, math.pi)
    centre = (rng.uniform(0.0, height), rng.uniform(0.0, width))
    brightness = np.float32(rng.uniform(0.9, 1.1))

    box, u, v = _rotated_frame(mask.shape, centre, angle, reach=r * style.reach)
    region = style.shape(u, v, r, b)
    intensity = style.texture(u[region], v[region], r, rng).astype(np.float32) * brightness
    patch = canvas[box]
    for channel, tint in enumerate(style.tint):  # per channel: fancy assignment over a last axis of 3 is slow
        patch[:, :, channel][region] = intensity * np.float32(tint)
    mask[box][region] = class_index
    if instances is not None:
        instances[box][region] = label


def _rotated_frame(
    shape: tuple[int, int], centre: tuple[float, float], angle: float, reach: float
) -> tuple[tuple[slice, slice], Array, Array]:
    """Return the pixel box within ``reach`` of ``centre`` (clipped to ``shape``) and its rotated coordinates.

    ``u`` and ``v`` are float32 arrays over the box: the pixel centres' offsets from ``centre``,
    rotated by ``-angle`` so that ``u`` runs along the object's own axis.
    """
    (height, width), (cy, cx) = shape, centre
    extent = int(math.ceil(reach)) + 1
    y0, y1 = max(0, int(cy) - extent), min(height, int(cy) + extent + 1)
    x0, x1 = max(0, int(cx) - extent), min(width, int(cx) + extent + 1)
    dy = (np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - cy))[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - cx))[None, :]
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return (slice(y0, y1), slice(x0, x1)), dx * cos + dy * sin, dy * cos - dx * sin
