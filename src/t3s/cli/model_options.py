"""Typer options generated from pydantic settings models, so that each setting is declared once.

A command parameter annotated `Annotated[SomeSettings, FromModel(...)]` stands for one option per
field of the model: the flag from the field's name (`max_new_tokens` -> `--max-new-tokens`), the help
from its description, the default from the model. `settings_command` shows Typer the flat list of
options and calls the command with the model built and validated. Options the command line left at
their default are not passed to the model, so its own defaults and validators decide, and
`model_fields_set` tells which settings were given.

Field types: int, float, str, Path, bool (`--x/--no-x`), `X | None`, `list[X]` (a repeatable option;
`list[X] | X` too), Literal (choices in the help, checked by the model), a nested model (its fields,
flagged `--<field>-...` unless flattened) and an optional nested model (`--<field>/--no-<field>`
turns it on; its fields need it on).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from typer.models import ArgumentInfo, ParameterInfo

from t3s.errors import Loc, T3SError, validation_error

_SCALARS = (int, float, str, bool, Path)
_KW = inspect.Parameter.KEYWORD_ONLY
_CONTEXT = "t3s_click_context"  # the command's click context, to tell given options from defaults


@dataclass(frozen=True)
class FromModel:
    """How one command takes a settings model from the command line (fields by dotted path)."""

    rename: Mapping[str, str] = field(default_factory=dict)  # e.g. {"eval.every": "--eval-every"}
    exclude: Collection[str] = ()  # fields the command does not offer
    flatten: Collection[str] = ()  # nested models whose fields take no `--<field>-` prefix
    help: Mapping[str, str] = field(default_factory=dict)  # help in place of the field's description
    panel: str | None = None  # the `--help` panel the options are listed in


@dataclass(frozen=True)
class _Option:
    param: str  # the keyword Typer passes the value under
    path: tuple[str, ...]  # the field's place in the model
    flags: tuple[str, ...]  # every spelling, e.g. ("--lora", "--no-lora")
    annotation: Any  # Annotated[type, typer.Option(...)]
    default: Any  # inspect.Parameter.empty: required
    switch: bool = False  # turns an optional nested model on or off


def _union_args(annotation: Any) -> tuple[Any, ...] | None:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return None


def _nested(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model of a nested-model field, and whether the field may be None."""
    args = _union_args(annotation)
    if args is not None:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and isinstance(rest[0], type) and issubclass(rest[0], BaseModel):
            return rest[0], len(rest) < len(args)
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _cli_type(annotation: Any, where: str) -> tuple[Any, str | None]:
    """What Typer parses for a field's type, and the metavar listing a Literal's choices."""
    args = _union_args(annotation)
    if args is not None:
        rest = [a for a in args if a is not type(None)]
        lists = [a for a in rest if get_origin(a) is list]
        if len(rest) == 1:
            return _cli_type(rest[0], where)
        if len(lists) == 1 and all(a in (lists[0], *get_args(lists[0])) for a in rest):
            return _cli_type(lists[0], where)  # `list[X] | X`: repeatable, always a list
    elif get_origin(annotation) is Literal:
        return str, "[" + "|".join(str(choice) for choice in get_args(annotation)) + "]"
    elif get_origin(annotation) is list:
        (item,) = get_args(annotation)
        item_type, metavar = _cli_type(item, where)
        if item_type in _SCALARS and item_type is not bool:
            return list[item_type], metavar  # type: ignore[valid-type]
    elif annotation in _SCALARS:
        return annotation, None
    raise TypeError(f"{where}: {annotation} has no command-line form; exclude it")


def _options(
    model: type[BaseModel], spec: FromModel, param: str, path: tuple[str, ...] = (), prefix: str = ""
) -> Iterator[_Option]:
    for name, info in model.model_fields.items():
        here = (*path, name)
        dotted = ".".join(here)
        if dotted in spec.exclude:
            continue
        where = f"{model.__name__}.{name}"
        flag = spec.rename.get(dotted, f"--{prefix}{name.replace('_', '-')}")
        help_text = spec.help.get(dotted, info.description)
        if not help_text:
            raise TypeError(f"{where} has no description, which would be its --help")
        default = (
            inspect.Parameter.empty if info.is_required() else info.get_default(call_default_factory=True)
        )
        pname = "__".join((param, *here))
        sub, optional = _nested(info.annotation)
        if sub is not None:
            if optional:
                negative = f"--no-{flag.removeprefix('--')}"
                option = typer.Option(f"{flag}/{negative}", help=help_text, rich_help_panel=spec.panel)
                yield _Option(
                    pname, here, (flag, negative), Annotated[bool, option], default is not None, True
                )
            inner = "" if dotted in spec.flatten else f"{flag.removeprefix('--')}-"
            yield from _options(sub, spec, param, here, inner)
            continue
        cli_type, metavar = _cli_type(info.annotation, where)
        flags: tuple[str, ...] = (flag,)
        if cli_type is bool:
            flags = (flag, f"--no-{flag.removeprefix('--')}")
        if get_origin(cli_type) is list and default is not None:
            # Typer wants a list; `list[X] | X` may default to X. An empty list shows no default.
            default = (default if isinstance(default, list) else [default]) or None
        if default is None and cli_type is not bool:
            cli_type = cli_type | None
        option = typer.Option("/".join(flags), help=help_text, metavar=metavar, rich_help_panel=spec.panel)
        yield _Option(pname, here, flags, Annotated[cli_type, option], default)


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


