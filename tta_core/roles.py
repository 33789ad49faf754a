"""Which component of a recipe fills each role of the sample graph (what sampling builds and
what training hands its objectives as ``ctx.roles``).

A role is named by the recipe's ``sample:`` section (``sample: {conditioner: text}``), else
filled by the only component of that kind in ``components:``.
"""

from __future__ import annotations

from typing import Any

from .errors import UsageError
from .recipe import Recipe, component_kind

#: The roles of the sample graph; the vocoder is needed only by mel autoencoders.
ROLES = ("conditioner", "denoiser", "process", "autoencoder", "vocoder")


def resolve_roles(recipe: Recipe, registry: Any, strict: bool = True) -> dict[str, str]:
    """Role -> component name: the ``sample:`` choice, else the only component of the kind.
    Strict (sampling): a missing or ambiguous role is an error; else it is left out."""
    choice = recipe.get("sample") or {}
    kinds = {name: component_kind(recipe, name, registry) for name in recipe.components}
    roles, problems = {}, []
    for role in ROLES:
        if isinstance(choice.get(role), str):
            roles[role] = choice[role]
            continue
        named = [n for n, k in kinds.items() if k == role]
        if len(named) == 1:
            roles[role] = named[0]
        elif len(named) > 1:
            problems.append(f"the recipe has several {role}s ({', '.join(named)}): "
                            f"say which one samples with sample: {{{role}: NAME}}")
        elif role != "vocoder":
            problems.append(f"the recipe has no {role} in components: (sampling needs one)")
    if problems and strict:
        raise UsageError("cannot build the sample graph: " + "; ".join(problems))
    return roles
