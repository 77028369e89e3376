"""Turning TOML values and environment strings into the typed fields of a config section.

Used by every config (:mod:`edge.config`, the processor's, the retraining job's, the training
configuration :mod:`models.config`) through :func:`build_section`; every failure is a :class:`ConfigError` that says where the value
came from (file and dotted key, or the environment variable) and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import Field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from edge.contract import ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "EDGEWATCH_"


_HOST_RE = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?\])$")


def check_host_ports(value: str, key: str, where: str) -> None:
    """Check a ``host:port[,host:port...]`` list (a Kafka bootstrap); a :class:`ConfigError` naming
    ``where`` and the dotted ``key`` says which entry is wrong and why.

    Each entry needs a host name, an IPv4 address or a bracketed IPv6 address (``[::1]:9092``),
    and a port 1-65535; blanks around entries are allowed. Shared by every deployable's config
    so that a bad list fails at start instead of in a client's retry loop.
    """
    def bad(rule: str) -> ConfigError:
        return ConfigError(f"{where}: '{key}' = {value!r} {rule} (expected host:port[,host:port...])")

    if not value.strip():
        raise bad("must not be empty")
    for item in (part.strip() for part in value.split(",")):
        host, sep, port = item.rpartition(":")
        if not item or not sep:
            raise bad(f"has an entry {item!r} without a port")
        if not _HOST_RE.match(host):
            raise bad(f"has an entry {item!r} whose host {host!r} is not a host name or address")
        if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise bad(f"has an entry {item!r} whose port {port!r} is not 1-65535")


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or bad syntax is a :class:`ConfigError` naming it."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def env_overrides(env: Mapping[str, str], section: str, known: Mapping[str, Field[Any]], *,
                  strict: bool = False) -> dict[str, tuple[str, str]]:
    """``{key: (variable, text)}`` for every ``EDGEWATCH_<SECTION>__<KEY>`` naming a known key.

    A variable in this section with an unknown key is logged and ignored (other edgewatch
    deployables on the same host read the same prefix), or with ``strict`` a :class:`ConfigError`.
    """
    head = f"{ENV_PREFIX}{section.upper()}__"
    out: dict[str, tuple[str, str]] = {}
    for var, text in env.items():
        if not var.startswith(head):
            continue
        key = var[len(head):].lower()
        if key in known:
            out[key] = (var, text)
        elif strict:
            raise ConfigError(f"environment: {var} names unknown key {section}.{key} (known: {', '.join(known)})")
        else:
            log.warning("config_env_ignored variable=%s reason=unknown_key section=%s", var, section)
    return out


def build_section(cls: type, table: Any, name: str, where: str, env: Mapping[str, str],
                  secrets: frozenset[str] = frozenset(), strict_env: bool = False,
                  renamed: Mapping[str, str] | None = None) -> Any:
    """One ``[name]`` table as an instance of the frozen dataclass ``cls``: :func:`section_values`
    over its defaults."""
    return cls(**section_values(cls, table, name, where, env, secrets, strict_env, renamed))


def section_values(cls: type, table: Any, name: str, where: str, env: Mapping[str, str],
                   secrets: frozenset[str] = frozenset(), strict_env: bool = False,
                   renamed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The values one ``[name]`` table sets on the dataclass ``cls``: file values checked, then
    ``EDGEWATCH_<NAME>__<KEY>`` overrides parsed. An unknown key in the file is an error naming
    the file and the dotted key; keys in ``secrets`` are refused in the file (environment only).
    An unknown key in the environment is logged, or with ``strict_env`` an error. ``renamed``
    maps deprecated keys to their new names: they still work, with a warning, in the file and in
    the environment; a deprecated key beside its new name is an error."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: {name} must be a table [{name}], got {type(table).__name__}")
    if renamed:
        table = _new_names(dict(table), renamed, f"{where}: '{name}.", "'")
        env = _new_names(dict(env), {f"{ENV_PREFIX}{name.upper()}__{old.upper()}": f"{ENV_PREFIX}{name.upper()}__{new.upper()}"
                                     for old, new in renamed.items()}, "environment ", "")
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{name}.{key}' (known: {', '.join(known)})")
        if key in secrets:
            raise ConfigError(f"{where}: '{name}.{key}' is a secret and is read from the environment only "
                              f"({ENV_PREFIX}{name.upper()}__{key.upper()})")
        values[key] = coerce(value, cls, key, f"{where}: '{name}.{key}'", from_env=False)
    for key, (var, text) in env_overrides(env, name, known, strict=strict_env).items():
        values[key] = coerce(text, cls, key, f"environment {var} ('{name}.{key}')", from_env=True)
    return values


def _new_names(found: dict[str, Any], renamed: Mapping[str, str], before: str, after: str) -> dict[str, Any]:
    """``found`` with each deprecated key of ``renamed`` under its new name (a warning each)."""
    for old, new in renamed.items():
        if old in found:
            if new in found:
                raise ConfigError(f"{before}{old}{after} is the deprecated name of {before}{new}{after}: set only {new}")
            log.warning("config_key_deprecated key=%s%s%s use=%s", before, old, after, new)
            found[new] = found.pop(old)
    return found


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(value: Any, cls: type, key: str, where: str, *, from_env: bool) -> Any:
    """Check (TOML) or parse (environment string) ``value`` as the type of ``cls.key``."""
    return _coerce(value, _hints(cls)[key], where, from_env)


def _coerce(value: Any, tp: Any, where: str, from_env: bool) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if from_env and value.strip().lower() in ("", "none"):
            return None
        return _coerce(value, args[0], where, from_env)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} must be one of {', '.join(map(repr, allowed))}")
        return value
    if origin is not None and issubclass(origin, Mapping):
        if get_origin(get_args(tp)[1]) is tuple:
            return _lists(value, where, from_env)
        return _mapping(value, where, from_env)
    if origin is tuple:
        return _numbers(value, where, from_env)
    if tp is bool:
        return _bool(value, where, from_env)
    if tp is int:
        return _int(value, where, from_env)
    if tp is float:
        return _float(value, where, from_env)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # a bug in a section definition


def parse_bool(text: str) -> bool:
    """``1 true yes on`` / ``0 false no off`` (any case); ValueError otherwise (an argparse ``type``)."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _bool(value: Any, where: str, from_env: bool) -> bool:
    if from_env:
        try:
            return parse_bool(value)
        except ValueError:
            raise ConfigError(f"{where}: expected true or false, got {value!r}") from None
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {type(value).__name__} {value!r}")
    return value


