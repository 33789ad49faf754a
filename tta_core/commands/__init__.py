"""CLI commands and recipe verbs beyond the core ones in :mod:`tta_core.cli`.

Each module lists its commands as data, ``COMMANDS = [Command(...), Verb(...)]`` (the types
and the helpers they share are in :mod:`tta_core.commands.base`), and ``tta_core.cli`` names
the modules it takes them from in ``COMMAND_MODULES``: a new module is added there. A command
module never imports ``tta_core.cli``. Keep module-level imports light (no torch): the CLI
imports all of them before it knows which command runs.
"""
