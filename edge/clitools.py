"""Click options derived from a stage's frozen config dataclass, so each option is written once.

`config_options(Config)` adds one option per field: the flag (--field-name), the type (int, float, str, bool
flags as --x/--no-x, `X | None`, tuples as comma lists that may also be repeated), choices (of any type), a
custom parser (`str -> value`; on a `tuple[X, ...]` field it parses each repeated flag into one item) and the
help text all come from the field's `setting(...)` declaration (edge/config.py) or a per-field help dict.
Every option defaults to None, meaning "not given", so the dataclass default (or a recipe, or a JSON config)
applies and `given(...)` returns just what the user typed. `make_config` turns the config's own checks
(ConfigError) into a usage error naming the flag: exit 2. Imports nothing heavy (the --help path stays instant).
"""
from __future__ import annotations

import sys
import typing
from dataclasses import MISSING, Field, fields
from typing import Any, Callable, Iterable

import click

from .config import ConfigError, type_hints, unwrap_optional

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def raw(text: str) -> str:
    """An epilog/description kept as written: click re-wraps paragraphs not marked with \\b."""
    return "\n\n".join("\b\n" + p for p in text.strip("\n").split("\n\n"))


class Parsed(click.ParamType):
    """A `str -> value` function as a click type; its ValueError becomes click's usage error."""

    def __init__(self, parse: Callable[[str], Any], name: str):
        self.parse, self.name = parse, name

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class CommaList(click.ParamType):
    """'a,b' -> ('a', 'b') with each item converted to `item` (int, float, str)."""

    def __init__(self, item: type):
        self.item, self.name = item, f"list of {getattr(item, '__name__', 'str')}"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(self.item(t.strip()) for t in str(value).split(",") if t.strip())
        except ValueError:
            self.fail(f"expected a comma-separated list of {self.item.__name__}, got {value!r}", param, ctx)


def _show(value: Any) -> str | None:
    if value is None or value == "" or value == ():
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _default_text(f: Field) -> str | None:
    shown = _show(f.default) if f.default is not MISSING else None
    return f"default: {shown}" if shown is not None else None


class Choices(click.Choice):
    """click.Choice for values of any type (e.g. ints): the flag's text picks the value it spells."""

    def __init__(self, values: Iterable[Any]):
        self.values = tuple(values)
        super().__init__([str(v) for v in self.values])

    def convert(self, value, param, ctx):
        text = str(super().convert(value, param, ctx))
        return next(v for v in self.values if str(v) == text)


def is_list_field(hint: Any) -> bool:
    """A variadic tuple field (`tuple[X, ...]`): its flag may repeat, each value a comma list or one item."""
    base, _ = unwrap_optional(hint)
    args = typing.get_args(base)
    return typing.get_origin(base) is tuple and len(args) == 2 and args[1] is Ellipsis


def _option(f: Field, hint: Any, help_text: str, default_text: str | None) -> Callable:
    m = f.metadata
    base, _ = unwrap_optional(hint)
    decl = m.get("flag") or flag_name(f.name)
    kw: dict[str, Any] = {"default": None, "hidden": m.get("cli") == "hidden"}
    if m.get("metavar"):
        kw["metavar"] = m["metavar"]
    if "parse" in m:  # a variadic tuple with a parser: one item per (repeated) flag, e.g. --pin LABEL=17
        kw.update(type=Parsed(m["parse"], f.name), multiple=is_list_field(hint))
    elif base is bool:
        if "/" not in decl:
            decl = f"{decl}/--no-{decl[2:]}"
    elif "choices" in m:
        kw["type"] = Choices(m["choices"])
    elif typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        kw.update(type=CommaList(item if item in (int, float) else str), multiple=True)
        kw.setdefault("metavar", "A,B")
    elif base in (int, float):
        kw.update(type=base, metavar=m.get("metavar", "N" if base is int else "NUM"))
    if default_text:
        help_text = f"{help_text} ({default_text})" if help_text else f"({default_text})"
    return click.option(decl, f.name, help=help_text, **kw)


def config_options(cls: type, *, help: dict[str, str] | None = None, skip: Iterable[str] = (),
                   default_text: Callable[[Field], str | None] = _default_text) -> Callable:
    """Decorator: one click option per field of `cls` (in field order), not for `skip` or `cli=False` fields.

    A field with cli="argument" becomes a positional argument. `help` overrides the fields' own help text;
    `default_text(field)` is the help's note on the default, e.g. "default: 5" or each recipe's value."""
    hints, help, skip = type_hints(cls), help or {}, set(skip)

    def decorate(fn: Callable) -> Callable:
        for f in reversed(fields(cls)):
            m = f.metadata
            if f.name in skip or m.get("cli", True) is False:
                continue
            if m.get("cli") == "argument":
                fn = click.argument(f.name)(fn)
                continue
            fn = _option(f, hints.get(f.name, str), help.get(f.name, m.get("help", "")), default_text(f))(fn)
        return fn
    return decorate


def given(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The fields of `cls` the user gave on the command line (repeated comma lists joined into one tuple)."""
    out, hints = {}, type_hints(cls)
    for f in fields(cls):
        v = params.get(f.name)
        if v is None or v == ():
            continue
        if "parse" not in f.metadata and typing.get_origin(unwrap_optional(hints.get(f.name))[0]) is tuple:
            v = tuple(x for part in v for x in part)  # one CommaList tuple per occurrence of the flag
        out[f.name] = v
    return out


def usage_error(e: ValueError) -> click.UsageError:
    if isinstance(e, ConfigError):
        return click.UsageError(f"{flag_name(e.field)} {e.problem}, got {e.value!r}")
    return click.UsageError(str(e))


def make_config(factory: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """`factory(*args, **kw)`, its ValueError (the config's own checks) turned into a usage error (exit 2)."""
    try:
        return factory(*args, **kw)
    except ValueError as e:
        raise usage_error(e) from None


def run(cmd: click.Command, argv: list[str] | None, prog: str) -> int:
    """Run a click command as `main(argv) -> int`: usage errors exit 2, --help 0, the callback's int otherwise."""
    try:
        rv = cmd.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        print(f"{prog}: aborted", file=sys.stderr)
        return 130
    return rv if isinstance(rv, int) else 0


def parse(cmd: click.Command, argv: list[str], prog: str = "prog") -> dict[str, Any]:
    """The parameters click makes of `argv` (for tests of the flag -> config mapping)."""
    with cmd.make_context(prog, list(argv)) as ctx:
        return dict(ctx.params)


def help_text(cmd: click.Command, prog: str) -> str:
    with click.Context(cmd, info_name=prog) as ctx:
        return cmd.get_help(ctx)


def error(prog: str, message: str, code: int = 2) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def input_errors() -> tuple[type[Exception], ...]:
    """What a stage raises for bad input (a broken bundle, an unreadable dataset, a bad value, a missing file): its CLI
    prints one line and exits 2. Anything else is a bug and keeps its traceback. Imported late: --help stays fast."""
    from .bundle import BundleError
    from .dataset import DatasetError
    return BundleError, DatasetError, ValueError, FileNotFoundError
