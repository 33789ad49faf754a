"""``check_importer``: an importer (kind ``importer``, :mod:`tta_core.importing`) on source
files a test writes, and on files of other formats it must refuse."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ._common import _fail, changes, snapshot


def _wrong_files(folder: Path) -> list[Path]:
    """Files no importer of weights should take for its own: tensors under names no model
    has (as safetensors and as a PyTorch checkpoint), text, an empty file, an empty folder."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    stray = {"foo.weight": torch.zeros(3, 2), "bar.bias": torch.ones(5)}
    save_file(stray, str(folder / "other.safetensors"))
    torch.save({"state_dict": stray, "epoch": 1}, folder / "other.ckpt")
    (folder / "notes.txt").write_text("these are not weights\n")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "empty").mkdir()
    return [folder / "other.safetensors", folder / "other.ckpt", folder / "notes.txt", folder / "empty.pt",
            folder / "empty"]


def check_importer(importer: Callable[..., Any], sources: Sequence[str | os.PathLike], *, recipe: str | None = None,
                   overrides: Sequence[str] = (), registry: Any = None, fmt: str = "conformance",
                   wrong: Sequence[Sequence[str | os.PathLike]] | None = None) -> None:
    """``importer`` (an instance, called as ``tta-run import`` calls it) on ``sources`` (the
    files or folders of a small model in its format, written by the test), with the given
    ``recipe`` and ``overrides`` (``--recipe``/``--set``):

    - its class's docstring has a first line (what ``tta-run import`` lists);
    - it returns an :class:`~tta_core.importing.Imported` whose recipe validates, with a
      state dict (and EMA copy) per component that the recipe has, and writes nothing
      itself: ``out`` stays absent;
    - the weights load strictly (every key, every shape) into the components the recipe
      builds, and the run directory is written: :func:`tta_core.importing.write_run`;
    - the sources are unchanged (every file hashed before and after);
    - a second call gives the same recipe and the same tensors;
    - files of other formats are refused with a :class:`~tta_core.errors.TtaError` (the
      user's mistake, said plainly), not a KeyError or a traceback: each list in ``wrong``
      stands for ``sources``; by default, each alone: tensors under names no model has (as
      ``.safetensors`` and as a PyTorch checkpoint), a text file, an empty file, an empty
      folder.
    """
    if registry is None:
        from ..discovery import get_registry

        registry = get_registry()
    doc = (type(importer).__doc__ or "").strip()
    if not doc:
        _fail(importer, "needs a docstring whose first line says what it reads (tta-run import lists it)")
    sources = [Path(s) for s in sources]
    before = snapshot(sources)
    try:
        with tempfile.TemporaryDirectory(prefix="tta-importer-") as tmp:
            _check_calls(importer, sources, Path(tmp), recipe, overrides, registry, fmt, wrong)
    finally:  # changed sources are the worst finding: reported before any other
        changed = changes(before, snapshot(sources))
        if changed:
            _fail(importer, f"changed its sources: {'; '.join(changed)}")


def _check_calls(importer: Any, sources: list[Path], work: Path, recipe: Any, overrides: Sequence[str],
                 registry: Any, fmt: str, wrong: Any) -> None:
    from ..errors import TtaError
    from ..importing import Imported, write_run
    from ..recipe import check

    # both calls get the same out: a recipe names the files the run will hold under it
    first = _call(importer, sources, work / "run", recipe, overrides, registry)
    if not isinstance(first, Imported):
        _fail(importer, f"must return a tta_core.importing.Imported, got {type(first).__name__}")
    _check_imported(importer, first)
    try:
        check(first.recipe, registry)
    except TtaError as exc:
        _fail(importer, f"its recipe does not validate: {exc}")
    _same(importer, first, _call(importer, sources, work / "run", recipe, overrides, registry))
    try:
        write_run(work / "run", first, registry=registry, fmt=fmt)
    except TtaError as exc:
        _fail(importer, f"its weights do not fit the components its recipe builds: {exc}")
    for bad in (wrong if wrong is not None else [[p] for p in _wrong_files(work / "wrong")]):
        _refuses(importer, [Path(p) for p in bad], work / "refused", recipe, overrides, registry)


def _call(importer: Any, sources: list[Path], out: Path, recipe: Any, overrides: Sequence[str], registry: Any) -> Any:
    result = importer(list(sources), out=out.resolve(), recipe=recipe, overrides=list(overrides), registry=registry)
    if out.exists():
        _fail(importer, f"wrote {out} itself; the run directory is written by tta from what it returns")
    return result


def _check_imported(importer: Any, imported: Any) -> None:
    from ..recipe import Recipe

    if not isinstance(imported.recipe, Recipe):
        _fail(importer, f"Imported.recipe must be a Recipe (tta_core.plugin.load_recipe), got "
                        f"{type(imported.recipe).__name__}")
    if not imported.weights:
        _fail(importer, "returned no weights")
    for where, table in (("weights", imported.weights), ("ema", imported.ema)):
        for name, state in table.items():
            if name not in imported.recipe.components:
                _fail(importer, f"gives {where} for '{name}', which its recipe has no component of")
            if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
                _fail(importer, f"{where}['{name}'] must be a non-empty state dict of name -> tensor")
    extra = sorted(set(imported.ema) - set(imported.weights))
    if extra:
        _fail(importer, f"gives EMA copies of {extra} without their weights")
    for rel, source in imported.files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not Path(source).exists():
            _fail(importer, f"Imported.files maps {rel!r} to {source}: a path inside the run directory to an "
                            "existing file or folder")


def _same(importer: Any, a: Any, b: Any) -> None:
    if a.recipe.to_dict() != b.recipe.to_dict():
        _fail(importer, "two calls on the same sources give different recipes")
    for where in ("weights", "ema"):
        x, y = getattr(a, where), getattr(b, where)
        if set(x) != set(y):
            _fail(importer, f"two calls give {where} for {sorted(x)}, then {sorted(y)}")
        for name in x:
            if set(x[name]) != set(y[name]) or not all(torch.equal(x[name][k], y[name][k]) for k in x[name]):
                _fail(importer, f"two calls on the same sources give different {where} for '{name}'")


def _refuses(importer: Any, bad: list[Path], out: Path, recipe: Any, overrides: Sequence[str], registry: Any) -> None:
    from ..errors import TtaError

    try:
        _call(importer, bad, out, recipe, overrides, registry)
    except TtaError:
        return
    except Exception as exc:
        _fail(importer, f"on {', '.join(p.name for p in bad)} (not its format) raised "
                        f"{type(exc).__name__}: {exc}; a file of the wrong format is the user's mistake: "
                        "raise a TtaError (UsageError, CheckpointError) that says what was expected")
    _fail(importer, f"took {', '.join(p.name for p in bad)}, which is not its format, without a word")
