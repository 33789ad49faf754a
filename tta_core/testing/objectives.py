"""``check_objective``: a training stage's objective, run the way the trainer runs it, on a
tiny recipe, without the trainer's loop: what the trainer relies on, one contract at a time."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ._common import _fail, changes, snapshot


def stage_context(recipe: Any, stage: str, run_dir: str | os.PathLike, *, registry: Any = None,
                  device: str = "cpu", overrides: Sequence[str] = ()) -> tuple[Any, Any]:
    """``(objective, ctx)`` for stage ``stage`` of ``recipe`` (a path or a loaded Recipe), as
    the trainer prepares them before ``setup``: every component built with the stage's seed
    (random weights: frozen ones are not loaded from earlier stages), moved to ``device``, the
    trained ones in train mode with gradients on and the others in eval mode without; the
    objective's own ``modules()`` beside them; ``ctx.run_dir`` is ``run_dir``."""
    from ..plugin import StageContext, build, load_recipe, resolve_roles
    from ..recipe import check, component_kind
    from ..training.stage import parse_stage

    if registry is None:
        from ..discovery import get_registry

        registry = get_registry()
    if not hasattr(recipe, "components"):
        recipe = load_recipe(recipe, list(overrides))
    check(recipe, registry)
    raw = [s for s in (recipe.get("train") or []) if s.get("name") == stage]
    if not raw:
        raise ValueError(f"the recipe has no stage '{stage}'")
    config = parse_stage(raw[0])
    audio = recipe.audio
    torch.manual_seed(config.seed)
    components = {name: build(node, component_kind(recipe, name, registry), registry, where=f"components.{name}",
                              audio=audio) for name, node in recipe.components.items()}
    for name, module in components.items():
        if isinstance(module, torch.nn.Module):
            trains = name in config.trains
            module.to(device).train(trains).requires_grad_(trains)
    objective = build(config.objective, "objective", registry)
    extra = dict(objective.modules()) if hasattr(objective, "modules") else {}
    clash = sorted(set(extra) & set(components))
    if clash:
        _fail(objective, f"modules() names {clash}, which are the recipe's component names")
    for module in extra.values():
        module.to(device).train()
    ctx = StageContext(recipe=recipe, stage=config, components={**components, **extra},
                       roles=resolve_roles(recipe, registry, strict=False), trains=config.trains,
                       audio=config.audio_for(audio), device=torch.device(device), run_dir=Path(run_dir),
                       registry=registry, cache_audio=audio, progress=False)
    return objective, ctx


def check_objective(recipe: Any, stage: str, run_dir: str | os.PathLike, *, registry: Any = None,
                    device: str = "cpu", overrides: Sequence[str] = (), steps: Sequence[int] = (0,),
                    batch_size: int = 2, seed: int = 0, generator_matters: bool = True,
                    validate: bool = True) -> None:
    """The objective of stage ``stage`` of a tiny ``recipe`` (a path or a Recipe: give it a
    small dataset in ``data.train``), prepared by :func:`stage_context` in ``run_dir`` (a
    fresh folder), through what the trainer relies on:

    - it has ``setup``, ``train_dataset``, ``parameter_groups``, ``losses``; ``setup(ctx)``
      leaves frozen components frozen (eval mode, no gradients);
    - ``parameter_groups``: lists of parameters that require gradients, of the components
      the stage trains (and the objective's own ``modules()``) only, each in one group, and
      every trained component with parameters in some group;
    - ``train_dataset`` has items, and ``collate`` (or torch's default) batches
      ``batch_size`` of them;
    - ``losses(batch, step, generator)`` at each of ``steps``: a mapping of one-element
      tensors (what the trainer logs as floats), finite; every key not starting with
      ``log/`` names a parameter group and is a scalar with a gradient that reaches every
      trained component of its group; each group gets a loss at one of ``steps`` at least
      (give a step past a discriminator's start, say);
    - the same (seed, step, batch) gives the same losses, with the components' state (their
      buffers included) put back between calls: no state outside the components; with
      ``generator_matters``, another generator seed gives other losses: the noise comes from
      ``generator``, as resuming needs;
    - the optional ``validate(ctx, out_dir)`` (with ``validate``) writes nothing outside
      ``out_dir``, gives a mapping of name -> number, and leaves every component in the
      train/eval mode and gradient state it found.
    """
    objective, ctx = stage_context(recipe, stage, run_dir, registry=registry, device=device, overrides=overrides)
    missing = [m for m in ("setup", "train_dataset", "parameter_groups", "losses") if not callable(getattr(objective, m, None))]
    if missing:
        _fail(objective, f"is not an Objective: missing {', '.join(missing)}")
    modes = _modes(ctx)
    objective.setup(ctx)
    _same_modes(objective, ctx, modes, "setup")
    groups = _check_groups(objective, ctx)
    batch = _first_batch(objective, ctx, batch_size)
    got = set()
    for step in steps:
        got |= _check_losses(objective, ctx, groups, batch, step, seed, generator_matters)
    _same_modes(objective, ctx, modes, "losses")
    if set(groups) - got:
        _fail(objective, f"parameter groups {sorted(set(groups) - got)} got no loss at steps {list(steps)}: "
                         "their optimizers would never step")
    if validate and callable(getattr(objective, "validate", None)):
        _check_validate(objective, ctx, modes)


