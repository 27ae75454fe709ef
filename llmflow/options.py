"""Each step's parameters, declared once: a frozen dataclass per step, from which its parser is built.

A field is declared with :func:`option`: its type (from the annotation), its default, a help text and a
check. ``MLproject`` keeps the same defaults (it is where users read them; ``tests/test_options.py`` keeps
the two equal). The parser of an entry point has one flag per field, ``--kebab-case`` and also as written
(``--snake_case``, the form in which MLflow appends a parameter that an entry point does not declare, see
``deploy/kubernetes``). A field whose type is itself an options class is a group: ``main`` composes the
steps' groups this way, and its flags are the group's fields, flattened.

Checks run inside the step's MLflow run (``StepOptions.check``), so a bad value is recorded on the run
that refused it, and each raises ``InputError`` with one line that names the value and what is accepted.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any, NoReturn, TypeVar, get_type_hints

from llmflow.errors import InputError

Check = Callable[[str, Any], None]
OptionsT = TypeVar("OptionsT", bound="StepOptions")


def option(default: Any = dataclasses.MISSING, *, help: str, check: Check | None = None) -> Any:  # noqa: A002
    """A field of an options class: ``default`` (none: the parameter is required), ``help``, ``check``."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check})


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepOptions:
    """Base of every step's options. Subclasses are ``@dataclass(frozen=True, kw_only=True)``."""

    def check(self) -> None:
        """Run every field's check (groups included), then the checks across fields."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, StepOptions):
                value.check()
            elif field.metadata.get("check") is not None:
                field.metadata["check"](field.name, value)
        self.check_together()

    def check_together(self) -> None:
        """Checks that involve more than one field; none by default."""

    def params(self) -> dict[str, Any]:
        """The parameters as MLflow records them: one flat ``{name: value}`` (groups flattened)."""
        flat: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            flat.update(value.params() if isinstance(value, StepOptions) else {field.name: value})
        return flat


# How a flag's text becomes a value, by the field's type.
def whole_number(text: str) -> int:
    """argparse type for integers that MLflow passes as ``float`` parameters (``"32"`` or ``"32.0"``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number; expected a whole number") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number")
    return int(value)


BOOLEANS = {"true": True, "false": False}


def boolean(text: str) -> bool:
    """argparse type for ``true``/``false`` in any case (what MLproject's string parameters carry)."""
    key = str(text).strip().lower()
    if key not in BOOLEANS:
        raise argparse.ArgumentTypeError(f"'{text}' is not accepted; expected true or false")
    return BOOLEANS[key]


