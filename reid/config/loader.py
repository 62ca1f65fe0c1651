"""Load, validate, merge and save YAML experiment configs.

Resolution order (later wins): ``DEFAULTS`` <- each ``_base_`` file (recursively, in listed order)
<- the file itself <- command-line ``KEY=VALUE`` overrides. Every key is checked against ``DEFAULTS``
so a typo fails loudly with the closest valid key, instead of silently training with the default.

Scalar rule (YAML 1.2 core schema, in files and overrides alike): only ``null``, ``~`` or an empty
value mean None; ``none``/``None`` are ordinary strings (so ``model.pretrained=none`` is the string
"none" while ``model.gdfl.proj_dim=null`` is None); booleans are only ``true``/``false`` (so
``solver.amp=off`` stays the string "off"); ``1e-4`` is a float; dates are not parsed. In overrides
only, a number given for a string-typed key keeps its literal text (``output_dir=2024`` is "2024").
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from reid.config.defaults import CHOICES, DEFAULTS, NULLABLE_TYPES, get_defaults
from reid.utils.io import atomic_write_text

BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A config file or override is malformed, names an unknown key, or gives a value of the wrong type."""


class _ConfigYamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: no ``on/off/yes/no`` booleans, ``1e-4`` floats, no timestamps."""


_DROPPED_TAGS = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"}
_ConfigYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_ConfigYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text with the config scalar rules (see module docstring)."""
    try:
        return yaml.load(text, Loader=_ConfigYamlLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Resolve a config file (with ``_base_`` inheritance) and ``KEY=VALUE`` overrides over the defaults."""
    cfg = get_defaults()
    if path is not None:
        for file_path, data in _inheritance_chain(Path(path), ()):
            _merge_checked(cfg, data, DEFAULTS, source=str(file_path), prefix="")
    for text in overrides:
        key, value = _parse_override(text)
        _merge_checked(cfg, _nest(key, value), DEFAULTS, source=f"override {text!r}", prefix="")
    return cfg


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> dict[str, Any]:
    """Validate a (possibly partial) config mapping, e.g. one stored in a checkpoint, and fill in defaults."""
    cfg = get_defaults()
    _merge_checked(cfg, data, DEFAULTS, source=source, prefix="")
    return cfg


def config_to_yaml(cfg: Mapping[str, Any]) -> str:
    """YAML text that ``load_config`` reads back to the same config (key order kept)."""
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write the resolved config atomically, so a run folder never holds a truncated config."""
    atomic_write_text(path, config_to_yaml(cfg))


def diff_from_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys whose value differs from the default: a compact description of an experiment."""
    changed: dict[str, Any] = {}
    _collect_differences(cfg, DEFAULTS, "", changed)
    return changed


def _collect_differences(cfg: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str, out: dict) -> None:
    for key, value in cfg.items():
        default = defaults.get(key)
        if isinstance(value, Mapping) and isinstance(default, Mapping):
            _collect_differences(value, default, f"{prefix}{key}.", out)
        elif key not in defaults or value != default:
            out[f"{prefix}{key}"] = copy.deepcopy(value)


def _plain(value: Any) -> Any:
    """Turn tuples and other mappings into plain lists/dicts so safe_dump accepts them."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _inheritance_chain(path: Path, stack: tuple[Path, ...]) -> list[tuple[Path, dict[str, Any]]]:
    """Files to apply, bases first; ``stack`` holds the files currently being resolved (cycle detection)."""
    resolved = path.resolve()
    if resolved in stack:
        cycle = " -> ".join(str(p) for p in (*stack[stack.index(resolved) :], resolved))
        raise ConfigError(f"cyclic {BASE_KEY} inheritance: {cycle}")
    if not resolved.is_file():
        referrer = f" (listed in {BASE_KEY} of {stack[-1]})" if stack else ""
        raise FileNotFoundError(f"config file not found: {path}{referrer}")
    data = parse_yaml(resolved.read_text(encoding="utf-8"), source=str(resolved))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{resolved}: the top level must be a mapping of keys, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{resolved}: {BASE_KEY} must be a relative path or a list of paths, got {bases!r}")
    chain: list[tuple[Path, dict[str, Any]]] = []
    for base in bases:
        chain.extend(_inheritance_chain(resolved.parent / base, (*stack, resolved)))
    chain.append((resolved, data))
    return chain


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE, e.g. solver.base_lr=1e-4")
    raw = raw.strip()
    source = f"override {text!r}"
    default = _default_at(key, source)
    value = parse_yaml(raw, source=source)
    if isinstance(default, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = raw
    return key, value


def _default_at(dotted: str, source: str) -> Any:
    """The default at a dotted key; checking the whole key up front names it fully in the error."""
    node: Any = DEFAULTS
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise _unknown_key_error(dotted, source)
        node = node[part]
    return node


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    nested: Any = value
    for part in reversed(dotted.split(".")):
        nested = {part: nested}
    return nested


def _all_dotted_keys(schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in schema.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, Mapping):
            keys.extend(_all_dotted_keys(value, f"{prefix}{key}."))
    return keys


def _unknown_key_error(dotted: str, source: str) -> ConfigError:
    """The error for an unknown key, with the most likely intended key: a sibling in the same section
    first (``solver.lr`` -> ``solver.base_lr``), never the section itself."""
    parent, _, leaf = dotted.rpartition(".")
    candidates = [k for k in _all_dotted_keys(DEFAULTS) if not dotted.startswith(f"{k}.")]
    siblings = [k for k in candidates if k.rpartition(".")[0] == parent]
    sibling_leaves = {k.rpartition(".")[2]: k for k in siblings}
    matches = difflib.get_close_matches(leaf, list(sibling_leaves), n=1, cutoff=0.5)
    close = [sibling_leaves[m] for m in matches]
    if not close:
        close = [k for name, k in sibling_leaves.items() if leaf and (leaf in name or name in leaf)][:1]
    if not close:
        close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.5)
    if not close:
        close = [k for k in candidates if k.rpartition(".")[2] == leaf][:1]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{source}: unknown config key '{dotted}'{hint}")


def _merge_checked(
    target: dict[str, Any], updates: Any, schema: Mapping[str, Any], source: str, prefix: str
) -> None:
    """Copy ``updates`` into ``target`` after checking every key and value against ``schema``."""
    if not isinstance(updates, Mapping):
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(updates).__name__}")
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in schema:
            raise _unknown_key_error(dotted, source)
        default = schema[key]
        if isinstance(default, Mapping):
            _merge_checked(target[key], value, default, source, f"{dotted}.")
        else:
            target[key] = _checked_value(dotted, value, default, source)


