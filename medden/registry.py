"""One registry type and one parameter type, shared by the denoisers and the noise models.

A :class:`Param` is a tunable parameter with its default, physical unit, meaning, allowed values and range; its
:meth:`Param.parse` turns a value (a number, or the text of a command-line ``NAME=VALUE``) into the checked value.
A :class:`Spec` is what a registry knows of one entry (name, function, summary, parameters, modalities), and a
:class:`Registry` holds entries by name: :meth:`~Registry.register`, :meth:`~Registry.get`, :meth:`~Registry.list`
and :meth:`~Registry.resolve_params`. :func:`parse_assignments` turns ``["k=v", ...]`` (the CLI's ``--param``) into
a dict for them.

Standard library only: listing methods or noise models imports no numerical package.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, TypeVar

from medden.conventions import ALL_MODALITIES
from medden.errors import ParameterError

_WHAT = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a text",
         "NoneType": "a number or none"}


@dataclass(frozen=True)
class Param:
    """One tunable parameter.

    Parameters
    ----------
    name, default, unit, help : what it is; ``unit`` is ``''`` when dimensionless.
    choices : the allowed values, or None.
    minimum, maximum : the allowed closed range of a number, or None.
    required : the entry cannot run without it (its default is then None).
    kind : the value's type when the default is None (``float`` unless given), or a function ``text → value``
        doing its own parsing and checking (e.g. a level that may be ``"3%"``).
    finite : refuse NaN and ±inf (``guidance=inf`` is meaningful, so it can opt out).
    """

    name: str
    default: Any
    unit: str = ""
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False
    kind: Any = None
    finite: bool = True

    def _convert(self, value: Any) -> Any:
        kind = self.kind if self.kind is not None else type(self.default)
        if isinstance(value, str) and value.strip().lower() == "none" and self.default is None:
            return None
        if kind is type(None):
            kind = float
        if not isinstance(kind, type):  # a parsing function
            return kind(value)
        if kind is bool:
            if isinstance(value, str):
                if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.strip().lower() in ("1", "true", "yes")
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise ValueError(value)
            return bool(value)
        if kind is int:
            if isinstance(value, str):
                return int(value.strip())
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError(value)
            return int(value)
        if kind is str:
            if value is None or isinstance(value, (bool, int, float)):
                raise ValueError(value)
            return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if value is None:
            raise ValueError(value)
        return kind(value.strip() if isinstance(value, str) else value)

    def parse(self, value: Any) -> Any:
        """``value`` (a Python value or a CLI string) as this parameter's type, checked against its choices and
        range; a bad value raises :class:`ParameterError` naming the parameter."""
        if value is None and self.default is None and not self.required:
            return None
        try:
            value = self._convert(value)
        except ParameterError:
            raise
        except (TypeError, ValueError, OverflowError):
            kind = self.kind if isinstance(self.kind, type) else type(self.default)
            what = _WHAT.get(kind.__name__, kind.__name__)
            raise ParameterError(f"parameter {self.name!r} needs {what}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ParameterError(f"parameter {self.name!r} must be one of {list(self.choices)}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.finite and not math.isfinite(value):
                raise ParameterError(f"parameter {self.name!r} must be a finite number, got {value!r}")
            if self.minimum is not None and not value >= self.minimum:
                raise ParameterError(f"parameter {self.name!r} must be ≥ {self.minimum:g}"
                                     f"{' ' + self.unit if self.unit else ''}, got {value!r}")
            if self.maximum is not None and not value <= self.maximum:
                raise ParameterError(f"parameter {self.name!r} must be ≤ {self.maximum:g}"
                                     f"{' ' + self.unit if self.unit else ''}, got {value!r}")
        return value


@dataclass(frozen=True)
class Spec:
    """What a registry knows of one entry. ``label`` names the kind of entry in messages ("method", "noise model")."""

    name: str
    fn: Callable[..., Any] = field(repr=False)
    summary: str = ""
    params: tuple[Param, ...] = ()
    modalities: tuple[str, ...] = ALL_MODALITIES
    label: str = field(default="entry", repr=False)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Every parameter: the defaults overlaid with ``given``, each parsed and checked. Unknown names and
        missing required ones raise :class:`ParameterError`."""
        by_name = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(by_name))
        if unknown:
            raise ParameterError(f"{self.label} {self.name!r} has no parameter {', '.join(map(repr, unknown))} "
                                 f"(parameters: {', '.join(by_name) or 'none'})")
        resolved = {**self.defaults(), **{k: by_name[k].parse(v) for k, v in given.items()}}
        missing = [p.name for p in self.params if p.required and resolved.get(p.name) is None]
        if missing:
            raise ParameterError(f"{self.label} {self.name!r} needs {', '.join(missing)}")
        return resolved


S = TypeVar("S", bound=Spec)


class Registry(Generic[S]):
    """Entries by name. ``label`` ("method", "noise model") words the errors; ``order`` sorts :meth:`list`."""

    def __init__(self, label: str, order: Callable[[S], Any] | None = None) -> None:
        self.label = label
        self._order = order or (lambda spec: spec.name)
        self._entries: dict[str, S] = {}

    def register(self, spec: S) -> S:
        if spec.name in self._entries:
            raise RuntimeError(f"{self.label} {spec.name!r} registered twice")
        self._entries[spec.name] = spec
        return spec

    def get(self, name: str) -> S:
        """The entry ``name``; an unknown name raises :class:`ParameterError` listing the known ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ParameterError(f"unknown {self.label} {name!r} (known: {', '.join(sorted(self._entries))})") \
                from None

    def list(self) -> list[S]:
        return sorted(self._entries.values(), key=self._order)

    def resolve_params(self, name: str, given: dict[str, Any]) -> dict[str, Any]:
        return self.get(name).resolve_params(given)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def parse_assignments(items: Iterable[str] | None, option: str = "--param") -> dict[str, str]:
    """``["weight=0.5", "iterations=50"]`` → ``{"weight": "0.5", "iterations": "50"}`` (values stay text: the
    registry's :meth:`Param.parse` converts them). A malformed item raises :class:`ParameterError`."""
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"{option} needs NAME=VALUE, got {item!r}")
        params[key.strip()] = value.strip()
    return params
