"""Vectorised rendering: all images of one species at once, analytic shapes evaluated on
a pixel grid.

Images are float32 arrays (3, n, S, S): channels first, so that every blend is a run of
long contiguous loops (a trailing axis of 3 makes numpy ~20x slower per element). Scalars
stay Python floats: a numpy float64 scalar would promote every float32 array to float64.
The layers are drawn back to front; the random draws happen in a fixed order (ground,
clutter, pose, lighting), so a seed gives the same images whatever the code around them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from treeclip.data.synth.look import COLOURS, Look

_INK = (22.0, 18.0, 18.0)
_PAPER = (240.0, 238.0, 230.0)
_RADIUS = 0.42  # the body's radius in object units
_BATCH_PIXELS = 1 << 21  # bounds the float32 temporaries of one render_batch call (~8 MiB each)


def _soft(inside: np.ndarray, px) -> np.ndarray:
    """A signed 'how far inside' (object units) to a 0..1 coverage, ~1 px anti-aliased;
    `px` is pixels per object unit."""
    return np.clip(inside * (px * 0.5) + 0.5, 0.0, 1.0)


def _paint(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """img (3,n,S,S) <- alpha-blend `colour` (3 values, each a scalar or (n,1,1)) where
    alpha (n,S,S) says."""
    for c in range(3):
        ch = img[c]
        ch -= alpha * (ch - colour[c])


def _dist(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return np.sqrt(dx * dx + dy * dy)  # np.hypot is several times slower on float32


def _frac(a: np.ndarray) -> np.ndarray:
    return a - np.floor(a)  # np.mod is several times slower


def _segment_inside(u, v, x0, y0, x1, y1, half_width):
    """Signed distance to a thick segment, positive inside."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((u - x0) * dx + (v - y0) * dy) * (1.0 / (dx * dx + dy * dy)), 0.0, 1.0)
    return half_width - _dist(u - x0 - t * dx, v - y0 - t * dy)


def _cos_lobes(c: np.ndarray, s: np.ndarray, m: int, phase: float) -> np.ndarray:
    """cos(m * phi + phase) from cos(phi), sin(phi) by complex powers (arctan2 is slow)."""
    cm, sm = c, s
    for _ in range(m - 1):
        cm, sm = cm * c - sm * s, cm * s + sm * c
    return cm * math.cos(phase) - sm * math.sin(phase)


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(ink mask, paper mask or None) of a pattern marking in object coordinates."""
    tau = 2 * np.pi
    if kind == "spotted":       # large spots on a lattice
        return (_dist(_frac(u / 0.3) - 0.5, _frac(v / 0.3) - 0.5) < 0.28), None
    if kind == "dotted":        # small dots on a fine lattice
        return (_dist(_frac(u / 0.15) - 0.5, _frac(v / 0.15) - 0.5) < 0.22), None
    if kind == "striped":       # bold stripes across the body
        return np.sin(u * (tau / 0.22)) > 0.35, None
    if kind == "lined":         # thin lines along the body
        return np.abs(np.sin(v * (tau / 0.17))) > 0.92, None
    if kind == "banded":        # a few broad bands
        return np.cos(u * (tau / 0.55)) > 0.55, None
    if kind == "ringed":        # concentric rings
        return np.abs(np.sin(rho * (tau / 0.2))) > 0.8, None
    if kind == "netted":        # a net of thin lines
        return np.minimum(np.abs(np.sin(u * (np.pi / 0.13))), np.abs(np.sin(v * (np.pi / 0.13)))) < 0.22, None
    if kind == "marbled":       # veins
        return np.abs(np.sin(7 * u + 3 * np.sin(5 * v))) < 0.25, None
    if kind == "variegated":    # dark and pale patches
        f = np.sin(5.5 * u + 0.7) * np.sin(6.5 * v + 1.3)
        return f < -0.3, f > 0.3
    if kind == "checkered":
        return np.sin(u * (np.pi / 0.16)) * np.sin(v * (np.pi / 0.16)) > 0, None
    if kind == "wavy":          # wavy lines
        return np.sin((v + 0.07 * np.sin(u * (tau / 0.3))) * (tau / 0.2)) > 0.6, None
    raise ValueError(f"unknown pattern {kind!r}")


_NOISE_BANKS: dict[int, np.ndarray] = {}


def _noise_bank(size: int) -> np.ndarray:
    """A fixed field of unit Gaussian noise (3, 2S, 2S) that images take random windows
    of: drawing fresh noise for every pixel would cost more than the drawing itself."""
    if size not in _NOISE_BANKS:
        _NOISE_BANKS[size] = np.random.default_rng(12345).standard_normal((3, 2 * size, 2 * size), np.float32)
    return _NOISE_BANKS[size]


@dataclass
class _Canvas:
    """A batch of `n` images being drawn, and the pixel grid in [-1, 1] image units."""

    img: np.ndarray  # (3, n, S, S) float32
    x: np.ndarray    # (1, 1, S)
    y: np.ndarray    # (1, S, 1)
    n: int
    size: int

    def col(self, a) -> np.ndarray:
        """Per-image scalars as (n, 1, 1) float32, to broadcast over the grid."""
        return np.asarray(a, np.float32).reshape(self.n, 1, 1)


@dataclass
class _Pose:
    """The organism's own coordinates after shift, scale and rotation."""

    u: np.ndarray
    v: np.ndarray
    px: np.ndarray  # pixels per object unit, for anti-aliasing