def _int(value: Any, where: str, from_env: bool) -> int:
    if from_env:
        try:
            return int(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if type(value) is not int:
        raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    return value


def _float(value: Any, where: str, from_env: bool) -> float:
    if from_env:
        try:
            out = float(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    else:
        out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{where}: {value!r} must be finite")
    return out


def _numbers(value: Any, where: str, from_env: bool) -> tuple[float, ...]:
    """A list of numbers (e.g. waves = [10, 50, 100]); from the environment ``10,50,100``."""
    if from_env:
        value = [p.strip() for p in value.split(",") if p.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of numbers, got {type(value).__name__} {value!r}")
    return tuple(_float(v, where, from_env) for v in value)


def _mapping(value: Any, where: str, from_env: bool) -> dict[str, float]:
    """A table of name to number; from the environment ``name=1.5,other=2``."""
    if from_env:
        pairs: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in value.split(","))):
            name, sep, number = item.partition("=")
            if not sep:
                raise ConfigError(f"{where}: {item!r} must look like name=number")
            pairs[name.strip()] = number
        value = pairs
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table of name = number, got {type(value).__name__}")
    return {str(k): _float(v, _nested(where, str(k)), from_env) for k, v in value.items()}


def _lists(value: Any, where: str, from_env: bool) -> dict[str, tuple[str, ...]]:
    """A table of name to a list of strings (e.g. site = [device ids]); not settable from the environment."""
    if from_env:
        raise ConfigError(f"{where}: a table of lists cannot be set from the environment")
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table of name = [strings], got {type(value).__name__}")
    out: dict[str, tuple[str, ...]] = {}
    for k, v in value.items():
        if not isinstance(v, list) or not all(isinstance(d, str) for d in v):
            raise ConfigError(f"{_nested(where, str(k))}: expected a list of strings, got {v!r}")
        out[str(k)] = tuple(v)
    return out


def _nested(where: str, key: str) -> str:
    """``file: 'a.b'`` and ``c`` give ``file: 'a.b.c'``: one dotted key for a table's entry."""
    return f"{where[:-1]}.{key}'" if where.endswith("'") else f"{where}.{key}"