def _modules(ctx: Any) -> dict[str, torch.nn.Module]:
    return {n: ctx.unwrap(n) for n in ctx.components if isinstance(ctx.unwrap(n), torch.nn.Module)}


def _modes(ctx: Any) -> dict[str, tuple[bool, bool]]:
    """Per module: (train mode, any parameter requiring gradients)."""
    return {n: (m.training, any(p.requires_grad for p in m.parameters())) for n, m in _modules(ctx).items()}


def _same_modes(objective: Any, ctx: Any, before: dict, what: str) -> None:
    after = _modes(ctx)
    for name, (training, grad) in before.items():
        if after[name] != (training, grad):
            now = after[name]
            _fail(objective, f"{what} left '{name}' in {'train' if now[0] else 'eval'} mode "
                             f"{'with' if now[1] else 'without'} gradients; it was in "
                             f"{'train' if training else 'eval'} mode {'with' if grad else 'without'} them")


def _owners(ctx: Any) -> dict[int, str]:
    return {id(p): name for name, m in _modules(ctx).items() for p in m.parameters()}


def _check_groups(objective: Any, ctx: Any) -> dict[str, list]:
    groups = objective.parameter_groups(ctx)
    if not isinstance(groups, Mapping) or not groups:
        _fail(objective, f"parameter_groups must be a non-empty mapping of optimizer name -> parameters, got {groups!r}")
    owners, trained = _owners(ctx), set(ctx.trains) | set(getattr(objective, "modules", dict)())
    seen: dict[int, str] = {}
    out = {}
    for name, params in groups.items():
        params = list(params)
        if not params:
            _fail(objective, f"parameter group '{name}' is empty")
        for p in params:
            owner = owners.get(id(p))
            if owner is not None and owner not in trained:
                _fail(objective, f"parameter group '{name}' holds parameters of '{owner}', which the stage does not train")
            if not isinstance(p, torch.nn.Parameter) or not p.requires_grad:
                _fail(objective, f"parameter group '{name}' holds a tensor that is not a parameter requiring gradients")
            if id(p) in seen:
                _fail(objective, f"a parameter is in groups '{seen[id(p)]}' and '{name}': it would be stepped twice")
            seen[id(p)] = name
        out[name] = params
    for name in trained:
        module = ctx.unwrap(name) if name in ctx.components else None
        if isinstance(module, torch.nn.Module) and any(p.requires_grad for p in module.parameters()) \
                and not any(id(p) in seen for p in module.parameters()):
            _fail(objective, f"the stage trains '{name}', but no parameter group holds its parameters")
    return out


def _first_batch(objective: Any, ctx: Any, batch_size: int) -> Any:
    dataset = objective.train_dataset(ctx)
    if len(dataset) < 1:
        _fail(objective, "train_dataset is empty")
    items = [dataset[i] for i in range(min(batch_size, len(dataset)))]
    collate = getattr(objective, "collate", None) or torch.utils.data.default_collate
    batch = collate(items)
    if batch is None:
        _fail(objective, f"the first {len(items)} training items collate to None (all unreadable?)")
    return _to(batch, ctx.device)


def _to(batch: Any, device: Any) -> Any:
    """A batch on ``device``, as the trainer moves it: tensors and anything with ``.to``
    (a Conditioning), inside mappings, lists and tuples."""
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    if type(batch) in (list, tuple):
        return type(batch)(_to(v, device) for v in batch)
    return batch.to(device) if callable(getattr(batch, "to", None)) and not isinstance(batch, str) else batch


