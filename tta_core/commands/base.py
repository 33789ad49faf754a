"""What every command module shares: the shape of a command, the common options, and the
helpers that turn command-line text into checked values, plugins and recipes.

A command module lists its commands as data, ``COMMANDS = [Command(...), Verb(...)]``, and
:mod:`tta_core.cli` builds its tables from the modules it names. Nothing here imports a
command module or the CLI, so a command module can be imported (and tested) on its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UsageError


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``add_arguments`` of a command without options of its own."""


@dataclass(frozen=True)
class Command:
    """A top-level command, ``tta-run NAME ...``: ``run`` gets the parsed arguments and returns
    the exit code."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] = no_arguments


@dataclass(frozen=True)
class Verb(Command):
    """A recipe verb, ``tta-run RECIPE NAME ...``: the arguments carry ``recipe_path`` and the
    ``--set`` overrides (:func:`load_recipe` reads them)."""


def common_options(parser: argparse.ArgumentParser) -> None:
    """The options every command and verb takes."""
    group = parser.add_argument_group("common options")
    group.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    group.add_argument(
        "--strict-plugins", action="store_true",
        default=os.environ.get("TTA_STRICT_PLUGINS", "") not in ("", "0"),
        help="fail when any plugin fails to load (also TTA_STRICT_PLUGINS=1)",
    )


def recipe_options(parser: argparse.ArgumentParser) -> None:
    """The options every recipe verb takes."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a recipe value (YAML-typed), e.g. --set train.vae.max_steps=10; repeatable",
    )


def number(kind: type = int, *, min: float | None = None, max: float | None = None, above: float | None = None):
    """An argparse ``type=`` for a finite number within bounds, checked as the command line is
    read (before any model loads), with the recipe validator's wording: ``number(int, min=1)``."""
    import math

    from ..recipe import Range

    bounds = Range(min=min, max=max, above=above)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        problem = bounds.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def check_writable(folder: str | os.PathLike, flag: str) -> None:
    """Refuse a folder that cannot be written (or created), before any work is done; only a
    probe file is made, and removed, in the nearest folder that exists."""
    import tempfile

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a folder")
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {folder}: {probe} is a file, so the folder cannot be made")
    try:
        fd, name = tempfile.mkstemp(prefix=".tta-write-test-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UsageError(f"{flag} {folder} cannot be written ({probe}: {exc.strerror or exc}); "
                         f"choose another {flag}") from None


def load_plugins(args: argparse.Namespace):
    """The loaded plugins, reporting broken ones on stderr once per command (or failing, when
    strict)."""
    from ..discovery import get_plugins

    plugins = get_plugins(strict=args.strict_plugins)
    if getattr(args, "plugins_reported", False):  # load_recipe and the verb both ask
        return plugins
    args.plugins_reported = True
    for record in plugins.broken:
        print(f"warning: plugin '{record.name}' ({record.value}) {record.status}", file=sys.stderr)
        if args.debug and record.details:
            print(record.details, file=sys.stderr)
    return plugins


def load_recipe(args: argparse.Namespace, validate: bool = True):
    """The recipe named on the command line, with --set applied and (by default) validated."""
    from ..recipe import check, load_recipe as _load

    recipe = _load(args.recipe_path, args.overrides)
    if validate:
        check(recipe, load_plugins(args).registry)
    return recipe


def run_dir(args: argparse.Namespace, recipe) -> Path:
    """``--run-dir`` when given, else the recipe's run directory (its ``run_dir:`` or
    ``runs/<name>``): the one rule every verb follows."""
    return Path(args.run_dir) if getattr(args, "run_dir", None) else recipe.run_dir


def choose_format(registry, kind: str, name: str | None, usage: str) -> bool:
    """For ``tta-run import|export FORMAT``: with no FORMAT, print the formats of ``kind``
    (importer, exporter: each with its docstring's first line) and ``usage``, and return False;
    an unknown one is a UsageError listing them; a known one returns True."""
    rows = []
    for entry in registry.entries(kind):
        doc = (entry.load().__doc__ or "").strip().splitlines()
        rows.append(f"  {entry.name:<22} {doc[0] if doc else ''}")
    formats = "\n".join(rows) or "  (none registered)"
    if not name:
        print(f"formats:\n{formats}\n\nusage: {usage}")
        return False
    if not registry.has(kind, name):
        raise UsageError(registry.unknown_message(kind, name) + "\nformats:\n" + formats)
    return True
