"""``tta-run``: one command line for every job.

    tta-run plugins [--json]           what is registered, by whom, and what failed to load
    tta-run RECIPE show                the recipe after base: and --set
    tta-run RECIPE validate            check a recipe against the registries
    tta-run RECIPE <verb> ...          more verbs (prepare, train, sample, eval) as they exist

Exit codes: 0 success, 2 usage or recipe error, 1 runtime failure, 130 interrupted.
Errors print one message; ``--debug`` adds the traceback. Commands and verbs are added with
:func:`command` and :func:`verb`; both share the options in :func:`_common`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import TtaError, UsageError


@dataclass
class _Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, _Command] = {}  # tta-run NAME ...
VERBS: dict[str, _Command] = {}  # tta-run RECIPE NAME ...


def command(name: str, help: str, add_arguments=lambda p: None):
    """Register a top-level command ``tta-run NAME``; the function gets the parsed args."""
    def deco(fn):
        COMMANDS[name] = _Command(name, help, add_arguments, fn)
        return fn
    return deco


def verb(name: str, help: str, add_arguments=lambda p: None):
    """Register a recipe verb ``tta-run RECIPE NAME``; args.recipe is the loaded Recipe."""
    def deco(fn):
        VERBS[name] = _Command(name, help, add_arguments, fn)
        return fn
    return deco


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    group.add_argument(
        "--strict-plugins", action="store_true",
        default=os.environ.get("TTA_STRICT_PLUGINS", "") not in ("", "0"),
        help="fail when any plugin fails to load (also TTA_STRICT_PLUGINS=1)",
    )


def _recipe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a recipe value (YAML-typed), e.g. --set train.vae.max_steps=10; repeatable",
    )


def _overview() -> str:
    width = max([len(n) for n in (*COMMANDS, *VERBS)] + [8])
    lines = [
        f"tta {__version__}: train and run text-to-audio latent diffusion models.",
        "",
        "usage: tta-run COMMAND [options]",
        "       tta-run RECIPE VERB [options]",
        "",
        "commands:",
        *(f"  {c.name:<{width}}  {c.help}" for c in COMMANDS.values()),
        "",
        "recipe verbs (RECIPE is a YAML file such as recipes/quickstart.yaml):",
        *(f"  {c.name:<{width}}  {c.help}" for c in VERBS.values()),
        "",
        "tta-run COMMAND --help or tta-run RECIPE VERB --help for the options of each.",
    ]
    return "\n".join(lines)


def _parser(prog: str, cmd: _Command, recipe: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=cmd.help)
    if recipe:
        _recipe_options(parser)
    cmd.add_arguments(parser)
    _common(parser)
    return parser


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    if argv[0] == "--version":
        print(f"tta {__version__}")
        return 0
    head = argv[0]
    if head in COMMANDS:
        cmd = COMMANDS[head]
        args = _parser(f"tta-run {head}", cmd, recipe=False).parse_args(argv[1:])
        return cmd.run(args)
    if head.startswith("-"):
        raise UsageError(f"unknown option '{head}' before a command.\n\n{_overview()}")
    path = Path(head)
    if not path.exists():
        from .errors import closest

        hint = closest(head, COMMANDS)
        msg = f"'{head}' is neither a command nor a recipe file."
        if hint:
            msg += f" Did you mean '{hint}'?"
        elif path.suffix in (".yaml", ".yml"):
            msg = f"recipe not found: {head}"
        raise UsageError(msg + f" Commands: {', '.join(COMMANDS)}; recipes are YAML files (see recipes/).")
    if len(argv) < 2 or argv[1].startswith("-"):
        if len(argv) > 1 and argv[1] in ("-h", "--help"):
            print(_overview())
            return 0
        raise UsageError(f"what should tta-run do with {head}? Verbs: {', '.join(VERBS)}.")
    name = argv[1]
    if name not in VERBS:
        from .errors import closest

        hint = closest(name, VERBS)
        raise UsageError(
            f"unknown verb '{name}'." + (f" Did you mean '{hint}'?" if hint else "")
            + f" Verbs: {', '.join(VERBS)}."
        )
    cmd = VERBS[name]
    args = _parser(f"tta-run {head} {name}", cmd, recipe=True).parse_args(argv[2:])
    args.recipe_path = path
    return cmd.run(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return int(_dispatch(argv) or 0)
    except TtaError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse's usage errors exit 2 on their own
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:
        if debug:
            traceback.print_exc()
        text = str(exc).strip() or "(no message)"
        print(f"error: {type(exc).__name__}: {text}", file=sys.stderr)
        if not debug:
            print("(run again with --debug for the traceback)", file=sys.stderr)
        return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


# -- shared helpers for commands --------------------------------------------------------------


def number(kind: type = int, *, min: float | None = None, max: float | None = None, above: float | None = None):
    """An argparse ``type=`` for a finite number within bounds, checked as the command line is
    read (before any model loads), with the recipe validator's wording: ``number(int, min=1)``."""
    import math

    from .recipe import Range

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
    from .discovery import get_plugins

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
    from .recipe import check, load_recipe as _load

    recipe = _load(args.recipe_path, args.overrides)
    if validate:
        check(recipe, load_plugins(args).registry)
    return recipe


