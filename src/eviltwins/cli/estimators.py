"""Command-line options generated from the registered estimators (one source of truth).

``eviltwins attack NAME`` and ``eviltwins detect NAME`` are one subcommand per registered
attack or detector, whose options are that estimator's ``__init__`` parameters: the option
``--outer-iters`` is the parameter ``outer_iters``, its click type comes from the parameter's
constraint (``Interval`` -> INTEGER / FLOAT, ``OneOf(True, False)`` -> ``--x/--no-x``, a
``OneOf`` of names -> TEXT with the names as metavar) or, without one, from its annotation (a
sequence of numbers -> ``1,2,3``), its help text is the constraint's ``describe()``, and the
default shown in ``--help`` is the signature's. An option not given passes nothing, so the
estimator keeps its own default; every value is validated by the estimator (the one
validation system), never by click. ``--help``, the README and the code therefore cannot
disagree about a parameter, its type or its default. The command's help text is the
estimator's class docstring as plain text (:mod:`eviltwins.cli.helptext`): its summary first,
its parameters spelled as their options.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Sequence
from typing import Any

import click

from eviltwins.base import Constraint, Interval, OneOf, SubsetOf, init_param_names
from eviltwins.cli.helptext import plain, sentences, summary_of, wrap
from eviltwins.registry import Registry
from eviltwins.results import hint_members

#: Estimator parameters a command option sets instead of a generated one.
COMMAND_OWNED = {"quiet": "--quiet"}
#: Methods pages of the documentation not named as their estimator's summary starts.
METHOD_PAGES = {"imc": "TrojanNN*", "ensemble": "NC+STRIP ensemble"}


class ListOf(click.ParamType):
    """``"a,b,c"`` -> a tuple of ``kind`` (``int``, ``float`` or ``str``). Text that the
    parameter's constraint ``words`` accepts as it is (``"all"``, ``"3,4"`` for a position) and
    text that does not read as such a list pass through unchanged, for the estimator to accept
    or refuse with its own message."""

    def __init__(self, kind: type, words: Constraint | None = None) -> None:
        self.kind, self.words = kind, words
        self.name = f"list of {kind.__name__}"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        item = {int: "INT", float: "FLOAT"}.get(self.kind, "TEXT")
        return ("TEXT|" if self.words else "") + f"{item},{item},..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str) or (self.words is not None and self.words.ok(value)):
            return value
        try:
            return tuple(self.kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            return value


class ParameterOption(click.Option):
    """An option for one parameter of a callee (an estimator, ``api.train``): ``None`` unless
    given (so the callee keeps its own default), and ``--help`` shows the signature's default
    (``signature_default``) whatever click's own default is."""

    def __init__(self, *args: Any, signature_default: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signature_default = signature_default

    def shown_default(self) -> str:
        """The signature's default as ``--help`` shows it (and as a flag would spell it)."""
        value = self.signature_default
        if isinstance(value, bool) and self.secondary_opts:
            return (self.opts if value else self.secondary_opts)[0].lstrip("-")
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value) or "()"
        return str(value)

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        extra["default"] = self.shown_default()
        return extra


def inspectors_option(what: str, more: str = "") -> Callable[..., Any]:
    """``--detectors NAME,NAME,...``: the model inspectors a command runs or reads (``scan``,
    ``calibrate``), by default ``scan``'s set; the help names them after "Model inspectors
    ``what``", then ``more``."""
    from eviltwins.detectors.scan import DEFAULT_DETECTORS, inspector_names

    return click.option(
        "--detectors",
        type=ListOf(str),
        default=",".join(DEFAULT_DETECTORS),
        show_default=True,
        metavar="NAME,NAME,...",
        help=f"Model inspectors {what} ({', '.join(inspector_names())}){more}.",
    )


def signature_option(fn: Callable[..., Any], name: str, help: str, **kwargs: Any) -> Any:
    """A click option decorator for parameter ``name`` of ``fn``, showing its default."""
    default = inspect.signature(fn).parameters[name].default
    return click.option(
        option_name(name), name, cls=ParameterOption, signature_default=default, help=help, **kwargs
    )


