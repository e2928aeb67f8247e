"""Zero-shot prompt templates as data.

`OPENAI_IMAGENET_TEMPLATES` are the 80 templates of OpenAI's CLIP ImageNet evaluation;
`BIOCLIP_TEMPLATES` puts BioCLIP's plain `a photo of {}.` first, 81 in all. Templates
use `{}` for the class name.
"""

from __future__ import annotations

from pathlib import Path

OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.",
    "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "the plushie {}.", "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.",
    "a toy {}.", "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "a tattoo of the {}.",
)

BIOCLIP_TEMPLATES: tuple[str, ...] = ("a photo of {}.",) + OPENAI_IMAGENET_TEMPLATES

SINGLE_TEMPLATE: tuple[str, ...] = ("a photo of {}.",)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "bioclip": BIOCLIP_TEMPLATES,
    "openai": OPENAI_IMAGENET_TEMPLATES,
    "single": SINGLE_TEMPLATE,
}


def load_templates(spec: str) -> tuple[str, ...]:
    """A named template set (`bioclip`, `openai`, `single`) or a text file with one
    template per line, each containing `{}` once."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"{spec}: not a template set ({', '.join(TEMPLATE_SETS)}) nor a file")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    bad = [ln for ln in lines if ln.count("{}") != 1]
    if not lines or bad:
        raise ValueError(f"{spec}: every template needs exactly one '{{}}'" + (f"; bad: {bad[0]!r}" if bad else "; file is empty"))
    return tuple(lines)
