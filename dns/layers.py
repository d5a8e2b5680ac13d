"""Layers by name: which layers a setting picks, as names, kinds ('conv', 'fc') or glob patterns.

Deep nets have too many layers to list: `layer3.*`, `*.downsample.*` or `features.?` pick them by their
`named_modules` names (fnmatch: `*` runs across dots too). Pure functions over {layer name: kind} maps, so
that the config check, dns-train and the Python API read a selection the same way.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import TypeVar

KINDS = ("conv", "fc")  # the keywords a selection may use beside names and patterns, and 'all'
V = TypeVar("V")


def is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def matches(pattern: str, name: str) -> bool:
    """Whether `pattern` (a layer name or a glob) picks the layer `name`."""
    return pattern == name or (is_pattern(pattern) and fnmatchcase(name, pattern))


def matching(pattern: str, names: list[str]) -> list[str]:
    """The names `pattern` picks."""
    return [name for name in names if matches(pattern, name)]


def specificity(pattern: str) -> tuple[int, int]:
    """How specific a key is: an exact name beats any pattern, then the more literal characters the better
    (`*.downsample.*` beats `layer3.*` for `layer3.0.downsample.0`)."""
    literal = len(re.sub(r"\[[^]]*\]|[*?]", "", pattern))  # a [...] class stands for one character: not literal
    return (0 if is_pattern(pattern) else 1, literal)


def _no_match(what: str, item: str, names: list[str]) -> ValueError:
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} layers)" if len(names) > 12 else "")
    return ValueError(f"{what}: {item!r} matches no layer; layers are {shown}")


def select_layers(selection: str | list[str], kinds: dict[str, str], exclude: str | list[str] = (),
                  what: str = "layers") -> list[str]:
    """Names of the layers `selection` picks, minus those `exclude` picks, in the order of `kinds`.

    Each item is 'all', a kind ('conv', 'fc'), a layer name or a glob pattern over layer names; `kinds` maps
    every layer name to its kind, in forward order. An item that picks no layer is an error, never ignored.
    """
    def pick(items: str | list[str], key: str) -> set[str]:
        if not isinstance(items, (str, list, tuple)):
            raise ValueError(f"{key}={items!r}: give all, conv, fc, a layer name or pattern, or a list of those")
        picked: set[str] = set()
        for item in [items] if isinstance(items, str) else list(items):
            if not isinstance(item, str):
                raise ValueError(f"{key}: {item!r} is not a layer name: give all, conv, fc, names or patterns")
            if item == "all":
                picked.update(kinds)
            elif item in KINDS:  # a keyword, even where a layer bears that name (ResNet's `fc` is one anyway)
                picked.update(name for name, kind in kinds.items() if kind == item)
            else:
                found = matching(item, list(kinds))
                if not found:
                    raise _no_match(key, item, list(kinds))
                picked.update(found)
        return picked

    chosen = pick(selection, what) - pick(exclude, "exclude")
    return [name for name in kinds if name in chosen]


def per_layer(what: str, values: dict[str, V] | None, names: list[str]) -> dict[str, V]:
    """{layer name: value} from {name or pattern: value}: each layer takes the value of the most specific key
    that matches it. Keys are names and patterns only ('fc' is the layer named fc, not every fc layer). A key that matches no layer, or two equally specific keys with different values for one
    layer, is a ValueError naming them."""
    values = values or {}
    for key in values:
        if not matching(key, names):
            raise _no_match(what, key, names)
    resolved = {}
    for name in names:
        keys = [key for key in values if matches(key, name)]
        if not keys:
            continue
        best = max(specificity(key) for key in keys)
        closest = [key for key in keys if specificity(key) == best]
        if len({values[key] for key in closest}) > 1:
            raise ValueError(f"{what}: {closest[0]!r} and {closest[1]!r} both match {name!r} as closely and disagree "
                             f"({values[closest[0]]} against {values[closest[1]]}); add an entry for {name!r} itself")
        resolved[name] = values[closest[0]]
    return resolved