def _check_losses(objective: Any, ctx: Any, groups: dict, batch: Any, step: int, seed: int,
                  generator_matters: bool) -> set[str]:
    state = {n: copy.deepcopy(m.state_dict()) for n, m in _modules(ctx).items()}

    def run(gen_seed: int) -> dict:
        for name, module in _modules(ctx).items():
            module.load_state_dict(state[name])
        torch.manual_seed(seed)  # as the trainer does, for what draws from torch's own generator (dropout)
        out = objective.losses(batch, step, torch.Generator(ctx.device).manual_seed(gen_seed))
        if not isinstance(out, Mapping):
            _fail(objective, f"losses must return a mapping of name -> tensor, got {type(out).__name__}")
        return dict(out)

    out = run(seed)
    names = _check_values(objective, out, groups, step)
    for name in names:
        _check_gradients(objective, ctx, groups[name], out[name], name, step)
    again = run(seed)
    for key, value in out.items():
        if key not in again or not torch.equal(value.detach(), again[key].detach()):
            _fail(objective, f"losses at step {step} gave '{key}' = {float(value):.6g}, then "
                             f"{float(again[key]) if key in again else 'nothing'} with the same seeds and state: "
                             "randomness outside the generator, or state kept outside the components")
    if generator_matters and names:
        other = run(seed + 1)
        if all(torch.equal(out[n].detach(), other[n].detach()) for n in names):
            _fail(objective, f"losses at step {step} do not depend on the generator (the same with another seed): "
                             "noise drawn from torch's global generator cannot be replayed on resume")
    for name, module in _modules(ctx).items():
        module.load_state_dict(state[name])
        for p in module.parameters():
            p.grad = None
    return set(names)


def _check_values(objective: Any, out: dict, groups: dict, step: int) -> list[str]:
    names = []
    for key, value in out.items():
        if not isinstance(key, str):
            _fail(objective, f"losses' keys must be strings, got {key!r}")
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            _fail(objective, f"losses['{key}'] must be a one-element tensor (the trainer logs it as a float), "
                             f"got {type(value).__name__} {tuple(getattr(value, 'shape', ()))}")
        if not torch.isfinite(value.detach()).all():
            _fail(objective, f"losses['{key}'] at step {step} is {float(value)}")
        if key.startswith("log/"):
            continue
        if key not in groups:
            _fail(objective, f"losses gives '{key}', which is no parameter group ({', '.join(groups)}); "
                             "log-only values start with 'log/'")
        if value.dim() != 0 or not value.is_floating_point() or not value.requires_grad:
            _fail(objective, f"losses['{key}'] must be a float scalar with a gradient")
        names.append(key)
    if not names:
        _fail(objective, f"losses at step {step} gives no loss to step (only {sorted(out)})")
    return names


def _check_gradients(objective: Any, ctx: Any, params: list, loss: torch.Tensor, name: str, step: int) -> None:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    owners = _owners(ctx)
    reached: dict[str, bool] = {}
    for p, g in zip(params, grads):
        owner = owners.get(id(p), "?")
        if g is not None and not torch.isfinite(g).all():
            _fail(objective, f"loss '{name}' at step {step} gives '{owner}' non-finite gradients")
        reached[owner] = reached.get(owner, False) or (g is not None and bool(g.abs().sum() > 0))
    cold = sorted(o for o, ok in reached.items() if not ok)
    if cold:
        _fail(objective, f"loss '{name}' at step {step} gives no gradient to {cold}, which its group trains")


def _check_validate(objective: Any, ctx: Any, modes: dict) -> None:
    run_dir, cwd = Path(ctx.run_dir).resolve(), Path.cwd()
    out_dir = run_dir / ctx.stage.name / "samples" / "step-00000001"
    allowed = {out_dir, *out_dir.parents}  # the folders leading to out_dir may be made
    before, listing = snapshot([run_dir]), set(os.listdir(cwd))
    metrics = objective.validate(ctx, out_dir)
    outside = [line for line in changes(before, snapshot([run_dir]))
               if not _within(Path(line.split(" ", 1)[1]), out_dir, allowed)]
    outside += [f"added {cwd / n}" for n in sorted(set(os.listdir(cwd)) - listing)]
    if outside:
        _fail(objective, f"validate wrote outside {out_dir}: {'; '.join(outside)}")
    if metrics is not None and not isinstance(metrics, Mapping):
        _fail(objective, f"validate must return a mapping of name -> number, got {type(metrics).__name__}")
    for key, value in (metrics or {}).items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(objective, f"validate's metric {key!r} is {value!r}: the trainer logs plain numbers")
    _same_modes(objective, ctx, modes, "validate")


def _within(path: Path, out_dir: Path, allowed: set[Path]) -> bool:
    return path in allowed or path.is_relative_to(out_dir)
