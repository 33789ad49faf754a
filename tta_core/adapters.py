"""Adapters (LoRA, DoRA) on any network, through peft: fine-tune a few million parameters in
place of a whole denoiser, keep them in a small file, apply them (scaled, several at once) on
load, or merge them into the weights.

A network says where adapters go by default with an ``adapter_targets`` attribute: glob
patterns over its module names (``named_modules``), e.g. the U-Net's attention projections
``("*.to_q", "*.to_k", "*.to_v", "*.to_out.0")``. A recipe may name others (``targets:``).
Only ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` layers take an adapter.

Example::

    from tta_core.adapters import AdapterConfig, add_adapter, adapter_state, save_adapter

    cfg = AdapterConfig(type="lora", rank=8, alpha=8)
    add_adapter(unet, cfg)                    # only the adapter's parameters require grad now
    ...                                       # train
    save_adapter(unet, "adapter.safetensors") # the adapter alone, its settings in the metadata
    load_adapter(other_unet, "adapter.safetensors", scale=0.7)
    merge_adapters(other_unet)                # plain layers again, the adapters in the weights

Files are safetensors; their metadata holds ``tta_adapter`` (the AdapterConfig as JSON, the
targets resolved to module names) so a file is read without its recipe.
"""

from __future__ import annotations

import fnmatch
import json
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from .errors import UsageError
from .recipe import Range

#: The name of the adapter a stage trains (peft's adapter name), and the metadata key of a file.
DEFAULT_NAME = "default"
METADATA_KEY = "tta_adapter"
COMPONENT_KEY, KIND_KEY = "tta_component", "tta_kind"
#: A stage's adapter of component ``unet`` is ``unet.adapter.safetensors`` in its checkpoints
#: (``unet.adapter.ema.safetensors`` for the EMA copy).
ADAPTER_SUFFIX = "adapter"


@dataclass(frozen=True)
class AdapterConfig:
    """One adapter: ``type`` lora or dora (weight-decomposed LoRA), ``rank`` (r), ``alpha``
    (the update is scaled by alpha / rank), ``dropout`` on the adapter's input, ``targets``
    (glob patterns over module names; empty: the network's own ``adapter_targets``),
    ``components`` (the components that get one; empty: every component the stage trains) and
    ``modules`` (the layers it is on, resolved from the targets: what a file records)."""

    type: Literal["lora", "dora"] = "lora"
    rank: Annotated[int, Range(min=1)] = 8
    alpha: Annotated[float, Range(above=0)] = 8.0
    dropout: Annotated[float, Range(min=0, max=1)] = 0.0
    targets: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()


