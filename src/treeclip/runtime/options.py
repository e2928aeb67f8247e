"""How a verb runs a model over images: one typed, validated object made once (by the CLI
or the caller) and passed whole to predict, embed, eval, serve and the demo.

A bad value fails where the object is made, as one line naming the option, not in the
deepest constructor that happens to use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from treeclip.errors import TreeclipError
from treeclip.model.registry import RESIZE_MODES
from treeclip.runtime.precision import PRECISIONS, VERB_DEFAULTS

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
"""What `--backend` accepts for the fp32 and bf16 image tower on a CPU (int8 runs in ONNX
Runtime): `auto` measures which is fastest at the bar of the precision (`runtime.backends`)."""

TemplateSpec = str | tuple[str, ...]
"""A named template set (`openai`, `bioclip`, `single`), a file with one per line, or the
templates themselves."""


@dataclass(frozen=True)
class InferenceOptions:
    """Device, precision and batching of image encoding, and the label templates.

    `precision`: one of `PRECISIONS` (see `runtime.precision` for the policy); `workers`:
    decoding processes (None: cores - 2); `resize`: `crop` (the model's own preprocess) or
    `squash` (pybioclip's plain resize); `compile`: let `torch.compile` compete as a backend (with
    `backend="torch"`: always compile);
    `backend`: who runs the fp32 and bf16 tower on a CPU (`BACKENDS`)."""

    device: str = "cpu"
    precision: str = VERB_DEFAULTS["predict"]
    batch_size: int = 32
    workers: int | None = None
    templates: TemplateSpec = "openai"
    compile: bool = False
    resize: str = "crop"
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise TreeclipError(f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise TreeclipError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.resize not in RESIZE_MODES:
            raise TreeclipError(f"resize {self.resize!r}: expected one of {', '.join(RESIZE_MODES)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise TreeclipError(f"batch size {self.batch_size!r}: expected a whole number >= 1")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise TreeclipError(f"workers {self.workers!r}: expected a whole number >= 0")
        if not isinstance(self.device, str) or not self.device:
            raise TreeclipError(f"device {self.device!r}: expected e.g. cpu, cuda, cuda:1 or auto")
        if not isinstance(self.templates, str):
            object.__setattr__(self, "templates", tuple(self.templates))
        self.template_texts()  # an unknown set or a bad file fails here

    @classmethod
    def for_verb(cls, verb: str, **values) -> "InferenceOptions":
        """Options with `verb`'s default precision (`VERB_DEFAULTS`) unless given."""
        return cls(**{"precision": VERB_DEFAULTS[verb], **values})

    def template_texts(self) -> tuple[str, ...]:
        """The templates themselves, each with one `{}`."""
        from treeclip.taxonomy.templates import load_templates

        if not isinstance(self.templates, str):
            return tuple(self.templates)
        try:
            return load_templates(self.templates)
        except ValueError as err:
            raise TreeclipError(f"templates: {err}") from None

    def replace(self, **changes) -> "InferenceOptions":
        """A copy with `changes` (validated again)."""
        return dataclasses.replace(self, **changes)