def option_name(param: str) -> str:
    """The command-line spelling of a parameter name: ``outer_iters`` -> ``--outer-iters``."""
    return "--" + param.replace("_", "-")


def _sequence_of(hint: Any) -> type | None:
    """``int`` / ``float`` when ``hint`` (or a member of it) is a sequence of that number."""
    for member in hint_members(hint):
        origin = typing.get_origin(member)
        if origin in (list, tuple, Sequence) or (
            isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str
        ):
            args = [a for a in typing.get_args(member) if a is not Ellipsis]
            if args and args[0] in (int, float):
                return args[0]
    return None


def _type_and_help(rule: Constraint | None, hint: Any) -> tuple[dict[str, Any], str]:
    """click keyword arguments (type, metavar or flag) and the help text of one parameter."""
    text = f"Must be {rule.describe()}." if rule is not None else ""
    if isinstance(rule, Interval):
        return {"type": click.INT if rule.kind is int else click.FLOAT}, text
    if isinstance(rule, OneOf):
        names = [o for o in rule.options if o is not None]
        if names and all(isinstance(o, bool) for o in names):
            return {"is_flag": True}, "On or off."
        if names and all(isinstance(o, str) for o in names):
            metavar = "[" + "|".join(names) + "]"
            return {"type": click.STRING, "metavar": metavar}, text
    if isinstance(rule, SubsetOf):
        return {"type": ListOf(str)}, text
    kind = _sequence_of(hint)
    if kind is not None:
        words = rule if str in hint_members(hint) else None
        return {"type": ListOf(kind, words)}, text or f"Comma-separated {kind.__name__}s."
    if not text:
        names = [getattr(m, "__name__", str(m)) for m in hint_members(hint)]
        text = "A " + " or ".join("None" if n == "NoneType" else n for n in names) + "."
    return {"type": click.STRING}, text


def estimator_options(cls: type) -> list[ParameterOption]:
    """One option per ``__init__`` parameter of ``cls`` (those in :data:`COMMAND_OWNED` are
    set by the command's own option), in signature order."""
    sig = inspect.signature(cls.__init__)
    hints = typing.get_type_hints(cls.__init__)
    rules: dict[str, Constraint] = getattr(cls, "_constraints", {})
    out = []
    for name in init_param_names(cls):
        if name in COMMAND_OWNED:
            continue
        kwargs, text = _type_and_help(rules.get(name), hints.get(name, str))
        flag = option_name(name)
        decls = [f"{flag}/--no-{flag[2:]}" if kwargs.pop("is_flag", False) else flag, name]
        default = sig.parameters[name].default
        out.append(
            ParameterOption(decls, default=None, help=text, signature_default=default, **kwargs)
        )
    return out


