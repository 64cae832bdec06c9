"""Loading a run configuration: YAML, then options, then ``KEY=VALUE`` overrides, into frozen dataclasses.

There is one configuration system. A config file (YAML) gives a nested mapping; command-line
overrides are dotted ``key=value`` strings (``actors.max=4``, ``optim.batch_size=32``) whose values
are parsed as YAML scalars. Unknown keys and wrongly typed values stop the run before any work
starts, with a message that names the key and the fix.

Each field is declared once, with :func:`option`: its default, its meaning, and (where it has
one) its command-line flag. The ``segpipe`` parser and ``docs/configuration.md`` are both derived
from those declarations (:func:`option_fields`, :func:`reference_markdown`). A config class may
name ``ALIASES``: older flat keys that still work and are read as their grouped key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the key and the fix."""


def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,  # noqa: A002 - argparse's word
           choices: tuple[Any, ...] | None = None, default_text: str | None = None, positional: bool = False,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """Return a dataclass field that documents itself and, with ``flag``, is a command-line option.

    ``help`` says what the key means (the CLI help and the reference both use it); ``flag`` is its
    option (``--batch-size``; a bool's flag sets it to True, or with ``--no-`` to False);
    ``default_text`` describes a default that is computed (``automatic``); ``positional`` makes the
    key the command's positional argument instead of a flag.
    """
    metadata = {"help": help, "flag": flag, "choices": choices, "default_text": default_text,
                "positional": positional}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class OptionField:
    """One leaf key of a config class: its dotted key, type, default and declaration."""

    key: str
    kind: Any
    default: Any
    help: str
    flag: str | None
    choices: tuple[Any, ...] | None
    default_text: str | None
    positional: bool

    def shown_default(self) -> str:
        """Return the default as the reference and the help show it."""
        if self.default_text:
            return self.default_text
        if self.default is None or self.default == "":
            return "none"
        return str(self.default).lower() if isinstance(self.default, bool) else str(self.default)


def option_fields(cls: type, prefix: str = "") -> Iterator[OptionField]:
    """Yield every leaf key of ``cls`` (nested sections flattened to dotted keys), in declaration order."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            yield from option_fields(kind, f"{prefix}{field.name}.")
            continue
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        meta = field.metadata
        yield OptionField(f"{prefix}{field.name}", kind, default, meta.get("help", ""), meta.get("flag"),
                          meta.get("choices"), meta.get("default_text"), bool(meta.get("positional")))


def reference_markdown(cls: type, title: str) -> str:
    """Return the Markdown reference of ``cls``: a table of every key, default, flag and meaning, then its aliases."""
    lines = [f"## {title}", "", "| key | default | option | meaning |", "|---|---|---|---|"]
    for item in option_fields(cls):
        flag = "(positional)" if item.positional else f"`{item.flag}`" if item.flag else ""
        choices = f" One of: {', '.join(f'`{c}`' for c in item.choices)}." if item.choices else ""
        lines.append(f"| `{item.key}` | {item.shown_default()} | {flag} | {item.help}{choices} |")
    aliases = getattr(cls, "ALIASES", {})
    if aliases:
        lines += ["", "Older flat keys still work and are read as the grouped key: "
                  + ", ".join(f"`{old}` → `{new}`" for old, new in aliases.items()) + "."]
    for old, new in getattr(cls, "GROUP_ALIASES", {}).items():
        lines += ["", f"The group `{new}` was named `{old}` before: `{old}.*` keys still work and are read as `{new}.*`."]
    return "\n".join(lines) + "\n"


def public_dict(config: Any) -> dict[str, Any]:
    """Return a config dataclass with a ``storage`` field as plain data, credentials redacted."""
    values = dataclasses.asdict(config)
    values["storage"] = config.storage.redacted()
    return values


ConfigT = TypeVar("ConfigT")


def load_config(
    cls: type[ConfigT],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
) -> ConfigT:
    """Return a ``cls`` built from an optional YAML file, then ``options`` (typed values by dotted
    key, e.g. from command-line flags), then dotted ``key=value`` override strings.

    Keys ``cls.ALIASES`` names (older flat keys) are read as their grouped keys, wherever they appear.
    """
    aliases: Mapping[str, str] = {**getattr(cls, "ALIASES", {}), **{
        f"{old}.": f"{new}." for old, new in getattr(cls, "GROUP_ALIASES", {}).items()}, **{
        old: new for old, new in getattr(cls, "GROUP_ALIASES", {}).items()}}
    values: dict[str, Any] = {}
    if path is not None:
        for key, value in read_yaml_mapping(path).items():
            set_dotted(values, aliased(key, value, aliases), value)
    for key, value in (options or {}).items():
        set_dotted(values, aliased(key, value, aliases), value)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(values, aliased(key, value, aliases), value)
    return build_dataclass(cls, values)


def aliased(key: str, value: Any, aliases: Mapping[str, str]) -> str:
    """Return the grouped key an old flat ``key`` stands for (a section's name given a plain value
    stands for its ``enabled`` key, e.g. ``augment: false``), a renamed group's new name for its old
    one (an alias ending in ``.`` renames every key under it), else ``key``."""
    head, dot, rest = key.partition(".")
    if dot and f"{head}." in aliases:
        return aliases[f"{head}."] + rest
    if key in aliases and (not isinstance(value, Mapping) or f"{key}." in aliases):
        return aliases[key]
    return key


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Return the mapping stored in a YAML file; an empty file is an empty mapping."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}; check the path") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


class OverrideText(str):
    """The text of a ``KEY=VALUE`` override, parsed only once the key's type is known."""


