"""``tta-run import diffae-birds FILE [FILE]``: the bird-sound "Audio Diffusion" repository's
weights as a tta run directory.

Each FILE is a Lightning checkpoint of that repository's ``DMAE`` (the DiffAE) or
``DiffGen`` module, or a plain state dict of audio-diffusion-pytorch's ``DiffusionAE`` or
``DiffusionModel`` (``.ckpt``, ``.pt``, ``.pth`` or ``.safetensors``). Which is which is found
from the names in the file: the recipe's ``ae`` (a ``diffae``) and ``unet`` (a ``unet1d``)
are looked for under any wrapper prefix. A Lightning checkpoint keeps the trained model
(``model.``) and its EMA copy (``ema.ema_model.``): both are imported, and sampling uses
the EMA copy as that repository's docs say; a plain state dict is the one set of weights.
When two files hold the same component, the first one given wins.

The recipe is ``recipes/diffae_birds.yaml`` (that repository's sizes) unless ``--recipe``
names another; ``--set`` adjusts it to a model trained with other sizes. The number of audio
channels (that repository trains on stereo) is read from the DiffAE's weights and set in
the recipe (``audio.channels`` and the autoencoder's ``in_channels``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from tta_core.plugin import UsageError

_SKIP = ("diffusion", "sampler", "online_model")  # the reference's duplicate references to its net


def prefixes(state: dict, expected: list[str]) -> list[str]:
    """Prefixes under which ``state`` holds every ``expected`` key, the EMA copy first."""
    from tta_core.plugin import find_prefix

    first = expected[0]
    found = {key[: -len(first)] for key in state if key.endswith(first)
             and (key == first or key[: -len(first)].endswith("."))}
    found = {p for p in found if p.rstrip(".").rsplit(".", 1)[-1] not in _SKIP and "online_model" not in p}
    ok = [p for p in found if find_prefix(state, expected, [p]) == p]
    return sorted(ok, key=lambda p: (not is_ema(p), len(p), p))


def is_ema(prefix: str) -> bool:
    return any(part in ("ema", "ema_model", "model_ema") for part in prefix.split("."))


class BirdsImporter:
    """the bird-sound Audio Diffusion repository: Lightning checkpoints of DMAE / DiffGen (EMA taken), or DiffusionAE / DiffusionModel state dicts"""

    def __call__(self, sources: Sequence[Path], *, out: Path, recipe: str | None, overrides: Sequence[str],
                 registry: Any) -> Any:
        import torch

        from tta_core.plugin import (Imported, build, component_kind, load_recipe, read_tensors,
                                     resolve_roles, shipped_recipe, state_dict_of, under)

        if not sources or len(sources) > 2:
            raise UsageError("diffae-birds takes one or two files: the DiffAE's checkpoint and/or the DiffGen's")
        recipe_path = Path(recipe) if recipe else shipped_recipe("diffae_birds.yaml")
        files = [(Path(src), state_dict_of(read_tensors(src), src)) for src in sources]
        overrides = list(overrides)
        rec = load_recipe(recipe_path, overrides)
        roles = resolve_roles(rec, registry)
        ae_name, unet_name = roles["autoencoder"], roles["denoiser"]

        def expected(r: Any, name: str) -> list[str]:
            with torch.random.fork_rng(devices=[]):
                module = build(r.components[name], component_kind(r, name, registry), registry,
                               where=f"components.{name}", audio=r.audio)
            return list(module.state_dict())

        # the DiffAE's channel count, from its learned filterbank (read before its key names,
        # some of which depend on it)
        notes = []
        for path, state in files:
            found = sorted((k[: -len("net.blocks.0.weight")] for k in state if k.endswith("net.blocks.0.weight")),
                           key=lambda p: (not is_ema(p), len(p)))
            found = [p for p in found if any(k.startswith(p + "encoder.") for k in state)]
            if found:
                channels = int(state[found[0] + "net.blocks.0.weight"].shape[1])
                if channels != rec.components[ae_name].get("in_channels", 1) or \
                        channels != (rec.get("audio") or {}).get("channels", 1):
                    overrides += [f"components.{ae_name}.in_channels={channels}", f"audio.channels={channels}"]
                    notes.append(f"{channels}-channel audio (from {path.name}): set components.{ae_name}.in_channels "
                                 f"and audio.channels to {channels}")
                    rec = load_recipe(recipe_path, overrides)
                break
        ae_keys = expected(rec, ae_name)

        weights, ema, where = {}, {}, {}
        for name in (ae_name, unet_name):
            keys = ae_keys if name == ae_name else expected(rec, name)
            for path, state in files:
                found = prefixes(state, keys)
                if not found:
                    continue
                raw = [p for p in found if not is_ema(p)]
                emas = [p for p in found if is_ema(p)]
                main = raw[0] if raw else emas[0]
                weights[name] = {k: v for k, v in under(state, main).items() if k in keys}
                label = f"{path} ({main or 'no prefix'}"
                if raw and emas:
                    ema[name] = {k: v for k, v in under(state, emas[0]).items() if k in keys}
                    label += f"; EMA {emas[0]}"
                where[name] = label + ")"
                break
        if not weights:
            listing = "; ".join(f"{p.name}: {len(s)} tensors, e.g. {', '.join(list(s)[:3])}" for p, s in files)
            raise UsageError(
                f"found neither the recipe's '{ae_name}' ({len(ae_keys)} tensors, e.g. {ae_keys[0]}) nor its "
                f"'{unet_name}' in {listing}. If the model was trained with other sizes than {recipe_path}, "
                "give them with --set (components.ae.channels=..., components.unet.items=...) or --recipe")
        for name in (ae_name, unet_name):
            if name not in weights:
                notes.append(f"no weights for '{name}' in the files given: train it, or import its checkpoint too")
        return Imported(recipe=rec, weights=weights, ema=ema, sources=where, notes=notes)
