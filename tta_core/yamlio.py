"""A YAML loader for recipes: safe, strict, and remembering where every value came from.

- Built on ``yaml.SafeLoader``: no Python tags, so a recipe cannot run code.
- Duplicate keys are an error (plain PyYAML keeps the last one silently).
- ``1e-4`` and ``5e3`` are floats, as in YAML 1.2 (PyYAML reads them as strings).
- Mappings load as :class:`Node` and sequences as :class:`Seq`, which carry the file and
  line of themselves and of each key/item, so validation can point at the exact line.
- Aliases (``*name``) may add at most :data:`ALIAS_BUDGET` (100 000) nodes to a document,
  counted as it is composed: an alias bomb ("billion laughs", each level repeating the one
  before) is refused at the alias that passes the budget, before memory grows. Every node an
  alias stands for counts, however deep, each time the alias is used; a document without
  aliases has no limit. A recipe needs a few hundred nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class Loc:
    """A place in a recipe: a file and a 1-based line, or a command-line override."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


class Node(dict):
    """A mapping read from YAML; ``loc`` is where it starts, ``locs[key]`` where each key is."""

    def __init__(self, *args, loc: Loc | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loc = loc
        self.locs: dict[Any, Loc] = {}

    def loc_of(self, key) -> Loc | None:
        return self.locs.get(key, self.loc)


class Seq(list):
    """A sequence read from YAML; ``locs[i]`` is where item ``i`` is."""

    def __init__(self, *args, loc: Loc | None = None):
        super().__init__(*args)
        self.loc = loc
        self.locs: list[Loc | None] = [loc] * len(self)

    def loc_of(self, index: int) -> Loc | None:
        return self.locs[index] if 0 <= index < len(self.locs) else self.loc


class YamlError(Exception):
    """Malformed or unsafe YAML; ``loc`` says where."""

    def __init__(self, loc: Loc | None, message: str):
        super().__init__(f"{loc}: {message}" if loc else message)
        self.loc = loc
        self.message = message


#: The most nodes that aliases may add to one document (see the module doc).
ALIAS_BUDGET = 100_000


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self.alias_added = 0  # nodes the aliases composed so far stand for, expanded

    def compose_node(self, parent, index):
        # PyYAML shares an anchored node between its aliases, so loading stays small and the
        # blow-up comes later, in whatever walks the result. Count the expansion here, where
        # the alias is still in the event stream and its line is known.
        if not self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            node.expanded = 1 + sum(_expanded(child) for child in _children(node))
            return node
        event = self.peek_event()
        node = super().compose_node(parent, index)
        self.alias_added += _expanded(node)
        if self.alias_added > ALIAS_BUDGET:
            raise YamlError(
                Loc(self.name, event.start_mark.line + 1),
                f"the alias '*{event.anchor}' takes the document past the limit of {ALIAS_BUDGET} "
                "nodes that aliases may add (a recipe needs a few hundred; this looks like an "
                "alias bomb): write the values out instead of nesting aliases",
            )
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _expanded(node: yaml.Node) -> int:
    """How many nodes ``node`` stands for with every alias in it written out; a node still
    being composed (an alias to its own ancestor, refused later) counts as one."""
    return getattr(node, "expanded", 1)


_FLOAT = re.compile(
    r"""^[-+]?(?:(?:[0-9][0-9_]*)(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)$""", re.X
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _loc(loader: yaml.SafeLoader, node: yaml.Node) -> Loc:
    return Loc(loader.name, node.start_mark.line + 1)


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Node:
    loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
    result = Node(loc=_loc(loader, node))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise YamlError(_loc(loader, key_node), "a mapping key must be a plain value") from None
        if key in result:
            raise YamlError(
                _loc(loader, key_node),
                f"duplicate key '{key}' (first at line {result.locs[key].line}); "
                "YAML would silently keep only the last one",
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.locs[key] = _loc(loader, key_node)
    return result


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Seq:
    result = Seq(loc=_loc(loader, node))
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.locs.append(_loc(loader, item))
    return result


def _refuse_tag(loader: _Loader, suffix: str, node: yaml.Node):
    tag = node.tag
    if tag.startswith("tag:yaml.org,2002:python/"):
        short = "!!" + tag[len("tag:yaml.org,2002:"):]
        why = f"Python tag '{short}' is not allowed: recipes cannot run code"
    else:
        why = f"unknown tag '{tag}': recipes use plain YAML values only"
    raise YamlError(_loc(loader, node), why)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
_Loader.add_multi_constructor("", _refuse_tag)  # every tag without a safe constructor


def load_yaml(text: str, name: str) -> Any:
    """Parse one YAML document; ``name`` is used in locations (a path or ``--set ...``)."""
    loader = _Loader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except YamlError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Loc(name, mark.line + 1) if mark else Loc(name)
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise YamlError(loc, f"malformed YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise YamlError(Loc(name), f"malformed YAML: {exc}") from None
    finally:
        loader.dispose()


def to_plain(value: Any) -> Any:
    """Nodes and Seqs as plain dicts and lists (for dumping and for factories)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


def dump_yaml(value: Any) -> str:
    return yaml.safe_dump(to_plain(value), sort_keys=False, default_flow_style=False, width=100)
