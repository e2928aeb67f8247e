"""Zero-shot prompt templates as data.

`OPENAI_IMAGENET_TEMPLATES` are the 80 templates of OpenAI's CLIP ImageNet evaluation,
taken from open_clip (`open_clip.zero_shot_metadata`, in its order: label-cache keys and
results depend on the exact strings); `BIOCLIP_TEMPLATES` puts BioCLIP's plain
`a photo of {}.` first, 81 in all. Templates use `{}` for the class name.
"""

from __future__ import annotations

from pathlib import Path


def _open_clip_imagenet_templates() -> tuple[str, ...]:
    """open_clip's `zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES` (lambdas `c -> str`) as
    `{}` strings, in open_clip's order. That module is pure data; it is read from open_clip's
    installed files without importing the `open_clip` package, whose `__init__` imports
    torch (seconds): the taxonomy layer stays light (`--help`, taxonomy commands)."""
    import importlib.util
    import sys

    module = sys.modules.get("open_clip.zero_shot_metadata")
    if module is None:
        package = importlib.util.find_spec("open_clip")  # locates the package, does not import it
        if package is None or not package.submodule_search_locations:
            raise ImportError("open_clip is not installed")
        path = Path(next(iter(package.submodule_search_locations))) / "zero_shot_metadata.py"
        spec = importlib.util.spec_from_file_location("_treeclip_open_clip_zero_shot_metadata", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return tuple(template("{}") for template in module.OPENAI_IMAGENET_TEMPLATES)


OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = _open_clip_imagenet_templates()

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