def parse_override(item: str) -> tuple[str, OverrideText]:
    """Split ``"a.b=value"`` into the key and the raw value text."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not KEY=VALUE; write e.g. actors.max=4")
    return key.strip(), OverrideText(raw)


def override_value(text: OverrideText, kind: Any) -> Any:
    """Return override text as-is for a text key, else parsed as a YAML scalar (``4``, ``1.5``, ``true``, ``null``)."""
    import yaml

    if kind is str and text.strip() not in ("", "null", "~"):
        return str(text)
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return str(text)


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """Set ``values["a"]["b"] = value`` for ``key="a.b"``, creating nested mappings as needed.

    A mapping merges into a section already there, so a section given in the file and one of its
    keys given as an option both count.
    """
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}=...: '{part}' is a value, not a section")
        node = child
    if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
        for name, item in value.items():
            set_dotted(node[leaf], name, item)
    else:
        node[leaf] = value


def check_choices(config: Any, section: str = "") -> None:
    """Raise ConfigError naming the key (``section`` + field) if a field declared with ``choices``
    (:func:`option`) holds a value that is neither one of them nor the field's default (an unset
    default such as ``""`` means "decide for me")."""
    for field in dataclasses.fields(config):
        choices = field.metadata.get("choices")
        value = getattr(config, field.name)
        if not choices or value in choices or value == field.default:
            continue
        shown = [str(choice) for choice in choices]
        listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]
        raise ConfigError(f"{section}{field.name}={value!r}: choose {listed}")


def build_dataclass(cls: type[ConfigT], values: Mapping[str, Any], prefix: str = "") -> ConfigT:
    """Return ``cls(**values)`` with nested sections built recursively and values type-checked."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{prefix.rstrip('.')}' must be a section (a mapping), got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; known keys here: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, raw in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind) and isinstance(raw, kind):
            kwargs[name] = raw  # a section given as its config object
        elif dataclasses.is_dataclass(kind):
            kwargs[name] = build_dataclass(kind, raw or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = coerce_value(f"{prefix}{name}", raw, kind)
    return cls(**kwargs)


def coerce_value(key: str, value: Any, kind: Any) -> Any:
    """Return ``value`` converted to the annotated ``kind`` or raise a ConfigError naming ``key``."""
    args = typing.get_args(kind)
    optional = type(None) in args and (typing.get_origin(kind) in (typing.Union, types.UnionType))
    if optional:
        kind = next(a for a in args if a is not type(None))
    if isinstance(value, OverrideText):
        value = override_value(value, kind)
    if value is None and optional:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"config key '{key}' expects {kind.__name__}, got {value!r}")
