"""CLI commands and recipe verbs beyond the core ones in :mod:`tta_core.cli`.

Every module in this package is imported when the CLI starts and registers its commands with
``@tta_core.cli.command`` / ``@tta_core.cli.verb``. Keep module-level imports light (no
torch): the CLI imports all of them before it knows which command runs.
"""