# -- built-in commands ------------------------------------------------------------------------


def _plugins_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


@command("plugins", "list registered components with their plugin, version and status", _plugins_args)
def _plugins(args: argparse.Namespace) -> int:
    from .discovery import get_plugins

    plugins = get_plugins(strict=args.strict_plugins)
    rows = []
    for record in plugins.records:
        base = {"plugin": record.name, "distribution": record.distribution, "version": record.version}
        if record.ok:
            rows += [{"kind": e.kind, "name": e.name, **base, "status": "ok"} for e in record.components]
        elif record.status != "disabled":
            rows.append({"kind": None, "name": None, **base, "status": record.status})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from .registry import KINDS

    order = {k: i for i, k in enumerate(KINDS)}
    rows.sort(key=lambda r: (order.get(r["kind"], len(order)), r["name"] or ""))
    table = [("KIND", "NAME", "PLUGIN", "DISTRIBUTION", "STATUS")] + [
        (r["kind"] or "-", r["name"] or "-", r["plugin"],
         f"{r['distribution']} {r['version']}" if r["distribution"] else "-", r["status"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    disabled = [r.name for r in plugins.records if r.status == "disabled"]
    if disabled:
        print(f"\ndisabled: {', '.join(disabled)}")
    if args.debug:
        for record in plugins.broken:
            print(f"\n{record.name}:\n{record.details}", file=sys.stderr)
    if not rows:
        print("\nno components registered: is tta installed (pip install -e .)?")
    return 0


def _show_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")


@verb("show", "print the recipe after base: inheritance and --set overrides", _show_args)
def _show(args: argparse.Namespace) -> int:
    recipe = load_recipe(args, validate=False)
    if args.json:
        print(json.dumps(recipe.to_dict(), indent=2, default=str))
    else:
        print(f"# {recipe.path} (name: {recipe.name})")
        if len(recipe.files) > 1:
            print("# inherits: " + " <- ".join(str(p) for p in reversed(recipe.files)))
        for text in recipe.overrides:
            print(f"# --set {text}")
        print(recipe.dump(), end="")
    return 0


@verb("validate", "check the recipe against the registered components (names, arguments, types)")
def _validate(args: argparse.Namespace) -> int:
    recipe = load_recipe(args, validate=True)
    stages = recipe.get("train") or []
    print(
        f"{recipe.path}: ok (recipe '{recipe.name}': {len(recipe.components)} components, "
        f"{len(stages)} training stages)"
    )
    return 0


def _import_commands() -> None:
    import importlib
    import pkgutil

    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}")


if __name__ == "__main__":
    # `python -m tta_core.cli` (and accelerate/torchrun -m): run the imported module, where
    # the command modules registered themselves, not this __main__ copy.
    from tta_core.cli import run as _run

    _run()
else:
    _import_commands()