class EstimatorCommand(click.Command):
    """The command of one estimator: the verb's options, then the estimator's parameters
    (listed apart in ``--help``); an option the estimator does not take is refused with one
    line naming the ones it does."""

    def __init__(self, *args: Any, key: str, estimator: type, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key, self.estimator = key, estimator
        self.parameter_names = [
            p.name for p in self.params if isinstance(p, ParameterOption) and p.name
        ]

    def split(self, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(estimator flags, the command's other options)`` from the callback's kwargs."""
        flags = {k: v for k, v in values.items() if k in self.parameter_names}
        return flags, {k: v for k, v in values.items() if k not in flags}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as err:
            names = ", ".join(option_name(n) for n in self.parameter_names)
            close = ", ".join(repr(p) for p in err.possibilities or ())
            hint = f"; did you mean {close}?" if close else ""
            raise click.NoSuchOption(
                err.option_name,
                f"{self.key} has no parameter {err.option_name.lstrip('-').replace('-', '_')!r} "
                f"(no option {err.option_name}{hint}); its parameters are {names}",
                ctx=ctx,
            ) from None

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The help as :func:`~eviltwins.cli.helptext.wrap` lays it out (list items hang
        under their marker)."""
        formatter.write_paragraph()
        with formatter.indentation():
            width = max(formatter.width - formatter.current_indent, 11)
            formatter.write(wrap(self.help or "", width, " " * formatter.current_indent) + "\n")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own, generated = [], []
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record is not None:
                (generated if isinstance(p, ParameterOption) else own).append(record)
        with formatter.section("Options"):
            formatter.write_dl(own)
        with formatter.section(f"Parameters of {self.estimator.__name__} ({self.key})"):
            formatter.write_dl(generated)


class EstimatorGroup(click.Group):
    """``attack`` / ``detect``: one :class:`EstimatorCommand` per name in ``registry``, built
    on demand by ``make(key, estimator)``; an unknown name is refused by the registry (one
    line with the closest name and the known ones)."""

    def __init__(
        self,
        *args: Any,
        registry: Registry[Any],
        make: Callable[[str, type], click.Command],
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self.registry, self.make = registry, make
        self._made: dict[str, click.Command] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self.registry.names()

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name.startswith("-"):
            return None  # an option before the name: click says so
        cls = self.registry.get(cmd_name)  # unknown names raise UnknownNameError
        key = next(k for k in self.registry.names() if self.registry.get(k) is cls)
        if key not in self._made:
            self._made[key] = self.make(key, cls)
        return self._made[key]


def estimator_help(
    template: click.Command, key: str, cls: type, kind: str, params: dict[str, bool]
) -> str:
    """The ``--help`` text of ``cls``'s command: its summary (the docstring's first sentence;
    a lead-in such as "ABS (Liu et al., CCS 2019):" becomes "ABS (Liu et al., CCS 2019): a
    model inspector." with ``kind``), ``template``'s help, the rest of the docstring as plain
    text (:func:`~eviltwins.cli.helptext.plain`, ``params`` spelled as options) and where the
    documentation has more."""
    body = plain(inspect.getdoc(cls) or "", params)
    first, _, rest = body.partition("\n\n")
    summary, *more = sentences(" ".join(first.split()))
    if summary.endswith(":"):  # a lead-in to a list, not a summary
        summary, more = f"{summary} {kind}.", ["How it works:"]
    parts = [summary, inspect.cleandoc(template.help or ""), " ".join(more), rest]
    parts.append(f"See the eviltwins documentation, Methods: {method_title(key, summary)}.")
    return "\n\n".join(p for p in parts if p)


def method_title(key: str, summary: str) -> str:
    """The title of the documentation's Methods page of estimator ``key``: the name that
    starts its summary ("NeuralCleanse (Wang et al., ...): ..."), unless the page is named
    otherwise (:data:`METHOD_PAGES`)."""
    return METHOD_PAGES.get(key) or re.split(r" \(|:", summary, maxsplit=1)[0]


def estimator_command(
    template: click.Command,
    key: str,
    cls: type,
    extra: Sequence[click.Parameter] = (),
    kind: str = "a backdoor attack",
) -> EstimatorCommand:
    """``template``'s options (and ``extra``), then ``cls``'s generated options, calling
    ``template``'s callback; the help is :func:`estimator_help` (``kind``: what ``cls`` is, for
    a docstring without a summary sentence)."""
    generated = estimator_options(cls)
    params = [*template.params, *extra, *generated]
    clash = {p.name for p in [*template.params, *extra]} & {p.name for p in generated}
    if clash:
        raise RuntimeError(f"{cls.__name__} parameters {sorted(clash)} clash with command options")
    flags = {str(p.name): p.is_flag for p in generated} | dict.fromkeys(COMMAND_OWNED, True)
    text = estimator_help(template, key, cls, kind, flags)
    return EstimatorCommand(
        key,
        key=key,
        estimator=cls,
        params=params,
        callback=template.callback,
        help=text,
        short_help=summary_of(text),
        context_settings=template.context_settings,
    )