def _canvas(n: int, size: int) -> _Canvas:
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return _Canvas(np.empty((3, n, size, size), np.float32), axis[None, None, :], axis[None, :, None], n, size)


def _draw_ground(cv: _Canvas, look: Look, rng: np.random.Generator) -> None:
    """Ground (kingdom): a two-tone gradient whose direction jitters a little per image."""
    c1, c2, angle = look.ground
    a = rng.normal(angle, 0.35, cv.n)
    t = np.clip(0.5 + 0.5 * (cv.x * cv.col(np.cos(a)) + cv.y * cv.col(np.sin(a))), 0, 1)
    for c in range(3):
        cv.img[c] = c1[c] + (c2[c] - c1[c]) * t


def _draw_clutter(cv: _Canvas, rng: np.random.Generator) -> None:
    """Clutter: up to four random discs and bars in random colours."""
    n, x, y, col = cv.n, cv.x, cv.y, cv.col
    for _ in range(4):
        on = col(rng.random(n) < 0.6)
        cx, cy, r = col(rng.uniform(-1, 1, n)), col(rng.uniform(-1, 1, n)), col(rng.uniform(0.06, 0.2, n))
        colour = [col(rng.uniform(0, 255, n)) for _ in range(3)]
        if rng.random() < 0.5:
            inside = r - _dist(x - cx, y - cy)
        else:
            ang = rng.uniform(0, np.pi, n)
            inside = _segment_inside(x, y, cx, cy, cx + 2.5 * r * col(np.cos(ang)), cy + 2.5 * r * col(np.sin(ang)),
                                     r * 0.3)
        _paint(cv.img, _soft(inside, cv.size) * on, colour)


def _draw_pose(cv: _Canvas, rng: np.random.Generator) -> _Pose:
    n, col = cv.n, cv.col
    cx, cy = col(rng.uniform(-0.15, 0.15, n)), col(rng.uniform(-0.15, 0.15, n))
    scale = rng.uniform(0.75, 1.05, n)
    theta = rng.uniform(0, 2 * np.pi, n)
    ct, st = col(np.cos(theta) / scale), col(np.sin(theta) / scale)
    u = (cv.x - cx) * ct + (cv.y - cy) * st
    v = (cv.y - cy) * ct - (cv.x - cx) * st
    return _Pose(u, v, col(cv.size * scale))


