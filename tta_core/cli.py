"""``tta-run``: one command line for every job.

    tta-run plugins [--json]           what is registered, by whom, and what failed to load
    tta-run RECIPE show                the recipe after base: and --set
    tta-run RECIPE validate            check a recipe against the registries
    tta-run RECIPE <verb> ...          more verbs (prepare, train, sample, eval) as they exist

Exit codes: 0 success, 2 usage or recipe error, 1 runtime failure, 130 interrupted.
Errors print one message; ``--debug`` adds the traceback. The commands and verbs are those of
this module and of the modules in :data:`COMMAND_MODULES`, each of which lists its own as
``COMMANDS = [Command(...), Verb(...)]`` (tta_core.commands.base); all share the options in
``common_options``.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from types import ModuleType

from . import __version__
from .commands import data as _data, eval as _eval, importing as _importing, sample as _sample, train as _train
from .commands import export as _export, plan as _plan, serve as _serve
from .commands.base import (Command, Verb, check_writable, common_options, load_plugins, load_recipe, number,
                            recipe_options)
from .errors import TtaError, UsageError

__all__ = ["main", "run", "COMMANDS", "VERBS", "Command", "Verb", "number", "check_writable", "load_plugins",
           "load_recipe"]

#: The modules whose ``COMMANDS`` lists make up tta-run, in the order ``tta-run --help`` shows them.
COMMAND_MODULES: tuple[ModuleType, ...] = (_data, _eval, _importing, _export, _sample, _serve, _train, _plan)


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


def _parser(prog: str, cmd: Command, recipe: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=cmd.help)
    if recipe:
        recipe_options(parser)
    cmd.add_arguments(parser)
    common_options(parser)
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


# -- built-in commands ------------------------------------------------------------------------


def _plugins_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


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


def _validate(args: argparse.Namespace) -> int:
    recipe = load_recipe(args, validate=True)
    stages = recipe.get("train") or []
    print(
        f"{recipe.path}: ok (recipe '{recipe.name}': {len(recipe.components)} components, "
        f"{len(stages)} training stages)"
    )
    return 0


_CORE = [
    Command("plugins", "list registered components with their plugin, version and status", _plugins, _plugins_args),
    Verb("show", "print the recipe after base: inheritance and --set overrides", _show, _show_args),
    Verb("validate", "check the recipe against the registered components (names, arguments, types)", _validate),
]


def _tables(modules: tuple[ModuleType, ...]) -> tuple[dict[str, Command], dict[str, Verb]]:
    """(commands, verbs) by name, from this module's and each module's ``COMMANDS``; a name
    given twice is an error that names both modules, never a silent replacement."""
    commands: dict[str, Command] = {}
    verbs: dict[str, Verb] = {}
    origin: dict[tuple[bool, str], str] = {}
    for module_name, listed in [(__name__, _CORE), *((m.__name__, m.COMMANDS) for m in modules)]:
        for cmd in listed:
            table = verbs if isinstance(cmd, Verb) else commands
            key = (isinstance(cmd, Verb), cmd.name)
            if key in origin:
                raise RuntimeError(f"{'verb' if key[0] else 'command'} '{cmd.name}' is defined by both "
                                   f"{origin[key]} and {module_name}")
            origin[key] = module_name
            table[cmd.name] = cmd
    return commands, verbs


COMMANDS, VERBS = _tables(COMMAND_MODULES)  # tta-run NAME ...; tta-run RECIPE NAME ...


if __name__ == "__main__":
    # `python -m tta_core.cli` (and accelerate/torchrun -m): run the imported module, so that
    # the process holds one copy of the command tables (and of what the commands import).
    from tta_core.cli import run as _run

    _run()