def _checked_value(dotted: str, value: Any, default: Any, source: str) -> Any:
    if dotted in NULLABLE_TYPES:
        if value is None:
            return None
        return _checked_scalar(dotted, value, NULLABLE_TYPES[dotted], source, nullable=True)
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{dotted}' expects a list like {default!r}, got {value!r}")
        if not default:
            return list(value)
        return [_checked_scalar(dotted, item, type(default[0]), source) for item in value]
    checked = _checked_scalar(dotted, value, type(default), source)
    allowed = CHOICES.get(dotted)
    if allowed is not None and checked not in allowed:
        raise ConfigError(f"{source}: '{dotted}' must be one of {', '.join(allowed)}; got {checked!r}")
    return checked


_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}


def _checked_scalar(dotted: str, value: Any, expected: type, source: str, nullable: bool = False) -> Any:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is bool and isinstance(value, bool):
        return value
    if expected is int and is_number and isinstance(value, int):
        return value
    if expected is float and is_number:
        return float(value)
    if expected is str and isinstance(value, str):
        return value
    wanted = _TYPE_NAMES.get(expected, expected.__name__) + (" or null" if nullable else "")
    hint = " (quote it to make it a string)" if expected is str and value is not None else ""
    if nullable and isinstance(value, str) and value.lower() == "none":
        hint = " (write null, not none, for 'unset')"
    raise ConfigError(f"{source}: '{dotted}' expects {wanted}, got {value!r}{hint}")