def _draw_appendages(cv: _Canvas, look: Look, pose: _Pose) -> None:
    """Appendages (order), drawn before the body so that it covers their roots."""
    count, bilateral, length, width, knobs, phase = look.appendages
    elong = look.plan[0]
    u, v = pose.u, pose.v
    limbs = None  # one coverage for all appendages (one colour): a single blend, not one each
    for i in range(count):
        if bilateral:  # pairs mirrored across the long axis
            k, side = divmod(i, 2)
            spread = (k + 1) / (count // 2 + 1) * np.pi
            ang = spread if side == 0 else -spread
        else:
            ang = phase + 2 * np.pi * i / count
        reach = _RADIUS * elong + length
        ex, ey = reach * math.cos(ang), reach * math.sin(ang) / elong**0.5
        inside = _segment_inside(u, v, 0.0, 0.0, ex, ey, width)
        if knobs:
            inside = np.maximum(inside, 1.6 * width - _dist(u - ex, v - ey))
        limbs = inside if limbs is None else np.maximum(limbs, inside)
    if limbs is not None:
        _paint(cv.img, _soft(limbs, pose.px), look.body * 0.45)


def _draw_body(cv: _Canvas, look: Look, pose: _Pose) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Body plan (phylum) in body colour (family), with the class's fine texture; returns
    (u / elongation, radius rho, edge radius, body coverage) for the marking."""
    elong, lobes, depth, lobe_phase = look.plan
    u, v = pose.u, pose.v
    ue = u * (1.0 / elong)
    rho = _dist(ue, v)
    if lobes:
        inv = 1.0 / np.maximum(rho, 1e-6)
        edge = _RADIUS * (1.0 + depth * _cos_lobes(ue * inv, v * inv, lobes, lobe_phase))
    else:
        edge = np.float32(_RADIUS)
    body_alpha = _soft(edge - rho, pose.px)
    kind, freq, tex_angle, amp = look.texture
    w = 2 * np.pi * freq
    if kind == 0:
        wave = np.sin(u * (w * math.cos(tex_angle)) + v * (w * math.sin(tex_angle)))
    elif kind == 1:
        wave = np.sin(u * w) * np.sin(v * w)
    else:
        wave = np.sin(rho * w)
    shade = 1.0 + amp * wave
    _paint(cv.img, body_alpha, [np.clip(look.body[c] * shade, 0, 255) for c in range(3)])
    return ue, rho, edge, body_alpha


def _draw_marking(cv: _Canvas, look: Look, pose: _Pose, body: tuple) -> None:
    """Species marking, clipped to the body: a colour patch or an ink pattern."""
    ue, rho, edge, body_alpha = body
    px = pose.px
    if look.marking in COLOURS:
        du = (ue - 0.06) * (1 / 1.2)
        inside = 0.15 - _dist(du, pose.v)
        _paint(cv.img, _soft(inside + 0.035, px) * body_alpha, _INK)  # a dark rim: visible on any body
        _paint(cv.img, _soft(inside, px) * body_alpha, COLOURS[look.marking])
    else:
        ink, paper = _pattern(look.marking, pose.u, pose.v, rho)
        inner = _soft(0.7 * edge - rho, px)  # leave a rim of body colour
        if paper is not None:
            _paint(cv.img, paper * inner, _PAPER)
        _paint(cv.img, ink * inner, _INK)


def _draw_second(cv: _Canvas, look: Look, pose: _Pose) -> None:
    """Secondary shape (genus) on the body's edge."""
    kind2, ang2, size2, colour2 = look.second
    elong = look.plan[0]
    sx, sy = 0.85 * _RADIUS * elong * math.cos(ang2), 0.85 * _RADIUS * math.sin(ang2)
    du, dv = pose.u - sx, pose.v - sy
    if kind2 == 0:
        inside = size2 - _dist(du, dv)
    elif kind2 == 1:
        inside = size2 * 0.85 - np.maximum(np.abs(du), np.abs(dv))
    elif kind2 == 2:
        inside = size2 * 0.9 - (np.abs(du) + np.abs(dv))
    else:  # triangle pointing outward
        ca, sa = math.cos(ang2), math.sin(ang2)
        r_, t_ = du * ca + dv * sa, dv * ca - du * sa
        inside = np.minimum(size2 * 0.5 + r_, size2 * 0.9 - r_ - 1.7 * np.abs(t_))
    _paint(cv.img, _soft(inside, pose.px), colour2)


def _light_and_noise(cv: _Canvas, rng: np.random.Generator) -> None:
    """Lighting: gain, colour cast and a linear gradient; then sensor noise."""
    n, size, col, img = cv.n, cv.size, cv.col, cv.img
    gain = rng.uniform(0.7, 1.25, n)[None, :] * rng.uniform(0.9, 1.1, (3, n))
    la = rng.uniform(0, 2 * np.pi, n)
    light = 1.0 + col(rng.uniform(0, 0.25, n)) * (cv.x * col(np.cos(la)) + cv.y * col(np.sin(la)))
    sigma = rng.uniform(2.0, 10.0, n)
    bank = _noise_bank(size)
    offsets = rng.integers(0, size, (n, 2))
    for c in range(3):
        img[c] *= light * col(gain[c])
    for i, (oy, ox) in enumerate(offsets):
        img[:, i] += bank[:, oy:oy + size, ox:ox + size] * np.float32(sigma[i])


def render_batch(look: Look, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `n` images of one species: (n, size, size, 3) uint8, nuisance drawn from `rng`."""
    cv = _canvas(n, size)
    _draw_ground(cv, look, rng)
    _draw_clutter(cv, rng)
    pose = _draw_pose(cv, rng)
    _draw_appendages(cv, look, pose)
    body = _draw_body(cv, look, pose)
    _draw_marking(cv, look, pose, body)
    _draw_second(cv, look, pose)
    _light_and_noise(cv, rng)
    np.clip(cv.img, 0, 255, out=cv.img)
    return np.ascontiguousarray(cv.img.astype(np.uint8).transpose(1, 2, 3, 0))


def render_stream(look: Look, n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """`n` images in batches small enough for memory; the batch size depends only on
    `size`, so the images do not depend on anything but the seed."""
    step = max(1, _BATCH_PIXELS // (size * size))
    for start in range(0, n, step):
        yield from render_batch(look, min(step, n - start), size, rng)


def encode_pixels(pixels: np.ndarray, quality: int) -> bytes:
    """(S, S, 3) uint8 pixels as JPEG bytes."""
    from PIL import Image

    from treeclip.data.images import encode_jpeg

    return encode_jpeg(Image.fromarray(pixels), quality=quality)