def parse_adapter(value: Any, where: str) -> AdapterConfig | None:
    """A stage's ``adapters:`` mapping as an AdapterConfig (None for null); UsageError naming
    ``where`` and the keys there are for anything else."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping, e.g. {{type: lora, rank: 8}}")
    known = {f for f in AdapterConfig.__dataclass_fields__ if f != "modules"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise UsageError(f"{where}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kwargs = dict(value)
    for key in ("targets", "components"):
        if key in kwargs:
            items = kwargs[key]
            kwargs[key] = (items,) if isinstance(items, str) else tuple(items)
    cfg = AdapterConfig(**kwargs)
    if cfg.type not in ("lora", "dora"):
        raise UsageError(f"{where}.type: lora or dora, got {cfg.type!r}")
    return cfg


def target_modules(network: Any, patterns: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The names of the layers of ``network`` that ``patterns`` (default: the network's
    ``adapter_targets``) select; UsageError when none has defaults, or nothing matches."""
    import torch

    from peft.tuners.tuners_utils import BaseTunerLayer

    patterns = tuple(patterns) or tuple(getattr(network, "adapter_targets", ()))
    layers = {}
    for name, m in network.named_modules():  # a layer with adapters already counts as its base layer
        base = m.get_base_layer() if isinstance(m, BaseTunerLayer) else m
        if name and isinstance(base, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)) and \
                not any(p == "base_layer" or p.startswith("lora_") for p in name.split(".")):
            layers[name] = type(base).__name__
    if not patterns:
        raise UsageError(f"{type(network).__name__} declares no default adapter targets (adapter_targets): name "
                         f"them with targets:, glob patterns over its layers, e.g. {_examples(layers)}")
    chosen = [name for name in layers if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if not chosen:
        defaults = getattr(network, "adapter_targets", ())
        raise UsageError(f"adapter targets {list(patterns)} match no Linear/Conv1d/Conv2d layer of "
                         f"{type(network).__name__}; " + (f"its defaults are {', '.join(defaults)}; " if defaults else "")
                         + f"its layers are named like {_examples(layers)}")
    return chosen


def _examples(layers: dict[str, str]) -> str:
    tails = sorted({"*." + name.rsplit(".", 1)[-1] for name in layers})
    return ", ".join(tails[:16]) + (", ..." if len(tails) > 16 else "")


def _peft_config(cfg: AdapterConfig, modules: list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_dora=cfg.type == "dora",
                      target_modules=modules, init_lora_weights=True)


def add_adapter(network: Any, cfg: AdapterConfig, name: str = DEFAULT_NAME, trainable: bool = True) -> list[str]:
    """Put an adapter named ``name`` on ``network`` in place; returns the module names it is on.

    Fresh adapters change nothing until trained (LoRA's B starts at zero). With ``trainable``
    only the adapters' parameters require grad afterwards (the network's own are frozen)."""
    from peft import inject_adapter_in_model

    modules = list(cfg.modules) or target_modules(network, cfg.targets)
    have = dict(network.named_modules())
    absent = [m for m in modules if m not in have]
    if absent:
        raise UsageError(f"the adapter does not fit this network: {len(absent)} of its {len(modules)} layers are not "
                         f"in {type(network).__name__} ({', '.join(absent[:2])}{', ...' if len(absent) > 2 else ''})")
    with warnings.catch_warnings():  # a second adapter on one network is what load_adapter is for
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(_peft_config(cfg, modules), network, adapter_name=name)
    network.__dict__.setdefault("_tta_adapters", {})[name] = replace(cfg, modules=tuple(modules))
    activate(network, list(adapters_of(network)))  # every adapter on it counts, this one too
    for param_name, param in network.named_parameters():
        if trainable:  # this adapter's parameters alone train (not the network's, not other adapters')
            param.requires_grad_(_is_adapter(param_name, name))
        elif _is_adapter(param_name, name):
            param.requires_grad_(False)
    return modules


def _is_adapter(param_name: str, name: str | None = None) -> bool:
    """Whether a parameter belongs to an adapter (to adapter ``name`` when given): peft names
    them ``...lora_A.<adapter>.weight``, ``lora_B``, ``lora_magnitude_vector``."""
    parts = param_name.split(".")
    return any(p.startswith("lora_") and (name is None or (i + 1 < len(parts) and parts[i + 1] == name))
               for i, p in enumerate(parts))


def adapters_of(network: Any) -> dict[str, AdapterConfig]:
    """The adapters on ``network``: name -> its config (``modules``: the layers it is on)."""
    return dict(network.__dict__.get("_tta_adapters", {}))


def adapter_parameters(network: Any) -> list[Any]:
    """The parameters of every adapter on ``network`` (what a stage with adapters trains)."""
    return [p for n, p in network.named_parameters() if _is_adapter(n)]


def adapter_state(network: Any, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """The state of one adapter (peft's keys, without the adapter's name)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(network, adapter_name=name)


def load_adapter_state(network: Any, state: dict[str, Any], name: str = DEFAULT_NAME) -> None:
    """Load an adapter's state into the adapter ``name`` already on ``network``; a key that
    does not fit, or one missing, is a UsageError naming it."""
    from peft import set_peft_model_state_dict

    ours = adapter_state(network, name)
    wanted = set(ours)
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing or unexpected:
        raise UsageError(f"the adapter does not fit this network: {len(missing)} of its layers missing "
                         f"({', '.join(missing[:2])}{', ...' if len(missing) > 2 else ''}), {len(unexpected)} not "
                         f"in it ({', '.join(unexpected[:2])}{', ...' if len(unexpected) > 2 else ''})")
    wrong = [k for k in state if tuple(state[k].shape) != tuple(ours[k].shape)]
    if wrong:
        raise UsageError(f"the adapter does not fit this network: {wrong[0]} is {tuple(state[wrong[0]].shape)}, "
                         f"the network's is {tuple(ours[wrong[0]].shape)} (another rank or network size)")
    set_peft_model_state_dict(network, state, adapter_name=name)


def adapter_metadata(network: Any, name: str = DEFAULT_NAME, component: str | None = None,
                     kind: str | None = None) -> dict[str, str]:
    """The safetensors metadata of adapter ``name``: its config, and the recipe component (and
    that component's kind, e.g. ``denoiser``) it was trained on, when known."""
    meta = {METADATA_KEY: json.dumps(asdict(adapters_of(network)[name]))}
    if component:
        meta[COMPONENT_KEY] = component
    if kind:
        meta[KIND_KEY] = kind
    return meta


def save_adapter(network: Any, path: str | os.PathLike, name: str = DEFAULT_NAME, *, component: str | None = None,
                 kind: str | None = None) -> Path:
    """Write adapter ``name`` of ``network`` to a safetensors file, its config in the metadata."""
    from .checkpoint import save_weights

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, adapter_state(network, name), adapter_metadata(network, name, component, kind))
    return path


@dataclass(frozen=True)
class AdapterFile:
    """What an adapter file holds: its config, its tensors, and the component (name and kind)
    it was trained on when the file says."""

    path: Path
    config: AdapterConfig
    state: dict
    component: str | None = None
    kind: str | None = None


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """An adapter file, read whole; UsageError for a file that is not one."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no adapter file at {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise UsageError(f"{path} is not a safetensors file ({exc})") from None
    if METADATA_KEY not in meta:
        raise UsageError(f"{path} holds no tta adapter (no '{METADATA_KEY}' in its metadata)")
    try:
        raw = json.loads(meta[METADATA_KEY])
        known = set(AdapterConfig.__dataclass_fields__)
        cfg = AdapterConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known})
    except (ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path}: its '{METADATA_KEY}' metadata is not an adapter config ({exc})") from None
    return AdapterFile(path, cfg, load_file(str(path)), meta.get(COMPONENT_KEY), meta.get(KIND_KEY))


def load_adapter(network: Any, path: str | os.PathLike, name: str | None = None, scale: float = 1.0) -> str:
    """Put the adapter saved at ``path`` on ``network`` (frozen), scaled by ``scale``; returns
    the adapter's name (the file's stem unless given). Several may be loaded: all are active."""
    found = read_adapter(path)
    name = name or _free_name(network, Path(path).name.split(".")[0])
    add_adapter(network, found.config, name, trainable=False)
    load_adapter_state(network, found.state, name)
    set_adapter_scale(network, name, scale)
    activate(network, list(adapters_of(network)))
    return name


def _free_name(network: Any, stem: str) -> str:
    base = "".join(c if c.isalnum() else "_" for c in stem) or "adapter"
    taken, name, i = adapters_of(network), base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _layers(network: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in network.modules() if isinstance(m, LoraLayer)]


def set_adapter_scale(network: Any, name: str, scale: float) -> None:
    """Scale adapter ``name``'s update by ``scale`` (0: as if absent, 1: as trained)."""
    for layer in _layers(network):
        if name in layer.lora_A:
            layer.set_scale(name, scale)


def activate(network: Any, names: list[str]) -> None:
    """Make exactly ``names`` the active adapters (their updates add up); which parameters
    require grad stays as it was (peft's own switch would make every active adapter trainable)."""
    wanted = {id(p): p.requires_grad for p in network.parameters()}
    for layer in _layers(network):
        layer.set_adapter([n for n in names if n in layer.lora_A])
    for p in network.parameters():
        p.requires_grad_(wanted.get(id(p), False))


def merge_adapters(network: Any) -> None:
    """Fold every active adapter into the weights (at its scale) and take the adapter layers
    out: ``network`` is a plain network again, as fast as before it had any."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for parent in list(network.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
    network.__dict__.pop("_tta_adapters", None)


def copy_adapters(source: Any, target: Any) -> None:
    """Put on ``target`` (a network built anew from the same settings as ``source``) the
    adapters ``source`` has, with their scales and which are active, so that
    ``target.load_state_dict(source.state_dict())`` fits: for a network that copies itself by
    rebuilding (an EMA copy)."""
    adapters = adapters_of(source)
    if not adapters:
        return
    for name, cfg in adapters.items():
        add_adapter(target, cfg, name, trainable=False)
    layers = _layers(source)
    for mine, theirs in zip(layers, _layers(target)):
        theirs.scaling.update(mine.scaling)
    activate(target, list(layers[0].active_adapters))