def param_text(value: Any) -> str:
    """A parameter's value as MLflow records it: ``true``/``false`` for a bool (as MLproject writes them)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def a_bool(name: str, value: Any) -> None:
    """The check of every ``bool`` field (``build`` and the parser turn ``"true"``/``"false"`` into one)."""
    if not isinstance(value, bool):
        raise InputError(f"{name} '{value}' is not accepted; expected true or false")


PARSERS: dict[type, Callable[[str], Any]] = {str: str, int: whole_number, float: float, bool: boolean}


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def leaf_fields(cls: type[StepOptions]) -> Iterator[tuple[dataclasses.Field, type]]:
    """Every field that is a parameter (groups flattened), with its type."""
    for field in dataclasses.fields(cls):
        kind = _hints(cls)[field.name]
        if isinstance(kind, type) and issubclass(kind, StepOptions):
            yield from leaf_fields(kind)
        else:
            yield field, kind


def names(cls: type[StepOptions]) -> list[str]:
    """The parameter names of ``cls`` (groups flattened), in declaration order."""
    return [field.name for field, _ in leaf_fields(cls)]


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def defaults(cls: type[StepOptions]) -> dict[str, Any]:
    """``{name: default}`` of every parameter that has one."""
    return {f.name: _default(f) for f, _ in leaf_fields(cls) if _default(f) is not dataclasses.MISSING}


def build(cls: type[OptionsT], values: dict[str, Any]) -> OptionsT:
    """An instance of ``cls`` from flat ``values`` (groups filled from the same mapping); unknown keys refused."""
    known = {f.name for f, _ in leaf_fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown parameter(s) {unknown}; accepted: {', '.join(sorted(known))}")

    def make(kind: type[StepOptions]) -> StepOptions:
        kwargs = {}
        for field in dataclasses.fields(kind):
            sub = _hints(kind)[field.name]
            if isinstance(sub, type) and issubclass(sub, StepOptions):
                kwargs[field.name] = make(sub)
            elif field.name in values:
                value = values[field.name]
                if sub is bool and isinstance(value, str) and value.strip().lower() in BOOLEANS:
                    value = BOOLEANS[value.strip().lower()]  # MLflow records a bool parameter as text
                kwargs[field.name] = value
        return kind(**kwargs)

    return make(cls)  # type: ignore[return-value]


def replace(options: OptionsT, **changes: Any) -> OptionsT:
    """A copy of ``options`` with some parameters changed, wherever in its groups they are."""
    return build(type(options), {**options.params(), **changes})


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line instead of a usage dump (``--help`` still prints the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (--help lists the parameters)\n")


def unknown_parameters(tokens: list[str], names: list[str]) -> str:
    """``"unknown parameter 'precison'; did you mean 'precision'?"`` for the flags among ``tokens``."""
    unknown = [token[2:].split("=", 1)[0].replace("-", "_") for token in tokens if token.startswith("--")]
    if not unknown:
        return f"unexpected argument(s) {' '.join(tokens)!r}; parameters are passed as --name value"
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"accepted: {', '.join(names)}"
        parts.append(f"unknown parameter '{name}'; {hint}")
    return "; ".join(parts)


def build_parser(cls: type[StepOptions], entry_point: str, description: str) -> argparse.ArgumentParser:
    """The ``argparse`` parser of ``entry_point``: one flag per parameter of ``cls``."""
    parser = _Parser(prog=f"steps/{entry_point}.py", description=description)
    for field, kind in leaf_fields(cls):
        kebab = "--" + field.name.replace("_", "-")
        flags = [kebab] if kebab == "--" + field.name else [kebab, "--" + field.name]
        default = _default(field)
        extra = {"required": True} if default is dataclasses.MISSING else {"default": default}
        parser.add_argument(*flags, dest=field.name, type=PARSERS[kind], help=field.metadata["help"], **extra)
    return parser


def parse(cls: type[OptionsT], entry_point: str, description: str, argv: list[str] | None = None) -> OptionsT:
    """Parse ``argv`` into an instance of ``cls`` (not yet checked: the step checks it inside its run)."""
    parser = build_parser(cls, entry_point, description)
    namespace, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(unknown_parameters(extra, [field.name for field, _ in leaf_fields(cls)]))
    return build(cls, vars(namespace))


# Checks: each takes the parameter's name and value and raises InputError naming both.
def one_of(*accepted: Any) -> Check:
    def check(name: str, value: Any) -> None:
        if value not in accepted:
            raise InputError(f"{name} '{value}' is not supported; expected one of: {', '.join(map(str, accepted))}")

    return check


def at_least(lowest: int) -> Check:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise InputError(f"{name} {value!r} is not accepted; expected a whole number of {lowest} or more")

    return check


def fraction(name: str, value: Any) -> None:
    """A number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or not 0 <= value <= 1:
        raise InputError(f"{name} {value!r} is not accepted; expected a fraction between 0 and 1 (e.g. 0.5)")


def non_empty(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{name} {value!r} is not accepted; expected a non-empty string")


# Groups of parameters that more than one step takes.
@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationSettings(StepOptions):
    """The generation defaults both logged models record (a request may override them)."""

    max_new_tokens: int = option(
        256, help="Default number of new tokens per answer (a request may override it).", check=at_least(1)
    )
