"""What `predict` and `embed` are asked for, beside how they run (`InferenceOptions`) and
where caches live (`CachePaths`): each a typed, validated object made once by the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

from treeclip.errors import TreeclipError
from treeclip.taxonomy.taxon import RANKS, TEXT_TYPES

FORMATS = ("csv", "jsonl", "table")


@dataclass(frozen=True)
class LabelChoice:
    """What to classify among: taxa (a table, a label set, `ncbi:CLADE`, default the
    model's own) narrowed by `subset` specs, or custom labels (`cls_spec`) or bins, or
    the classes of a head fitted on labelled photos (`head`, a folder `treeclip fit` wrote)."""

    taxa: str | None = None
    ncbi_limit: int | None = None
    subset: tuple[str, ...] = ()
    cls_spec: str | None = None
    bins: str | None = None
    text_type: str = "taxon_com"
    head: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "subset", tuple(self.subset))
        if self.text_type not in TEXT_TYPES:
            raise TreeclipError(f"text type {self.text_type!r}: expected one of {', '.join(TEXT_TYPES)}")
        if self.cls_spec and self.bins:
            raise TreeclipError("give --cls or --bins, not both")
        if self.head and (self.cls_spec or self.bins or self.taxa or self.subset or self.ncbi_limit is not None):
            raise TreeclipError("--head classifies among the head's own classes; it does not mix with "
                                "--taxa, --subset, --ncbi-limit, --cls or --bins")
        if self.custom and (self.taxa or self.subset or self.ncbi_limit is not None):
            raise TreeclipError("--cls/--bins classify among custom labels; they do not mix with "
                                "--taxa, --subset or --ncbi-limit")

    @property
    def custom(self) -> bool:
        """Custom labels (or bins, or a head's classes) rather than taxa: rows name a
        `classification`, not ranks."""
        return bool(self.cls_spec or self.bins or self.head)


@dataclass(frozen=True)
class AnswerOptions:
    """Which answers each image gets: the top `k` at `rank` (each at least `min_prob`,
    the best always kept), or with `rollup` the deepest rank reaching that probability."""

    rank: str = "species"
    k: int = 5
    min_prob: float = 0.0
    rollup: float | None = None

    def __post_init__(self) -> None:
        if self.rank not in RANKS:
            raise TreeclipError(f"rank {self.rank!r}: expected one of {', '.join(RANKS)}")
        if not isinstance(self.k, int) or self.k < 1:
            raise TreeclipError(f"k {self.k!r}: expected a whole number >= 1")
        if not 0 <= self.min_prob <= 1:
            raise TreeclipError(f"min prob {self.min_prob!r}: expected a probability in [0, 1]")
        if self.rollup is not None and not 0 < self.rollup <= 1:
            raise TreeclipError(f"rollup {self.rollup!r}: expected a threshold in (0, 1]")

    def for_labels(self, labels: LabelChoice) -> dict:
        """The options a classifier's `rows_for` takes (custom labels have no rank)."""
        if labels.custom:
            if self.rollup is not None or self.rank != "species":
                which = "--head classifies among the head's classes" if labels.head else \
                    "--cls/--bins classify among custom labels"
                raise TreeclipError(f"{which}; they do not mix with --rank or --rollup")
            return {"k": self.k, "min_prob": self.min_prob}
        return {"rank": self.rank, "k": self.k, "min_prob": self.min_prob, "rollup": self.rollup}


@dataclass(frozen=True)
class OutputOptions:
    """Where rows go and how an existing output is treated: resumed (default), started
    afresh (`overwrite`), its error rows tried again (`retry_errors`)."""

    path: str | None = None
    fmt: str = "csv"
    overwrite: bool = False
    retry_errors: bool = False

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise TreeclipError(f"format {self.fmt!r}: expected one of {', '.join(FORMATS)}")
