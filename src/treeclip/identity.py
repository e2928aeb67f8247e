"""What a run is a function of, recorded beside what it writes: the one mechanism every
resumable job uses to decide between resuming, redoing and refusing.

A `RunIdentity` is a JSON record of settings at a path (a train run's `config.json`, a
predict output's `<output>.run.json`, a build's `plan.json`, a demo stage's record).
A job compares its own settings with the record: the same (or no record yet) means what
is there may be continued; any difference is listed by name, so the job can refuse with
one line naming them, or redo the stage. Settings that cannot change the result
(`free`) are not compared; settings added after a record was written compare as their
`defaults`. Records are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from treeclip.fsutil import write_json_atomic

UNREADABLE = "the record (unreadable)"


class RunIdentity:
    """The settings `settings` of a job, recorded at `path` (under `key` when given: the
    record is `{key: settings, ...}`)."""

    def __init__(self, path: str | Path, settings: Mapping[str, Any], *, free: Iterable[str] = (),
                 defaults: Mapping[str, Any] | None = None, key: str | None = None) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(dict(settings)))  # tuples -> lists, as a record holds them
        self.free, self.defaults, self.key = frozenset(free), dict(defaults or {}), key

    def recorded(self) -> dict | None:
        """The recorded settings; None without a record; raises ValueError when unreadable."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(str(err)) from None
        record = record.get(self.key) if self.key and isinstance(record, dict) else record
        if not isinstance(record, dict):
            raise ValueError("not a settings record")
        return record

    def changes(self) -> list[str] | None:
        """The settings that differ from the record, sorted (`[]`: the same); None when
        there is no record; `[UNREADABLE]` when it cannot be read."""
        try:
            old = self.recorded()
        except ValueError:
            return [UNREADABLE]
        if old is None:
            return None
        keys = (set(old) | set(self.settings)) - self.free
        return sorted((k for k in keys if old.get(k, self.defaults.get(k)) != self.settings.get(k)), key=str)

    def changes_in_words(self) -> list[str]:
        """`changes()` with old -> new values for plain settings (nested ones by name)."""
        try:
            old = self.recorded() or {}
        except ValueError:
            return [UNREADABLE]
        return [k if isinstance(old.get(k), dict) or k == UNREADABLE else f"{k} {old.get(k)} -> {self.settings.get(k)}"
                for k in self.changes() or []]

    def matches(self) -> bool:
        """Whether a record exists and holds exactly these settings (free ones aside)."""
        return self.changes() == []

    def write(self, **extra: Any) -> None:
        """Record the settings, with `extra` facts beside them (not compared when keyed or
        `free`), atomically."""
        write_json_atomic(self.path, {self.key: self.settings, **extra} if self.key else {**self.settings, **extra})

    def forget(self) -> None:
        """Remove the record (what it vouched for is about to change)."""
        self.path.unlink(missing_ok=True)