@dataclass(frozen=True)
class _Group:
    """One settings parameter of a command and the options that build it."""

    name: str
    model: type[BaseModel]
    options: tuple[_Option, ...]

    def build(self, values: Mapping[str, Any], given: Callable[[str], bool]) -> BaseModel:
        data: dict[str, Any] = {}
        switches = [o for o in self.options if o.switch]
        for o in switches:
            if given(o.param):
                _put(data, o.path, {} if values[o.param] else None)
        for o in self.options:
            if o.switch or not given(o.param):
                continue
            for s in switches:
                if o.path[: len(s.path)] == s.path and not (given(s.param) and values[s.param]):
                    raise T3SError(f"{o.flags[0]} needs {s.flags[0]}")
            _put(data, o.path, values[o.param])
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            flags: dict[Loc, str] = {o.path: o.flags[0] for o in self.options}
            raise validation_error(exc, flags=flags) from None


def _spec(annotation: Any) -> FromModel | None:
    if get_origin(annotation) is Annotated:
        return next((m for m in annotation.__metadata__ if isinstance(m, FromModel)), None)
    return None


def _plain_flags(param: inspect.Parameter) -> list[str]:
    """The flags Typer makes for a hand-written parameter (none for an argument)."""
    annotation = param.annotation
    info = next((m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, ParameterInfo)), None)
    if isinstance(info, ArgumentInfo):
        return []
    # In `Annotated[T, typer.Option("--model", "-m")]` the first declaration sits in `default`.
    decls = [d for d in (info.default, *(info.param_decls or ())) if isinstance(d, str)] if info else []
    if decls:
        return [flag for decl in decls for flag in decl.split("/")]
    flag = f"--{param.name.replace('_', '-')}"
    base = get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
    return [flag, f"--no-{flag.removeprefix('--')}"] if base is bool else [flag]


def settings_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` as Typer should see it: its settings-model parameters spread into options.

    Two settings given the same flag (or a hand-written option's) raise ValueError here, when the
    command is registered.
    """
    hints = typing.get_type_hints(func, include_extras=True)
    params: list[inspect.Parameter] = []
    plain: list[str] = []
    groups: list[_Group] = []
    owners: dict[str, str] = {}

    def claim(flags: Collection[str], owner: str) -> None:
        for flag in flags:
            if flag in owners:
                raise ValueError(f"{func.__name__}: {flag} would set both {owners[flag]} and {owner}")
            owners[flag] = owner

    for p in inspect.signature(func).parameters.values():
        annotation = hints.get(p.name, p.annotation)
        spec = _spec(annotation)
        if spec is None:
            params.append(p.replace(annotation=annotation, kind=_KW))
            plain.append(p.name)
            claim(_plain_flags(params[-1]), p.name)
            continue
        model = get_args(annotation)[0]
        group = _Group(p.name, model, tuple(_options(model, spec, p.name)))
        groups.append(group)
        for o in group.options:
            params.append(inspect.Parameter(o.param, _KW, default=o.default, annotation=o.annotation))
            claim(o.flags, ".".join((p.name, *o.path)))

    def command(**values: Any) -> Any:
        ctx: typer.Context = values.pop(_CONTEXT)

        def given(name: str) -> bool:
            source = ctx.get_parameter_source(name)  # None: not parsed, e.g. after --help
            return source is not None and source.name != "DEFAULT"

        kwargs = {name: values[name] for name in plain}
        kwargs.update({g.name: g.build(values, given) for g in groups})
        return func(**kwargs)

    # Typer passes the click context to a parameter annotated with typer.Context.
    params.append(inspect.Parameter(_CONTEXT, _KW, annotation=typer.Context))
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__, command.__qualname__ = func.__name__, func.__qualname__
    command.__doc__, command.__module__ = func.__doc__, func.__module__
    return command
