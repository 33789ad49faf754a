"""Errors that reach users.

Every error a user can cause derives from :class:`TtaError` and carries the exit code the CLI
returns for it: 2 for usage and recipe errors (the input is wrong), 1 for runtime failures
(the input was fine, something went wrong while running it). The message is written to be
read on its own, without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TtaError(Exception):
    """Base class of every error tta reports to users."""

    exit_code = 1


class UsageError(TtaError):
    """The command line or an argument is wrong."""

    exit_code = 2


class RecipeError(TtaError):
    """A recipe failed to load or validate. ``issues`` holds one :class:`RecipeIssue` each."""

    exit_code = 2

    def __init__(self, issues):
        self.issues = list(issues)
        lines = [str(issue) for issue in self.issues]
        head = f"{len(self.issues)} problem(s) in the recipe:" if len(lines) > 1 else None
        super().__init__("\n".join(([head] if head else []) + lines))


class RegistryError(TtaError):
    """A component name is unknown or registered twice."""

    exit_code = 2


class UnknownComponentError(RegistryError):
    def __init__(self, message: str, *, kind: str, name: str, suggestion: str | None):
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.suggestion = suggestion


class DuplicateComponentError(RegistryError):
    pass


class PluginError(TtaError):
    """A plugin failed to load and strict plugin loading is on."""

    exit_code = 1


class CheckpointError(TtaError):
    """A checkpoint is missing, incomplete, or refused as unsafe."""

    exit_code = 1


class DataError(TtaError):
    """A dataset left nothing usable, or a bad item met the ``on_bad_item: fail`` policy."""

    exit_code = 1


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None
