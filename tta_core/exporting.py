"""A run's models in another framework's layout: ``tta-run export FORMAT RUN_DIR --out DIR``.

The inverse of :mod:`tta_core.importing`. An exporter (a plugin registers it as kind
``exporter``) turns a run's sample graph (a :class:`tta_core.sampling.pipeline.Pipeline`,
its weights loaded) into files another framework loads on its own. :func:`export_pipeline`
refuses an ``out`` that exists and is not empty, asks the exporter what of the recipe its
format cannot hold (and refuses, naming each part, before anything is loaded or written),
folds every adapter into its network's weights, and has the exporter write into a temporary
sibling of ``out`` that is renamed into place at the end: a failure leaves nothing behind.

The exporter contract::

    class MyExporter:
        '''One line: what it writes (shown by `tta-run plugins` and `tta-run export`).'''

        def check(self, recipe, *, registry) -> list[str]:
            '''What of the recipe's sample graph the format cannot hold: one line per part,
            naming the component and why ([] when it can). Reads the recipe only.'''

        def __call__(self, pipeline, out: Path) -> list[str]:
            '''Write the format into ``out`` (an empty folder); returns notes for the user
            (sampling settings the format does not keep, say). A part found unfit only now
            raises UsageError.'''

``pipeline`` is the run's sample graph (``.conditioner``, ``.denoiser``, ``.process``,
``.autoencoder``, ``.vocoder``, ``.roles``, ``.recipe``, ``.sampler_node()``,
``.settings()``), its networks plain (adapters merged).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import UsageError

#: Where a run directory records its recipe: an imported run (and any that keeps its recipe)
#: at the top, a trained one in each stage's folder.
RUN_RECIPE, STAGE_RECIPE = "recipe.yaml", "recipe.resolved.yaml"


def run_recipe(run_dir: str | os.PathLike) -> Path:
    """The recipe a run directory records: ``RUN_DIR/recipe.yaml``, else the
    ``recipe.resolved.yaml`` of its stage that comes last in that recipe's ``train:`` (the
    stage whose checkpoints sampling takes a denoiser from)."""
    from .recipe import load_recipe

    run_dir = Path(run_dir)
    if (run_dir / RUN_RECIPE).is_file():
        return run_dir / RUN_RECIPE
    found = {p.parent.name: p for p in sorted(run_dir.glob(f"*/{STAGE_RECIPE}"))}
    if not found:
        raise UsageError(f"{run_dir} records no recipe (no {RUN_RECIPE}, no <stage>/{STAGE_RECIPE}): "
                         "name the run's recipe with --recipe FILE")
    newest = max(found.values(), key=lambda p: p.stat().st_mtime)
    stages = [s.get("name") for s in (load_recipe(newest).get("train") or []) if isinstance(s, Mapping)]
    order = {name: i for i, name in enumerate(stages)}
    return max(found.items(), key=lambda item: (order.get(item[0], -1), item[1].stat().st_mtime))[1]


def check_out(out: str | os.PathLike) -> Path:
    """``out`` when an export may go there: a folder not there yet, or an empty one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: name a folder that does not exist yet")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {out} exists and is not empty: nothing there is overwritten; choose another folder")
    return out


def refusal(fmt: str, what: str, problems: Sequence[str]) -> UsageError:
    """The error for a run the format cannot hold, listing every refused part."""
    return UsageError(f"cannot export {what} as {fmt}: {len(problems)} part(s) it cannot hold; nothing was "
                      "written:\n  " + "\n  ".join(problems))


def merge_all_adapters(pipeline: Any) -> list[str]:
    """Fold the adapters of every network of the sample graph into its weights, in place
    (:func:`tta_core.adapters.merge_adapters`); returns the names of the components that had any."""
    from .adapters import adapters_of, merge_adapters

    merged = []
    for role, name in pipeline.roles.items():
        component = getattr(pipeline, role, None)
        modules = list(component.modules()) if hasattr(component, "modules") else []
        holders = [m for m in modules if adapters_of(m)]
        for module in holders:  # the outermost first: merging it takes the inner ones' layers out too
            merge_adapters(module)
        if holders:
            merged.append(name)
    return merged


def write_folder(out: str | os.PathLike, write: Callable[[Path], Any]) -> Any:
    """``write(work)`` into a new folder beside ``out`` (a folder not there yet, or an empty
    one), renamed to ``out`` once it returns: a failure leaves nothing behind. Returns what
    ``write`` returns."""
    out = check_out(out)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=parent))  # beside out: renamed, not copied
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp's folder is private; this is an ordinary folder
    try:
        result = write(work)
        check_out(out)  # nothing appeared there meanwhile
        if out.is_dir():
            out.rmdir()
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return result


def export_pipeline(exporter: Any, pipeline: Any, out: str | os.PathLike, *, fmt: str,
                    what: str = "the run") -> list[str]:
    """Write ``pipeline`` (a loaded sample graph) in ``exporter``'s format into ``out`` (see
    the module docstring); returns the notes to show. The pipeline's networks keep their
    adapters merged afterwards."""
    out = check_out(out)
    problems = exporter.check(pipeline.recipe, registry=pipeline.registry)
    if problems:
        raise refusal(fmt, what, problems)
    merged = merge_all_adapters(pipeline)
    notes = write_folder(out, lambda work: list(exporter(pipeline, work) or []))
    if merged:
        notes.insert(0, f"adapters merged into the weights of {', '.join(merged)}")
    return notes
