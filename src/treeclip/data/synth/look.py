"""How a species looks: one visual attribute per rank, each derived from a hash of that
rank's name alone (so a taxon looks the same whatever else is generated with it), and a
species marking that says what the epithet says."""

from __future__ import annotations

import colorsys
import hashlib
from dataclasses import dataclass

import numpy as np

from treeclip.taxonomy.taxon import Taxon

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
