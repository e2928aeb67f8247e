"""A click group whose subcommands are imported only when used (fast `--help`)."""

from __future__ import annotations

import importlib
import importlib.util

import click


class LazyGroup(click.Group):
    """`verbs` maps a subcommand name to (module, attribute, one-line help); the module
    is `package.module`. Listing the verbs in `--help` imports none of them."""

    def __init__(self, *args, verbs: dict[str, tuple[str, str, str]], package: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._verbs = verbs
        self._package = package

    def _available(self, name: str) -> bool:
        return importlib.util.find_spec(f"{self._package}.{self._verbs[name][0]}") is not None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {v for v in self._verbs if self._available(v)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in self._verbs or not self._available(name):
            return super().get_command(ctx, name)
        module, attr, _ = self._verbs[name]
        return getattr(importlib.import_module(f"{self._package}.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, self._verbs[n][2]) for n in self.list_commands(ctx) if n in self._verbs]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
