"""Protocol configuration: model defaults, then a YAML file, then ``--set key=value`` items, validated.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

Every error names the bad key or value and the valid ones (:class:`hil.errors.ConfigError`).
YAML is read by :func:`load_yaml`: safe types only (no Python objects), at most
:data:`MAX_YAML_BYTES`, :data:`MAX_YAML_ALIASES` aliases and :data:`MAX_YAML_NODES` nodes, so a
small file cannot expand into gigabytes ("billion laughs").
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hil.errors import ConfigError, did_you_mean
from hil.protocol import ProtocolSpec


def _model_fields_at(model: type[BaseModel], path: Sequence[Any]) -> type[BaseModel] | None:
    for part in path:
        info = model.model_fields.get(str(part))
        ann = getattr(info, "annotation", None) if info else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def format_validation_error(name: str, model: type[BaseModel], exc: ValidationError) -> str:
    """One line per problem: unknown keys list the valid ones, bad values name value and rule."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        if err["type"] == "extra_forbidden":
            parent = _model_fields_at(model, err["loc"][:-1])
            valid = ", ".join(parent.model_fields) if parent else "(see hil protocols)"
            hint = did_you_mean(str(err["loc"][-1]), parent.model_fields) if parent else ""
            lines.append(f"unknown config key {loc!r}{hint}; valid keys: {valid}")
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict) else "{...}"
            lines.append(f"{loc}={shown}: {err['msg']}")
    return (
        f"invalid config for protocol {name!r}:\n  " + "\n  ".join(lines)
        + f"\nFix the YAML file or --set item (`hil protocols {name}` lists keys, defaults and limits)."
    )


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


#: Largest YAML text read (bytes), aliases (``*name``) and nodes in it.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 100_000


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents whose aliases would expand them beyond a bound.

    An alias makes a YAML node appear again wherever it is used; nested aliases grow a document
    exponentially ("billion laughs": 411 bytes took over a minute and 2.3 GB in another loader once
    the loaded structure was walked). Counted while composing, before any Python object is built:
    at most ``max_aliases`` aliases, and at most ``max_expanded_nodes`` nodes once every alias is
    expanded (a recursive alias has no finite expansion and is refused too).
    """

    max_aliases = MAX_YAML_ALIASES
    max_expanded_nodes = MAX_YAML_NODES

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > self.max_aliases:
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"more than {self.max_aliases} aliases; a config needs few or none", event.start_mark
                )
        return super().compose_node(parent, index)

    def construct_document(self, node: Any) -> Any:
        self._check_expanded_size(node)
        return super().construct_document(node)

    def _check_expanded_size(self, root: Any) -> None:
        """Count the nodes of ``root`` with every alias expanded (memoised per node: linear in the file)."""
        sizes: dict[int, int] = {}
        active: set[int] = set()

        def size(node: Any) -> int:
            key = id(node)
            if key in sizes:
                return sizes[key]
            if key in active:
                raise yaml.composer.ComposerError(None, None, "a recursive alias (a node that contains itself)", node.start_mark)
            active.add(key)
            total = 1
            if isinstance(node, yaml.SequenceNode):
                total += sum(size(child) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                total += sum(size(k) + size(v) for k, v in node.value)
            active.discard(key)
            if total > self.max_expanded_nodes:
                raise yaml.composer.ComposerError(
                    None, None, f"the document expands to more than {self.max_expanded_nodes} nodes through its aliases",
                    node.start_mark,
                )
            sizes[key] = total
            return total

        size(root)


def load_yaml(text: str, where: str = "YAML") -> Any:
    """Parse untrusted YAML safely (see the module docstring); raises :class:`ConfigError`."""
    if len(text.encode("utf-8", "replace")) > MAX_YAML_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_YAML_BYTES} bytes; a config is much smaller than that.")
    loader = BoundedSafeLoader(text)
    try:
        return loader.get_single_data()
    except yaml.composer.ComposerError as exc:
        raise ConfigError(f"{where} is refused: {exc.problem} (aliases expand a small file into a huge one).") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from exc
    finally:
        loader.dispose()


def parse_set(item: str) -> dict[str, Any]:
    """``a.b=VALUE`` -> ``{"a": {"b": value}}``; VALUE is read as YAML (numbers, lists, true/false)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. --set batch=64), got {item!r}.")
    try:
        value = load_yaml(raw, "--set value") if raw.strip() else ""
    except ConfigError as exc:
        if "refused" in str(exc) or "larger than" in str(exc):
            raise
        value = raw
    return nest_key(key, value)


def nest_key(key: str, value: Any) -> dict[str, Any]:
    """``"a.b", v`` -> ``{"a": {"b": v}}`` (dotted config keys, as ``--set`` and ``--grid`` take them)."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML mapping of config keys (an empty file is an empty mapping)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"config file {p} is larger than {MAX_YAML_BYTES} bytes; a config is much smaller than that.")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}.") from exc
    data = load_yaml(text, f"config file {p}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values, got a {type(data).__name__}.")
    return data


def resolve_config(
    spec: ProtocolSpec,
    *,
    base: dict[str, Any] | BaseModel | None = None,
    config_file: str | os.PathLike[str] | None = None,
    sets: Iterable[str] = (),
) -> BaseModel:
    """Model defaults, then ``base``, then the YAML file, then ``--set`` items; validated."""
    data: dict[str, Any] = {}
    if isinstance(base, BaseModel):
        data = base.model_dump(mode="json")
    elif base:
        data = dict(base)
    if config_file is not None:
        data = _deep_merge(data, load_config_file(config_file))
    for item in sets:
        data = _deep_merge(data, parse_set(item))
    model = spec.config_model
    unknown = [k for k in data if k not in model.model_fields]
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r} for protocol {spec.name!r}{did_you_mean(unknown[0], model.model_fields)}; "
            f"valid keys: {', '.join(model.model_fields)}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(spec.name, model, exc)) from exc


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _type_name(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return name or str(annotation).replace("typing.", "")


def describe_config(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Keys of a config model with type, default, limits and description (for ``hil protocols``)."""
    schema = model.model_json_schema()
    props = schema.get("properties", {})
    out = []
    for name, info in model.model_fields.items():
        prop = props.get(name, {})
        limits = {k: prop[k] for k in (*_BOUNDS, "enum", "minItems", "maxItems", "pattern") if k in prop}
        items = prop.get("items") or next((a.get("items") for a in prop.get("anyOf", []) if "items" in a), None) or {}
        limits.update({f"items.{k}": v for k, v in items.items() if k in _BOUNDS})
        for alt in prop.get("anyOf", []):
            limits.update({k: alt[k] for k in (*_BOUNDS, "minItems", "maxItems") if k in alt})
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        out.append({
            "key": name,
            "type": _type_name(info.annotation),
            "default": default,
            "required": info.is_required(),
            "limits": limits,
            "description": info.description or "",
        })
    return out
