"""treeclip's messages and progress bars: one logger tree and one bar helper.

Modules log to `get_logger(__name__)` (the stdlib logger tree under `treeclip`): INFO for
what a run is doing, WARNING for an input skipped or a fallback taken. A library user
configures logging as for any package (without configuration, Python prints warnings
and errors). The command line calls `configure_cli()`: INFO and above go to stderr as
`treeclip: <message>`, written through tqdm as its `logging_redirect_tqdm` does, so a
message never tears a progress bar. Bars come from `progress_bar`: on stderr, the same
look everywhere, silent when not wanted.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Iterable

ROOT = "treeclip"
FORMAT = "treeclip: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """The logger of a module (`__name__`), under `treeclip`."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


class TqdmStderrHandler(logging.Handler):
    """Each record on the current `sys.stderr` through `tqdm.write`, so active bars are
    cleared and redrawn below it (the stream is looked up when writing, not when made:
    click's test runner and worker set-ups swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take a run down
            self.handleError(record)


def configure_cli(level: int = logging.INFO) -> None:
    """Print treeclip's messages of `level` and above to stderr (idempotent)."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, TqdmStderrHandler) for h in logger.handlers):
        handler = TqdmStderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # printed once, here, not again by a root handler


def progress_bar(total: int | None = None, *, desc: str, unit: str = "img", enabled: bool = True,
                 iterable: Iterable | None = None, **options: Any):
    """A tqdm bar on stderr, over `iterable` when given (`enabled=False`: a silent one,
    its `update` a no-op); `options` go to tqdm (`initial`, `leave`, ...)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr, **options)
