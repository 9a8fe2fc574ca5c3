"""The `serve` options, derived from ServerConfig: one command-line flag and one CHATSERVER_* variable per
leaf field, and docs/CONFIG.md rendered from the same list (tests/chatserver/test_cli.py fails
when the document is stale; `python -m chatserver config-doc > docs/CONFIG.md` renews it).

A field's metadata may set: help (required), flag (default: the field name, dashes for underscores),
env (default: CHATSERVER_ + the flag in upper case, underscores for dashes), choices, scale and unit
(the flag's value times scale is the field's), negate (a --no-... flag that sets the field False),
internal (not an option). Tuples are repeatable flags, comma-separated in the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatserver.config import ServerConfig


@dataclass(frozen=True)
class Option:
    path: tuple[str, ...]  # field names from ServerConfig down to the leaf
    kind: type  # int | float | str | Path | bool | tuple (of str)
    default: Any  # the field's default, in the field's unit
    flag: str
    env: str
    help: str
    choices: tuple[str, ...] | None = None
    scale: float = 1
    unit: str = ""
    negate: bool = False
    optional: bool = False  # None is a value (unset)

    @property
    def dest(self) -> str:
        return "__".join(self.path)

    def to_field(self, value: Any) -> Any:
        """A flag or environment value in the flag's unit -> the field's value."""
        if value is None or self.kind in (bool, tuple, str, Path) or self.scale == 1:
            return value
        return self.kind(value * self.scale)

    def shown_default(self) -> Any:
        """The default in the flag's unit."""
        if self.kind in (int, float) and self.default is not None and self.scale != 1:
            shown = self.default / self.scale
            return int(shown) if shown == int(shown) else shown
        return self.default


def options(cls: type = ServerConfig, path: tuple[str, ...] = ()) -> list[Option]:
    """Every option of the config class, in field order (nested parts in place)."""
    out: list[Option] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta, hint = f.metadata, hints[f.name]
        if meta.get("internal"):
            continue
        if dataclasses.is_dataclass(hint):
            out += options(hint, path + (f.name,))
            continue
        assert "help" in meta, f"{cls.__name__}.{f.name} needs help text"
        kind, optional = _kind(hint)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = meta.get("flag", f.name.replace("_", "-"))
        env = "CHATSERVER_" + meta.get("env", flag.upper().replace("-", "_"))
        out.append(Option(path + (f.name,), kind, default, flag, env, meta["help"], meta.get("choices"),
                          meta.get("scale", 1), meta.get("unit", ""), meta.get("negate", False), optional))
    return out


def _kind(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return tuple, optional
    return hint, optional


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve flags; their defaults come from the environment (checked here) or the config."""
    for opt in options():
        raw = os.environ.get(opt.env)
        kw: dict[str, Any] = {"dest": opt.dest, "help": _help(opt)}
        if opt.kind is bool:  # the flag (or its variable set to 1) sets the field to the opposite of its default
            on = raw is not None and _parse_bool(opt, raw)
            kw.update(action="store_const", const=not opt.default, default=(not opt.default) if on else opt.default)
        elif opt.kind is tuple:
            env_values = tuple(v for v in (raw or "").split(",") if v)
            kw.update(action="append", default=None, metavar=_metavar(opt))
            parser.set_defaults(**{opt.dest + "__env": env_values or opt.default})
        else:
            kw.update(type=str, metavar=_metavar(opt))
            kw["default"] = raw if raw is not None else None
        parser.add_argument("--" + opt.flag, **kw)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig of parsed `serve` arguments. Raises ValueError naming the flag (or variable) of a
    bad value: argparse itself checks nothing, so that environment values get the same checks."""
    values: dict[tuple[str, ...], Any] = {}
    for opt in options():
        raw = getattr(args, opt.dest)
        if opt.kind is tuple:
            values[opt.path] = tuple(raw) if raw is not None else getattr(args, opt.dest + "__env")
        elif opt.kind is bool:
            values[opt.path] = raw
        elif raw is None:
            values[opt.path] = opt.default
        else:
            values[opt.path] = opt.to_field(_parse(opt, raw))
    return _build(ServerConfig, (), values)


def _parse(opt: Option, raw: str) -> Any:
    where = f"--{opt.flag} (or {opt.env})"
    if opt.choices is not None and raw not in opt.choices:
        raise ValueError(f"{where}: {raw!r} is not one of {', '.join(opt.choices)}")
    try:
        return opt.kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {raw!r} is not a valid {opt.kind.__name__}") from None


def _parse_bool(opt: Option, raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{opt.env}: {raw!r} is not a boolean (1/0, true/false)")


def _build(cls: type, path: tuple[str, ...], values: dict[tuple[str, ...], Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        here = path + (f.name,)
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], here, values)
        elif here in values:
            kwargs[f.name] = values[here]
    return cls(**kwargs)


def _metavar(opt: Option) -> str:
    if opt.unit:
        return opt.unit.upper()
    if opt.choices:
        return "|".join(opt.choices)
    return {int: "N", float: "N", Path: "PATH"}.get(opt.kind, "TEXT")


def _help(opt: Option) -> str:
    default = opt.shown_default()
    if opt.kind is bool or default in (None, ()):
        return opt.help
    unit = f" {opt.unit}" if opt.unit else ""
    return f"{opt.help} (default: {default}{unit})".replace("%", "%%")


def render_doc() -> str:
    """docs/CONFIG.md: every option with its flag, variable, default and meaning, by part."""
    parts = {(): "Server", ("http",): "HTTP and WebSocket", ("chat",): "Chat", ("engine",): "Engine",
             ("engine", "model"): "Model", ("engine", "kv"): "KV cache", ("storage",): "Storage"}
    lines = ["# Configuration", "",
             "Every option of `python -m chatserver serve`, generated from the server's configuration "
             "(`chatserver/config.py` and the engine's and storage's parts) by "
             "`python -m chatserver config-doc > docs/CONFIG.md`. Each flag has an environment variable; "
             "the command line wins over the environment, which wins over the default. Boolean variables "
             "take 1/0 or true/false; repeatable flags take a comma-separated list in the environment."]
    current = None
    for opt in options():
        part = opt.path[:-1]
        if part != current:
            current = part
            lines += ["", f"## {parts.get(part, '.'.join(part))}", "", "| flag | variable | default | meaning |",
                      "|---|---|---|---|"]
        default = "" if opt.kind is bool else opt.shown_default()
        shown = "—" if default in (None, "", ()) else f"`{default}`{' ' + opt.unit if opt.unit else ''}"
        choices = f" One of: {', '.join(f'`{c}`' for c in opt.choices)}." if opt.choices else ""
        value = "" if opt.kind is bool else f" {_metavar(opt)}"
        lines.append(f"| `--{opt.flag}{value}` | `{opt.env}` | {shown} | {opt.help}.{choices} |")
    return "\n".join(lines) + "\n"
