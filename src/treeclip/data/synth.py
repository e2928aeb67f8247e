"""The synthetic tree of life: real NCBI species, pictures drawn from their lineage.

No real image collection can be downloaded here, so treeclip ships a generator whose
*names* are real (the pre-resolved NCBI table of `synth_names`) and whose *images* follow
the names, so that BioCLIP's hypothesis -- text about the whole lineage helps recognise
taxa never seen -- can be tested honestly on a CPU.

Each rank contributes one visual attribute, derived from a hash of its name alone (so a
taxon looks the same whatever else is generated with it):

    kingdom -> ground (two-tone background gradient)
    phylum  -> body plan (elongation, number and depth of lobes)
    class   -> fine texture on the body (grating, checks or rings; frequency, angle)
    order   -> appendages (count, layout, length, width, tip knobs)
    family  -> body colour
    genus   -> a secondary shape (kind, place on the body, size, colour)
    species -> a marking that says what the epithet says: a colour epithet (`rubra`)
               gives a patch of that colour, a pattern epithet (`striata`) gives that
               pattern. The meaning comes from the epithet's vocabulary, not its hash.

So relatives look partly alike, and an unseen species (its genus and its epithet each
seen elsewhere) is predictable from its name. Nuisance variation -- position, scale,
rotation, background clutter, lighting (gain, colour cast, gradient) and pixel noise --
keeps any single pixel statistic from giving the answer.

Rendering is vectorised with numpy over all images of one species at once (analytic shapes
evaluated on a pixel grid), and species are spread over worker processes; see
docs/synth.md for the layout of the output and benchmarks/synth_benchmark.py for speed.
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import json
import math
import os
import shutil
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from treeclip.data.synth_names import TABLE_PATH, read_table
from treeclip.errors import TreeclipError
from treeclip.fsutil import write_json_atomic, write_text_atomic
from treeclip.taxonomy.taxon import RANKS, Taxon

# The evaluation sets, written as task folders under OUT/tasks/.
TASKS = {
    "seen": ("synth-seen", "Synthetic tree of life: new images of species seen in training"),
    "unseen": ("synth-unseen", "Synthetic tree of life: species never seen in training "
                               "(their genera and epithets were, in other combinations)"),
    "unseen_genus": ("synth-unseen-genus", "Synthetic tree of life: species of genera never seen in "
                                           "training (their families were)"),
}

# Colour meanings: the RGB of the marking patch.
COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 240), "black": (18, 18, 18), "red": (205, 25, 30), "yellow": (245, 225, 30),
    "gold": (205, 150, 20), "orange": (245, 125, 15), "green": (30, 165, 50), "blue": (35, 75, 215),
    "glaucous": (125, 170, 190), "purple": (125, 35, 165), "pink": (245, 145, 190), "brown": (115, 70, 30),
    "grey": (135, 135, 135),
}
# Pattern meanings: drawn on the body in a near-black ink.
PATTERNS: tuple[str, ...] = ("spotted", "dotted", "striped", "lined", "banded", "ringed", "netted",
                             "marbled", "variegated", "checkered", "wavy")
_INK = (22.0, 18.0, 18.0)
_PAPER = (240.0, 238.0, 230.0)


@dataclass(frozen=True)
class SynthConfig:
    """Options of `synthesize` (all deterministic given `seed`)."""

    species: int = 0
    """How many species of the shipped table to use (0 = all of them)."""
    images_per_species: int = 40
    """Training images per seen species (its val share included)."""
    eval_images_per_species: int = 20
    """Images per species in each evaluation set."""
    image_size: int = 64
    unseen_fraction: float = 0.2
    """Share of species held out as unseen species of seen genera."""
    unseen_genus_fraction: float = 0.1
    """Share of species held out as whole unseen genera (of seen families)."""
    val_fraction: float = 0.05
    """Share of each seen species' training images put in the dataset's val split."""
    seed: int = 0
    jpeg_quality: int = 95
    workers: int = 1
    """Processes that render (the output does not depend on it)."""

    def check(self) -> None:
        if self.species < 0 or self.images_per_species < 1 or self.eval_images_per_species < 1:
            raise TreeclipError("synth: --species must be >= 0 and images per species >= 1")
        if not 16 <= self.image_size <= 1024:
            raise TreeclipError(f"synth: image size must be 16..1024 px, got {self.image_size}")
        for name in ("unseen_fraction", "unseen_genus_fraction", "val_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise TreeclipError(f"synth: {name.replace('_', '-')} must be in [0, 1)")


# -- attributes from names ---------------------------------------------------------------
def name_hash(rank: str, name: str, salt: str = "") -> float:
    """A uniform number in [0, 1) from a rank's name: stable across processes and runs
    (unlike Python's salted `hash`)."""
    digest = hashlib.blake2b(f"{rank}:{name}:{salt}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


@dataclass(frozen=True)
class Look:
    """The rank attributes of one species, each a function of one rank's name."""

    ground: tuple[np.ndarray, np.ndarray, float]        # kingdom: two colours, gradient angle
    plan: tuple[float, int, float, float]               # phylum: elongation, lobes, lobe depth, phase
    texture: tuple[int, float, float, float]            # class: kind, frequency, angle, amplitude
    appendages: tuple[int, bool, float, float, bool, float]  # order: n, bilateral, length, width, knobs, phase
    body: np.ndarray                                    # family: RGB
    second: tuple[int, float, float, np.ndarray]        # genus: kind, angle on body, size, RGB
    marking: str                                        # species: the epithet's meaning


def look_of(taxon: Taxon, meaning: str) -> Look:
    """Derive a species' look from its lineage names and its epithet's meaning."""
    h = lambda rank, salt: name_hash(rank, taxon[rank], salt)  # noqa: E731
    hue = h("kingdom", "hue")
    ground = (_hsv(hue, 0.35, 0.80), _hsv(hue + 0.12, 0.45, 0.50), 2 * np.pi * h("kingdom", "angle"))
    lobes = (0, 2, 3, 4, 5, 6, 7)[int(h("phylum", "lobes") * 7)]
    plan = (1.0 + 0.8 * h("phylum", "elong"), lobes, 0.12 + 0.18 * h("phylum", "depth") if lobes else 0.0,
            2 * np.pi * h("phylum", "phase"))
    texture = (int(h("class", "kind") * 3), 3.5 + 5.0 * h("class", "freq"), np.pi * h("class", "angle"),
               0.12 + 0.14 * h("class", "amp"))
    appendages = ((0, 2, 3, 4, 5, 6, 8)[int(h("order", "n") * 7)], h("order", "bilateral") < 0.5,
                  0.18 + 0.30 * h("order", "len"), 0.035 + 0.04 * h("order", "width"), h("order", "knob") < 0.4,
                  2 * np.pi * h("order", "phase"))
    body = _hsv(h("family", "hue"), 0.45 + 0.4 * h("family", "sat"), 0.55 + 0.3 * h("family", "val"))
    second = (int(h("genus", "kind") * 4), 2 * np.pi * h("genus", "angle"), 0.13 + 0.10 * h("genus", "size"),
              _hsv(h("genus", "hue"), 0.5 + 0.45 * h("genus", "sat"), 0.35 + 0.6 * h("genus", "val")))
    if meaning not in COLOURS and meaning not in PATTERNS:
        raise ValueError(f"unknown epithet meaning {meaning!r}")
    return Look(ground, plan, texture, appendages, body, second, meaning)


# -- vectorised rendering ----------------------------------------------------------------
# Images are float32 arrays (3, n, S, S): channels first, so that every blend is a run of
# long contiguous loops (a trailing axis of 3 makes numpy ~20x slower per element). Scalars
# stay Python floats: a numpy float64 scalar would promote every float32 array to float64.


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


def render_batch(look: Look, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `n` images of one species: (n, size, size, 3) uint8, nuisance drawn from `rng`."""
    f32 = np.float32
    col = lambda a: np.asarray(a, f32).reshape(n, 1, 1)  # noqa: E731  per-image scalars
    axis = (np.arange(size, dtype=f32) + 0.5) / size * 2.0 - 1.0
    x, y = axis[None, None, :], axis[None, :, None]
    img = np.empty((3, n, size, size), f32)

    # Ground (kingdom): a two-tone gradient whose direction jitters a little per image.
    c1, c2, angle = look.ground
    a = rng.normal(angle, 0.35, n)
    t = np.clip(0.5 + 0.5 * (x * col(np.cos(a)) + y * col(np.sin(a))), 0, 1)
    for c in range(3):
        img[c] = c1[c] + (c2[c] - c1[c]) * t

    # Clutter: up to four random discs and bars in random colours.
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
        _paint(img, _soft(inside, size) * on, colour)

    # Pose: the organism's own coordinates (u, v) after shift, scale and rotation.
    cx, cy = col(rng.uniform(-0.15, 0.15, n)), col(rng.uniform(-0.15, 0.15, n))
    scale = rng.uniform(0.75, 1.05, n)
    theta = rng.uniform(0, 2 * np.pi, n)
    ct, st = col(np.cos(theta) / scale), col(np.sin(theta) / scale)
    u = (x - cx) * ct + (y - cy) * st
    v = (y - cy) * ct - (x - cx) * st
    px = col(size * scale)  # pixels per object unit, for anti-aliasing

    # Appendages (order), drawn first so the body covers their roots.
    count, bilateral, length, width, knobs, phase = look.appendages
    elong, lobes, depth, lobe_phase = look.plan
    radius = 0.42
    limbs = None  # one coverage for all appendages (one colour): a single blend, not one each
    for i in range(count):
        if bilateral:  # pairs mirrored across the long axis
            k, side = divmod(i, 2)
            spread = (k + 1) / (count // 2 + 1) * np.pi
            ang = spread if side == 0 else -spread
        else:
            ang = phase + 2 * np.pi * i / count
        reach = radius * elong + length
        ex, ey = reach * math.cos(ang), reach * math.sin(ang) / elong**0.5
        inside = _segment_inside(u, v, 0.0, 0.0, ex, ey, width)
        if knobs:
            inside = np.maximum(inside, 1.6 * width - _dist(u - ex, v - ey))
        limbs = inside if limbs is None else np.maximum(limbs, inside)
    if limbs is not None:
        _paint(img, _soft(limbs, px), look.body * 0.45)

    # Body plan (phylum) in body colour (family), with the class's fine texture.
    ue = u * (1.0 / elong)
    rho = _dist(ue, v)
    if lobes:
        inv = 1.0 / np.maximum(rho, 1e-6)
        edge = radius * (1.0 + depth * _cos_lobes(ue * inv, v * inv, lobes, lobe_phase))
    else:
        edge = np.float32(radius)
    body_alpha = _soft(edge - rho, px)
    kind, freq, tex_angle, amp = look.texture
    w = 2 * np.pi * freq
    if kind == 0:
        wave = np.sin(u * (w * math.cos(tex_angle)) + v * (w * math.sin(tex_angle)))
    elif kind == 1:
        wave = np.sin(u * w) * np.sin(v * w)
    else:
        wave = np.sin(rho * w)
    shade = 1.0 + amp * wave
    _paint(img, body_alpha, [np.clip(look.body[c] * shade, 0, 255) for c in range(3)])

    # Species marking, clipped to the body: a colour patch or an ink pattern.
    if look.marking in COLOURS:
        du = (ue - 0.06) * (1 / 1.2)
        inside = 0.15 - _dist(du, v)
        _paint(img, _soft(inside + 0.035, px) * body_alpha, _INK)  # a dark rim: visible on any body
        _paint(img, _soft(inside, px) * body_alpha, COLOURS[look.marking])
    else:
        ink, paper = _pattern(look.marking, u, v, rho)
        inner = _soft(0.7 * edge - rho, px)  # leave a rim of body colour
        if paper is not None:
            _paint(img, paper * inner, _PAPER)
        _paint(img, ink * inner, _INK)

    # Secondary shape (genus) on the body's edge.
    kind2, ang2, size2, colour2 = look.second
    sx, sy = 0.85 * radius * elong * math.cos(ang2), 0.85 * radius * math.sin(ang2)
    du, dv = u - sx, v - sy
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
    _paint(img, _soft(inside, px), colour2)

    # Lighting: gain, colour cast and a linear gradient; then sensor noise.
    gain = rng.uniform(0.7, 1.25, n)[None, :] * rng.uniform(0.9, 1.1, (3, n))
    la = rng.uniform(0, 2 * np.pi, n)
    light = 1.0 + col(rng.uniform(0, 0.25, n)) * (x * col(np.cos(la)) + y * col(np.sin(la)))
    sigma = rng.uniform(2.0, 10.0, n)
    bank = _noise_bank(size)
    offsets = rng.integers(0, size, (n, 2))
    for c in range(3):
        img[c] *= light * col(gain[c])
    for i, (oy, ox) in enumerate(offsets):
        img[:, i] += bank[:, oy:oy + size, ox:ox + size] * f32(sigma[i])
    np.clip(img, 0, 255, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 3, 0))


# -- species, splits ---------------------------------------------------------------------
@dataclass(frozen=True)
class Species:
    taxon: Taxon
    meaning: str
    ncbi_taxid: int


def load_species(table: str | Path = TABLE_PATH) -> list[Species]:
    """The shipped species table as Species (NCBI taxid, Taxon, epithet meaning)."""
    return [Species(taxon, meaning, taxid) for taxid, taxon, meaning in read_table(table)]


def select_species(pool: Sequence[Species], n: int, rng: np.random.Generator) -> list[Species]:
    """`n` species (all if n is 0 or more than the pool), taken whole family by whole family,
    the kingdoms in turn, so even a small selection spans kingdoms and keeps relatives."""
    if n <= 0 or n >= len(pool):
        return list(pool)
    by_kingdom: dict[str, dict[str, list[Species]]] = {}
    for sp in pool:
        by_kingdom.setdefault(sp.taxon.kingdom, {}).setdefault(sp.taxon.family, []).append(sp)
    queues = []
    for kingdom in sorted(by_kingdom):
        families = sorted(by_kingdom[kingdom])
        queues.append([by_kingdom[kingdom][families[i]] for i in rng.permutation(len(families))])
    chosen: list[Species] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.extend(q.pop(0)[: n - len(chosen)])
    return chosen


def assign_roles(species: Sequence[Species], cfg: SynthConfig, rng: np.random.Generator) -> dict[Taxon, str]:
    """Each species' role: `seen`, `unseen` or `unseen_genus`.

    Unseen genera are whole genera held out from families that keep another genus in
    training. Unseen species are held out only while their genus keeps a training species
    and their exact epithet is carried by a training species of another genus, so their
    name is made of parts seen in other combinations.
    """
    n = len(species)
    role = {sp.taxon: "seen" for sp in species}
    genera: dict[tuple, list[Species]] = {}
    for sp in species:
        genera.setdefault(sp.taxon.lineage[:6], []).append(sp)
    family_genera: dict[tuple, int] = {}
    for g in genera:
        family_genera[g[:5]] = family_genera.get(g[:5], 0) + 1

    held, target = 0, round(cfg.unseen_genus_fraction * n)
    order = sorted(genera)
    for i in rng.permutation(len(order)):
        g = order[i]
        if held >= target:
            break
        if family_genera[g[:5]] >= 2 and held + len(genera[g]) <= max(target, 1) * 1.5:
            family_genera[g[:5]] -= 1
            for sp in genera[g]:
                role[sp.taxon] = "unseen_genus"
            held += len(genera[g])

    seen = [sp for sp in species if role[sp.taxon] == "seen"]
    per_genus: dict[tuple, int] = {}  # genera keyed by lineage: a genus name can be a homonym
    per_epithet: dict[str, set[tuple]] = {}
    for sp in seen:
        g = sp.taxon.lineage[:6]
        per_genus[g] = per_genus.get(g, 0) + 1
        per_epithet.setdefault(sp.taxon.species, set()).add(g)
    held, target = 0, round(cfg.unseen_fraction * n)
    for i in rng.permutation(len(seen)):
        if held >= target:
            break
        sp = seen[i]
        g, e = sp.taxon.lineage[:6], sp.taxon.species
        if per_genus[g] >= 2 and len(per_epithet[e] - {g}) >= 1:
            role[sp.taxon] = "unseen"
            per_genus[g] -= 1
            per_epithet[e].discard(g)
            held += 1
    return role


# -- jobs: one species, one role, rendered in a worker -----------------------------------
@dataclass
class _Job:
    index: int
    species: Species
    role: str
    n_train: int
    n_eval: int
    size: int
    seed: int
    quality: int


@dataclass
class _Rendered:
    index: int
    train: list[tuple[bytes, str, str]] = field(default_factory=list)  # (jpeg, sha256, phash)
    eval: list[bytes] = field(default_factory=list)


def species_key(taxon: Taxon) -> str:
    """`Genus_epithet`: a folder and key stem with no dots or spaces."""
    return f"{taxon.genus}_{taxon.species}".replace(" ", "_").replace(".", "")


def _rng(seed: int, taxon: Taxon, stream: int) -> np.random.Generator:
    # Each species and stream gets its own generator: output independent of worker count.
    return np.random.default_rng([seed, zlib.crc32(taxon.taxonomic_name.encode("utf-8")), stream])


def _encode(pixels: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _render_job(job: _Job) -> _Rendered:
    from treeclip.data.dataset import image_hashes

    look = look_of(job.species.taxon, job.species.meaning)
    out = _Rendered(job.index)
    for px in _render_stream(look, job.n_train, job.size, _rng(job.seed, job.species.taxon, 0)):
        jpeg = _encode(px, job.quality)
        h = image_hashes(jpeg)
        out.train.append((jpeg, h["sha256"], h["phash"]))
    stream = 1 if job.role == "seen" else 2
    for px in _render_stream(look, job.n_eval, job.size, _rng(job.seed, job.species.taxon, stream)):
        out.eval.append(_encode(px, job.quality))
    return out


_BATCH_PIXELS = 1 << 21  # bounds the float32 temporaries of one render_batch call (~8 MiB each)


def _render_stream(look: Look, n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """`n` images in batches small enough for memory; the batch size depends only on
    `size`, so the images do not depend on anything but the seed."""
    step = max(1, _BATCH_PIXELS // (size * size))
    for start in range(0, n, step):
        yield from render_batch(look, min(step, n - start), size, rng)


def _run_jobs(jobs: list[_Job], workers: int) -> Iterator[_Rendered]:
    """Render jobs in order (imap keeps it), in `workers` processes."""
    if workers <= 1:
        yield from map(_render_job, jobs)
        return
    import multiprocessing as mp

    with mp.get_context("fork" if sys.platform != "win32" else "spawn").Pool(workers) as pool:
        yield from pool.imap(_render_job, jobs, chunksize=1)


# -- output ------------------------------------------------------------------------------
class _TaskWriter:
    """An evaluation set as a task folder (task.toml + catalog.csv + images/), built in a
    temporary folder and renamed into place when complete."""

    def __init__(self, root: Path, role: str) -> None:
        self.name, self.description = TASKS[role]
        self.final = root / self.name
        self.tmp = root / f".{self.name}.tmp"
        shutil.rmtree(self.tmp, ignore_errors=True)
        (self.tmp / "images").mkdir(parents=True)
        self.rows: list[dict] = []
        self.species: set[Taxon] = set()

    def add(self, taxon: Taxon, images: list[bytes]) -> None:
        stem = species_key(taxon)
        folder = self.tmp / "images" / stem
        folder.mkdir(exist_ok=True)
        self.species.add(taxon)
        for i, jpeg in enumerate(images):
            rel = f"images/{stem}/{stem}_{i:04d}.jpg"
            (self.tmp / rel).write_bytes(jpeg)
            self.rows.append({"path": rel, **taxon.as_dict()})

    def close(self) -> dict:
        if not self.rows:  # e.g. --unseen-fraction 0: no task rather than an empty one
            shutil.rmtree(self.tmp, ignore_errors=True)
            shutil.rmtree(self.final, ignore_errors=True)
            return {"path": None, "species": 0, "images": 0}
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["path", *RANKS, "common"], lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        write_text_atomic(self.tmp / "catalog.csv", buf.getvalue())
        write_text_atomic(self.tmp / "task.toml", (
            f'name = "{self.name}"\ndescription = "{self.description}"\n\n'
            '[images]\ncatalog = "catalog.csv"\nroot = "."\n\n[classes]\nrank = "species"\n'))
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        return {"path": str(self.final), "species": len(self.species), "images": len(self.rows)}


def _table_digest() -> str:
    return hashlib.sha256(TABLE_PATH.read_bytes()).hexdigest()


def synthesize(out_dir: str | os.PathLike, config: SynthConfig = SynthConfig(), *, progress: bool = False) -> dict:
    """Generate the synthetic tree of life into `out_dir` and return a summary.

    `out_dir` becomes a dataset dir (train/val shards of the seen species) plus
    `tasks/synth-seen`, `tasks/synth-unseen`, `tasks/synth-unseen-genus` (task folders)
    and `synth.json` (the summary). A finished output with the same config and table is
    kept as it is (the summary is returned); anything else is regenerated.
    """
    from treeclip.data.dataset import Sample, write_dataset

    config.check()
    out = Path(out_dir)
    summary_path = out / "synth.json"
    settings = {k: v for k, v in asdict(config).items() if k != "workers"}
    if summary_path.exists() and (out / "manifest.json").exists():
        try:
            done = json.loads(summary_path.read_text(encoding="utf-8"))
        except ValueError:
            done = {}
        complete = all(t["path"] is None or (out / t["path"] / "task.toml").exists()
                       for t in done.get("tasks", {}).values())
        if done.get("config") == settings and done.get("table_sha256") == _table_digest() and complete:
            return {**done, "skipped": True}

    # synth.json vouches for a finished output: drop it first, so a run killed halfway
    # never leaves it describing files that are no longer what it says.
    summary_path.unlink(missing_ok=True)
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    species = select_species(load_species(), config.species, rng)
    roles = assign_roles(species, config, rng)
    seen = [sp for sp in species if roles[sp.taxon] == "seen"]
    if not seen:
        raise TreeclipError("synth: no species left for training; lower the unseen fractions or raise --species")
    n_val = int(round(config.val_fraction * config.images_per_species))
    jobs = [_Job(i, sp, roles[sp.taxon], config.images_per_species if roles[sp.taxon] == "seen" else 0,
                 config.eval_images_per_species, config.image_size, config.seed, config.jpeg_quality)
            for i, sp in enumerate(species)]
    tasks_root = out / "tasks"
    writers = {role: _TaskWriter(tasks_root, role) for role in TASKS}

    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(j.n_train + j.n_eval for j in jobs)
        bar = tqdm(total=total, desc="synth", unit="img", dynamic_ncols=True, file=sys.stderr)

    def samples() -> Iterator[Sample]:
        for done in _run_jobs(jobs, config.workers):
            sp = jobs[done.index].species
            writers[roles[sp.taxon]].add(sp.taxon, done.eval)
            stem = species_key(sp.taxon)
            for i, (jpeg, sha, ph) in enumerate(done.train):
                split = "val" if i >= config.images_per_species - n_val else "train"
                yield Sample(f"{stem}_{i:04d}", jpeg, sp.taxon, split, source="synth",
                             source_id=f"ncbi:{sp.ncbi_taxid}", extra={"sha256": sha, "phash": ph})
            if bar is not None:
                bar.update(len(done.train) + len(done.eval))

    build_info = {"generator": "treeclip.data.synth", "config": settings, "table": TABLE_PATH.name,
                  "table_sha256": _table_digest()}
    try:
        manifest = write_dataset(samples(), out, taxa=[sp.taxon for sp in seen], build_info=build_info)
    finally:
        if bar is not None:
            bar.close()
    tasks = {TASKS[role][0]: w.close() for role, w in writers.items()}
    for t in tasks.values():
        t["path"] = t["path"] and os.path.relpath(t["path"], out)
    summary = {
        "config": settings,
        "table_sha256": _table_digest(),
        "species": len(species),
        "kingdoms": sorted({sp.taxon.kingdom for sp in species}),
        "taxa_per_rank": {r: len({sp.taxon.lineage[: i + 1] for sp in species}) for i, r in enumerate(RANKS)},
        "roles": {r: sum(1 for x in roles.values() if x == r) for r in ("seen", "unseen", "unseen_genus")},
        "unseen_genera": len({sp.taxon.genus for sp in species if roles[sp.taxon] == "unseen_genus"}),
        "dataset": {s: manifest["splits"][s]["n_samples"] for s in manifest["splits"]},
        "tasks": tasks,
    }
    write_json_atomic(summary_path, summary)
    seconds = time.perf_counter() - started
    n_images = sum(summary["dataset"].values()) + sum(t["images"] for t in tasks.values())
    return {**summary, "seconds": seconds, "images_per_second": n_images / max(seconds, 1e-9)}
