"""Recipes: loading (``base:`` inheritance, ``--set`` overrides) and validation.

A recipe composes registered components into train and sample graphs. Every component node
has one shape, ``{type: <registry name>, ...constructor kwargs}``, and validation binds each
node to its factory's signature before anything heavy is built: unknown names, unknown
kwargs, missing kwargs and wrong types are all reported at once, each with file:line.

Sections (anything else at the top level is an error):

- ``name``: the recipe's name (default: the file name); runs go to ``runs/<name>/``.
- ``base``: a recipe this one extends (path relative to this file). Mappings merge deeply,
  lists and scalars are replaced, and a component node whose ``type`` changes is replaced
  whole (the old type's kwargs would not fit the new one).
- ``audio``, ``data``, ``components``, ``train``, ``sample``, ``eval``: see :func:`sections`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import RecipeError, closest
from .registry import KINDS, Registry
from .yamlio import Loc, Node, Seq, YamlError, dump_yaml, load_yaml, to_plain

# -- schema vocabulary -----------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """Annotation: a ``{type: ...}`` node built from the registry of one of ``kinds``.

    In a factory signature, wrap it: ``discriminator: Annotated[dict, Component("...")]``.
    """

    kinds: tuple[str, ...]

    def __init__(self, *kinds: str):
        object.__setattr__(self, "kinds", kinds)


@dataclass(frozen=True)
class Ref:
    """Annotation: the name of an entry of ``components:`` of one of ``kinds``.

    In a factory signature: ``cross_attention: Annotated[str | None, Ref("conditioner")] = None``.
    """

    kinds: tuple[str, ...]

    def __init__(self, *kinds: str):
        object.__setattr__(self, "kinds", kinds)


#: Kinds a ``components:`` entry may be without saying ``kind:``; other kinds must say it.
MODEL_KINDS = ("autoencoder", "conditioner", "denoiser", "process", "vocoder")

#: Arguments the graph builder passes to factories itself; recipes do not set them.
INJECTED_ARGS = frozenset({"audio"})

Number = float  # ints are accepted where a float is annotated


@dataclass(frozen=True)
class Range:
    """Annotation: a number within bounds, checked by the validator with the file:line.

    ``Annotated[int, Range(1)]`` is an integer of at least 1; ``Annotated[float, Range(0, 1)]``
    a number in [0, 1]; ``above=0`` excludes the bound (a positive duration). Every number in
    a recipe must be finite (``.nan`` and ``.inf`` are refused wherever a number is expected).
    """

    min: float | None = None
    max: float | None = None
    above: float | None = None  # exclusive lower bound

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # the type check reports it
        if self.above is not None and not value > self.above:
            return f"must be greater than {self.above:g}, got {_show(value)}"
        if self.min is not None and value < self.min:
            return f"must be at least {self.min:g}, got {_show(value)}"
        if self.max is not None and value > self.max:
            return f"must be at most {self.max:g}, got {_show(value)}"
        return None


def at_least(low: float, kind: Any = int) -> Any:
    """``kind`` (int by default) of at least ``low``: ``at_least(1)`` for steps and batch sizes."""
    return typing.Annotated[kind, Range(min=low)]


#: Numbers most settings take: a positive one, a fraction in [0, 1].
Positive = typing.Annotated[float, Range(above=0)]
Fraction = typing.Annotated[float, Range(0, 1)]

#: The keys of each section and their types. Later layers add their keys here, so that a
#: typo is an error rather than a silently ignored setting. ``audio`` and ``train`` are
#: derived from the dataclasses that read them (AudioConfig, StageConfig): see :func:`sections`.
_SECTIONS: dict[str, Any] = {
    "name": str,
    "description": str,
    "run_dir": str,  # relative to the recipe file's folder; default runs/<name>
    "audio": None,  # the fields of tta_core.data.config.AudioConfig
    "data": dict[str, Component("dataset")],
    "components": "components",  # validated by _check_components
    "train": "train",  # a list of tta_core.training.stage.StageConfig mappings
    "sample": {
        "sampler": Component("sampler"),
        "steps": at_least(1),
        "guidance": at_least(0, float),
        "guidance_rescale": Fraction,  # phi of diffusers' rescale_noise_cfg
        "guidance_interval": tuple[at_least(0, float), at_least(0, float)],  # guide only where sigma is in [lo, hi]
        "negative": str,
        "decode_steps": at_least(1),
        "seed": at_least(0),
        "duration": Positive,
        "batch_size": at_least(1),
        "autoencoder": Ref("autoencoder"),
        "conditioner": Ref("conditioner"),
        "denoiser": Ref("denoiser"),
        "process": Ref("process"),
        "vocoder": Ref("vocoder"),
    },
    "eval": {  # defaults of `tta-run RECIPE eval` and `sample --rerank` (tta_core.eval.compare)
        "embedder": Component("embedder"),
        "text_embedder": Component("embedder"),
        "metrics": list[str],
        "max_missing": Fraction,
    },
}


class Fields(dict):
    """The validator's spec of a dataclass: field name -> annotation (a nested dataclass is a
    nested Fields). ``nullable``: the mapping may be null (``ema: null`` turns a base
    recipe's EMA off)."""

    def __init__(self, items: Mapping[str, Any], nullable: bool = False):
        super().__init__(items)
        self.nullable = nullable


def fields_spec(cls: type, nullable: bool = False) -> Fields:
    """The recipe schema of dataclass ``cls``, read from its fields' annotations: ranges come
    from ``Annotated[..., Range(...)]``, names of components from ``Component``/``Ref``; a
    field that is a dataclass (or ``X | None``, or ``Mapping[str, X]`` of one) is a nested
    mapping. So the dataclass that reads a section is the one place its keys are written."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return Fields({f.name: _field_spec(hints[f.name]) for f in dataclasses.fields(cls)}, nullable)


def _field_spec(ann: Any) -> Any:
    if dataclasses.is_dataclass(ann):
        return fields_spec(ann)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in _UNIONS and len(args) == 2 and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        if dataclasses.is_dataclass(inner):
            return fields_spec(inner, nullable=True)
    if origin in _MAPPINGS and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return dict[args[0], fields_spec(args[1])]
    return ann


@functools.cache
def sections() -> dict[str, Any]:
    """The keys of each section and their types (imports the dataclasses on first use: they
    import this module's annotations)."""
    from .data.config import AudioConfig

    return {**_SECTIONS, "audio": fields_spec(AudioConfig)}


@functools.cache
def stage_fields() -> Fields:
    """The keys of one ``train:`` stage and their types: StageConfig's fields."""
    from .training.stage import StageConfig

    return fields_spec(StageConfig)


def __getattr__(name: str) -> Any:
    # built on first use, not at import: the dataclasses they come from import this module
    if name == "SECTIONS":
        return sections()
    if name == "STAGE_FIELDS":
        return stage_fields()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class RecipeIssue:
    loc: Loc | None
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}" if self.loc else self.message


# -- loading --------------------------------------------------------------------------------


@dataclass
class Recipe:
    """A loaded recipe: its resolved content, and where it came from."""

    path: Path
    data: Node
    overrides: tuple[str, ...] = ()
    files: tuple[Path, ...] = field(default=())  # this file and its bases, child first

    @property
    def name(self) -> str:
        name = self.data.get("name")
        return name if isinstance(name, str) and name else self.path.stem

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def components(self) -> Node:
        return self.data.get("components") or Node()

    @property
    def audio(self) -> Any:
        """The ``audio:`` section as a tta_core.data.config.AudioConfig (RecipeError when its
        values cannot work). Built once, and again only when the section changes."""
        from .data.config import AudioConfig

        section = to_plain(self.data.get("audio"))
        cached = self.__dict__.get("_audio")
        if cached is None or cached[0] != section:
            cached = self.__dict__["_audio"] = (section, AudioConfig.from_mapping(section))
        return cached[1]

    @property
    def run_dir(self) -> Path:
        """Where the recipe's runs go: its ``run_dir:`` (a relative one is taken from the recipe
        file's folder, so a run directory can hold its own recipe), else ``runs/<name>``."""
        value = self.data.get("run_dir")
        if value:
            path = Path(value).expanduser()
            return path if path.is_absolute() else self.path.parent / path
        return Path("runs") / self.name

    def to_dict(self) -> dict:
        return to_plain(self.data)

    def dump(self) -> str:
        return dump_yaml(self.data)


def _read(path: Path) -> Node:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([RecipeIssue(None, f"recipe not found: {path}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError([RecipeIssue(None, f"cannot read recipe {path}: {exc}")]) from None
    try:
        data = load_yaml(text, str(path))
    except YamlError as exc:
        raise RecipeError([RecipeIssue(exc.loc, exc.message)]) from None
    if data is None:
        data = Node(loc=Loc(str(path), 1))
    if not isinstance(data, Node):
        raise RecipeError([RecipeIssue(Loc(str(path), 1), "a recipe is a YAML mapping of sections")])
    return data


def _is_node(value: Any) -> bool:
    return isinstance(value, dict) and "type" in value


def merge(base: Any, child: Any) -> Any:
    """Deep merge: mappings merge, everything else (lists included) is replaced by ``child``."""
    if not (isinstance(base, dict) and isinstance(child, dict)):
        return child
    if _is_node(base) and _is_node(child) and base["type"] != child["type"]:
        return child
    out = Node(loc=getattr(child, "loc", None))
    for key, value in base.items():
        out[key] = value
        out.locs[key] = base.loc_of(key) if isinstance(base, Node) else None
    for key, value in child.items():
        out[key] = merge(base[key], value) if key in base else value
        out.locs[key] = child.loc_of(key) if isinstance(child, Node) else None
    return out


def _resolve(path: Path, chain: tuple[Path, ...]) -> tuple[Node, tuple[Path, ...]]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise RecipeError([RecipeIssue(None, f"recipes inherit in a cycle: {cycle}")])
    data = _read(path)
    base = data.pop("base", None)
    if base is None:
        return data, (path,)
    if not isinstance(base, str) or not base:
        raise RecipeError([RecipeIssue(data.loc_of("base"), "base: takes a path to a recipe")])
    base_path = Path(base) if os.path.isabs(base) else path.parent / base
    if not base_path.exists():
        raise RecipeError(
            [RecipeIssue(data.loc_of("base"), f"base recipe not found: {base} (looked at {base_path})")]
        )
    base_data, base_files = _resolve(base_path, (*chain, path))
    return merge(base_data, data), (path, *base_files)


def load_recipe(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Recipe:
    """Read a recipe with its bases and apply ``key.path=value`` overrides (YAML-typed)."""
    path = Path(path)
    data, files = _resolve(path, ())
    overrides = tuple(overrides)
    issues = []
    for text in overrides:
        try:
            apply_override(data, text)
        except RecipeError as exc:
            issues.extend(exc.issues)
    if issues:
        raise RecipeError(issues)
    return Recipe(path=path, data=data, overrides=overrides, files=files)


def apply_override(data: Node, text: str) -> None:
    """Apply one ``a.b.c=value`` override in place.

    List items are addressed by index (``train.0.max_steps=10``) or, for lists of named
    mappings such as stages, by name (``train.ldm.max_steps=10``).
    """
    loc = Loc(f"--set {text}")
    key_path, sep, raw = text.partition("=")
    keys = key_path.strip().split(".")
    if not sep or not all(keys):
        raise RecipeError([RecipeIssue(loc, "an override is KEY.PATH=VALUE, e.g. train.0.max_steps=10")])
    try:
        value = load_yaml(raw, loc.file) if raw.strip() else ""
    except YamlError as exc:
        raise RecipeError([RecipeIssue(loc, exc.message)]) from None
    target: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(target, dict):
            if last:
                target[key] = value
                if isinstance(target, Node):
                    target.locs[key] = loc
                return
            if key not in target or target[key] is None:
                target[key] = Node(loc=loc)
                if isinstance(target, Node):
                    target.locs[key] = loc
            target = target[key]
        elif isinstance(target, list):
            index = _list_index(target, key)
            if index is None:
                names = [item.get("name") for item in target if isinstance(item, dict)]
                raise RecipeError(
                    [RecipeIssue(loc, f"'{where}': no item {key!r} in this list (indices 0-"
                                      f"{len(target) - 1}{', names ' + ', '.join(map(str, names)) if any(names) else ''})")]
                )
            if last:
                target[index] = value
                if isinstance(target, Seq):
                    target.locs[index] = loc
                return
            target = target[index]
        else:
            raise RecipeError(
                [RecipeIssue(loc, f"'{'.'.join(keys[:depth])}' is a {type(target).__name__}, "
                                  f"it has no key '{key}'")]
            )


def _list_index(items: list, key: str) -> int | None:
    if key.lstrip("-").isdigit():
        index = int(key)
        return index if -len(items) <= index < len(items) else None
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == key:
            return i
    return None


# -- validation -----------------------------------------------------------------------------


class _Validator:
    def __init__(self, recipe: Recipe, registry: Registry):
        self.recipe = recipe
        self.registry = registry
        self.issues: list[RecipeIssue] = []
        self.component_kinds: dict[str, str | None] = {}

    def add(self, loc: Loc | None, message: str) -> None:
        self.issues.append(RecipeIssue(loc, message))

    def run(self) -> list[RecipeIssue]:
        data = self.recipe.data
        for key in data:
            if key not in _SECTIONS:
                hint = closest(str(key), _SECTIONS)
                self.add(
                    data.loc_of(key),
                    f"unknown section '{key}'" + (f"; did you mean '{hint}'?" if hint else "")
                    + f" Sections: {', '.join(_SECTIONS)}.",
                )
        components = data.get("components")
        if components is not None:
            self._check_components(components, data.loc_of("components"))
        for key, spec in sections().items():
            if key not in data or key == "components":
                continue
            if spec == "train":
                self._check_train(data[key], data.loc_of(key))
            else:
                self.check_value(data[key], spec, data.loc_of(key), key)
        return self.issues

    # components -------------------------------------------------------------------------
    def _check_components(self, components: Any, loc: Loc | None) -> None:
        if not isinstance(components, dict):
            self.add(loc, "components: is a mapping of names to {type: ...} nodes")
            return
        for name, node in components.items():
            where = _loc_in(components, name, loc)
            if not _is_node(node):
                self.add(where, f"component '{name}' needs a 'type:' naming a registered component")
                self.component_kinds[name] = None
                continue
            self.component_kinds[name] = self.check_node(node, None, where, f"components.{name}")

    def _check_train(self, stages: Any, loc: Loc | None) -> None:
        if not isinstance(stages, list):
            self.add(loc, "train: is a list of stages")
            return
        names: dict[str, Loc | None] = {}
        for i, stage in enumerate(stages):
            where = _loc_in(stages, i, loc)
            if not isinstance(stage, dict):
                self.add(where, "a stage is a mapping (name, objective, trains, ...)")
                continue
            name = stage.get("name")
            if not isinstance(name, str) or not name:
                self.add(where, "a stage needs a name: (used by --stage and in runs/<recipe>/<stage>/)")
            elif name in names:
                self.add(where, f"stage name '{name}' is used twice (first at {names[name]})")
            else:
                names[name] = where
            if "objective" not in stage:
                self.add(where, f"stage '{name}' needs an objective: {{type: ...}}")
            self.check_value(stage, stage_fields(), where, f"train.{name or i}")

    # one value against a spec -------------------------------------------------------------
    def check_value(self, value: Any, spec: Any, loc: Loc | None, path: str) -> None:
        """Check ``value`` against ``spec`` (a type annotation, or a dict of key specs)."""
        if isinstance(spec, dict):
            if value is None and getattr(spec, "nullable", False):
                return
            if not isinstance(value, dict):
                self.add(loc, f"'{path}' must be a mapping, got {_show(value)}")
                return
            for key, item in value.items():
                where = _loc_in(value, key, loc)
                if key not in spec:
                    hint = closest(str(key), spec)
                    self.add(where, f"unknown key '{key}' in '{path}'"
                             + (f"; did you mean '{hint}'?" if hint else "")
                             + f" Keys: {', '.join(spec)}.")
                    continue
                self.check_value(item, spec[key], where, f"{path}.{key}")
            return
        problem = self.type_problem(value, spec, loc, path)
        if problem:
            self.add(loc, f"'{path}': {problem}")

    def type_problem(self, value: Any, ann: Any, loc: Loc | None, path: str) -> str | None:
        """None when ``value`` fits annotation ``ann``; else what is wrong. Nested component
        nodes are validated (their own issues are added directly)."""
        if ann in (Any, inspect.Parameter.empty, object) or isinstance(ann, (str, typing.TypeVar)):
            return None
        if typing.get_origin(ann) is typing.Annotated:
            base, *meta = typing.get_args(ann)
            marker = next((m for m in meta if isinstance(m, (Component, Ref))), None)
            if marker is None or (value is None and self.type_problem(None, base, loc, path) is None):
                problem = self.type_problem(value, base, loc, path)
                ranges = [m.problem(value) for m in meta if isinstance(m, Range)] if problem is None else []
                return problem or next((p for p in ranges if p), None)
            ann = marker
        if isinstance(ann, Component):
            if not _is_node(value):
                return f"expected a {{type: ...}} node for a {'/'.join(ann.kinds)}, got {_show(value)}"
            self.check_node(value, ann.kinds, loc, path)
            return None
        if isinstance(ann, Ref):
            if not isinstance(value, str):
                return f"expected the name of a component, got {_show(value)}"
            if value not in self.component_kinds:
                hint = closest(value, self.component_kinds)
                return (f"no component named '{value}' in components:"
                        + (f"; did you mean '{hint}'?" if hint else "")
                        + f" Components: {', '.join(self.component_kinds) or 'none'}.")
            kind = self.component_kinds[value]
            if kind is not None and kind not in ann.kinds:
                return f"component '{value}' is {_a(kind)}, expected {_a(' or '.join(ann.kinds))}"
            return None
        origin = typing.get_origin(ann) or (ann if ann in (list, tuple, dict) else None)
        args = typing.get_args(ann)
        if origin in _UNIONS:
            for option in args:
                sub = _Validator(self.recipe, self.registry)
                sub.component_kinds = self.component_kinds
                if sub.type_problem(value, option, loc, path) is None and not sub.issues:
                    return None
            for option in args:  # the value has the type of an option, but not its range
                if typing.get_origin(option) is typing.Annotated:
                    base, *meta = typing.get_args(option)
                    if self.type_problem(value, base, loc, path) is None:
                        return next((m.problem(value) for m in meta if isinstance(m, Range) and m.problem(value)),
                                    None) or f"expected {_ann_name(ann)}, got {_show(value)}"
            return f"expected {_ann_name(ann)}, got {_show(value)}"
        if origin is typing.Literal:
            return None if value in args else f"expected one of {', '.join(map(repr, args))}, got {_show(value)}"
        if ann is type(None):
            return None if value is None else f"expected null, got {_show(value)}"
        if origin in _SEQUENCES:
            if not isinstance(value, list):
                return f"expected a list, got {_show(value)}"
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    return f"expected a list of {len(args)} items, got {len(value)}"
                item_anns = list(args)
            else:
                item_anns = [args[0] if args else Any] * len(value)
            for i, (item, item_ann) in enumerate(zip(value, item_anns)):
                self.check_value(item, item_ann, _loc_in(value, i, loc), f"{path}[{i}]")
            return None
        if origin in _MAPPINGS:
            if not isinstance(value, dict):
                return f"expected a mapping, got {_show(value)}"
            for key, item in value.items() if len(args) == 2 else ():
                self.check_value(item, args[1], _loc_in(value, key, loc), f"{path}.{key}")
            return None
        if ann is bool:
            return None if isinstance(value, bool) else f"expected true/false, got {_show(value)}"
        if ann is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            return None if ok else f"expected an integer, got {_show(value)}"
        if ann is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and not math.isfinite(value):
                return f"expected a finite number, got {_show(value)}"
            return None if ok else f"expected a number, got {_show(value)}"
        if ann is str:
            return None if isinstance(value, str) else f"expected a string, got {_show(value)}"
        if isinstance(ann, type) and issubclass(ann, os.PathLike):
            return None if isinstance(value, str) else f"expected a path, got {_show(value)}"
        return None  # a type a recipe cannot spell (a tensor, a module): the factory checks it

    # one component node --------------------------------------------------------------------
    def check_node(self, node: dict, kinds: tuple[str, ...] | None, loc: Loc | None, path: str) -> str | None:
        """Validate a ``{type: ...}`` node; returns its kind when it could be resolved."""
        type_loc = _loc_in(node, "type", loc)
        name = node.get("type")
        explicit = node.get("kind")
        if explicit is not None:
            if explicit not in KINDS:
                hint = closest(str(explicit), KINDS)
                self.add(_loc_in(node, "kind", loc), f"'{path}': unknown kind '{explicit}'"
                         + (f"; did you mean '{hint}'?" if hint else "") + f" Kinds: {', '.join(KINDS)}.")
                return None
            if kinds is not None and explicit not in kinds:
                self.add(_loc_in(node, "kind", loc), f"'{path}': a {explicit} does not fit here; expected a {' or '.join(kinds)}")
                return None
            kinds = (explicit,)
        search = kinds or MODEL_KINDS
        if not isinstance(name, str) or not name:
            self.add(type_loc, f"'{path}': type: must name a registered {' / '.join(search)}")
            return None
        if "." in name or ":" in name or "/" in name:
            self.add(type_loc, f"'{path}': type: '{name}' looks like an import path; recipes name "
                               "registered components only (a plugin registers the code; see CONTRIBUTING.md)")
            return None
        found = [k for k in search if self.registry.has(k, name)]
        if not found:
            self.add(type_loc, f"'{path}': " + self.registry.unknown_message(search[0], name, list(search)))
            return None
        if len(found) > 1:
            self.add(type_loc, f"'{path}': '{name}' is registered as {' and as '.join(found)}; "
                               f"say which with kind: {found[0]}")
            return None
        kind = found[0]
        entry = self.registry.get(kind, name)
        try:
            factory = entry.load()
        except Exception as exc:  # a plugin whose factory cannot be imported
            self.add(type_loc, f"'{path}': {kind} '{name}' from {entry.origin.describe()} cannot be "
                               f"loaded: {type(exc).__name__}: {exc}")
            return kind
        self._check_kwargs(node, factory, kind, name, loc, path)
        return kind

    def _check_kwargs(self, node: dict, factory: Any, kind: str, name: str, loc: Loc | None, path: str) -> None:
        params, hints, var_kw = signature_of(factory)
        if params is None:
            return
        for key, value in node.items():
            if key in ("type", "kind"):
                continue
            where = _loc_in(node, key, loc)
            if key in INJECTED_ARGS and key in params:
                self.add(where, f"'{path}.{key}' is filled in by tta from the recipe; do not set it here")
                continue
            if key not in params:
                if var_kw:
                    continue
                settable = [p for p in params if p not in INJECTED_ARGS]
                hint = closest(str(key), settable)
                self.add(where, f"'{path}': {kind} '{name}' takes no argument '{key}'"
                         + (f"; did you mean '{hint}'?" if hint else "")
                         + f" Arguments: {', '.join(settable) or 'none'}.")
                continue
            self.check_value(value, hints.get(key, Any), where, f"{path}.{key}")
        for pname, param in params.items():
            if param.default is inspect.Parameter.empty and pname not in node and pname not in INJECTED_ARGS:
                self.add(loc, f"'{path}': {kind} '{name}' needs the argument '{pname}'")


_UNIONS = (typing.Union, types.UnionType)
_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable)
_MAPPINGS = (dict, collections.abc.Mapping)


def signature_of(factory: Any) -> tuple[dict[str, inspect.Parameter] | None, dict[str, Any], bool]:
    """(keyword parameters, resolved annotations, takes **kwargs) of a factory."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None, {}, True
    params = {
        n: p for n, p in sig.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # annotations that only resolve under TYPE_CHECKING
        hints = {n: p.annotation for n, p in params.items() if not isinstance(p.annotation, str)}
    return params, hints, var_kw


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _loc_in(container: Any, key: Any, fallback: Loc | None) -> Loc | None:
    if isinstance(container, (Node, Seq)):
        return container.loc_of(key) or fallback
    return fallback


def _show(value: Any) -> str:
    text = repr(to_plain(value))
    text = text if len(text) <= 40 else text[:37] + "..."
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    name = kind.get(type(value), "list" if isinstance(value, list) else "mapping" if isinstance(value, dict) else type(value).__name__)
    return f"{name} {text}"


def _ann_name(ann: Any) -> str:
    if typing.get_origin(ann) is typing.Annotated:
        return _ann_name(typing.get_args(ann)[0])
    if typing.get_origin(ann) in _UNIONS:
        return " or ".join(_ann_name(a) for a in typing.get_args(ann))
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def validate(recipe: Recipe, registry: Registry) -> list[RecipeIssue]:
    """Every problem in the recipe, each with its location; an empty list when it is valid."""
    return _Validator(recipe, registry).run()


def check(recipe: Recipe, registry: Registry) -> Recipe:
    """Validate and raise :class:`RecipeError` listing every problem."""
    issues = validate(recipe, registry)
    if issues:
        raise RecipeError(issues)
    return recipe


def component_kind(recipe: Recipe, name: str, registry: Registry) -> str:
    """The registry kind of the component called ``name`` in ``components:``."""
    node = recipe.components[name]
    if node.get("kind"):
        return node["kind"]
    (kind,) = [k for k in MODEL_KINDS if registry.has(k, node["type"])]
    return kind


def build(node: Mapping, kind: str, registry: Registry, *, where: str | None = None, **injected: Any) -> Any:
    """Build a component from a validated node; ``injected`` fills INJECTED_ARGS it takes.

    What the factory raises reaches the user as a TtaError that names the component
    (``where``, e.g. ``components.vae``, else the node's file:line) and keeps the error's own
    text, so it reads without --debug (which still shows the original traceback): a
    ValueError or TypeError is a RecipeError (exit 2: the recipe's values do not fit the
    network), anything else a runtime failure (exit 1). TtaErrors pass through unchanged."""
    import traceback

    from .errors import TtaError

    entry = registry.get(kind, node["type"])
    factory = entry.load()
    params, _, _ = signature_of(factory)
    kwargs = {k: to_plain(v) for k, v in node.items() if k not in ("type", "kind")}
    for key, value in injected.items():
        if params is None or key in params:
            kwargs[key] = value
    try:
        return factory(**kwargs)
    except TtaError:
        raise
    except Exception as exc:
        text = str(exc).strip()
        if not text:  # a bare assert or raise: where it was raised is all there is to say
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            text = f"(no message) at {Path(frame.filename).name}:{frame.lineno}: {(frame.line or '').strip()}"
        loc = None if where else getattr(node, "loc", None)
        message = (f"{where + ': ' if where else ''}{node['type']} ({kind}) could not be built: "
                   f"{type(exc).__name__}: {text}\n  "
                   + (f"check {where} against this message (--set {where}.KEY=VALUE changes a setting)" if where
                      else f"check the {kind}'s settings in the recipe against this message")
                   + "; --debug shows the traceback")
        if isinstance(exc, (ValueError, TypeError)):
            raise RecipeError([RecipeIssue(loc, message)]) from exc
        raise TtaError(f"{loc}: {message}" if loc else message) from exc
