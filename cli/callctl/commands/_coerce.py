"""Command-line values coerced without pydantic, for the Typer we verified.

Typer 0.29 turns every parameter's value into its type through a pydantic
``TypeAdapter``, built when the parameter is first processed: importing
pydantic and building the adapters of a ``callctl call`` is ~150 ms of its
start-up and ~9 MiB of its memory, for values that are strings, numbers,
flags and paths.  ``install()`` puts a plain coercion in front of Typer's:

- it takes a value only where the result is certain (a string for ``str``;
  digits for ``int``; a decimal for ``float``; a ``bool`` already; a
  non-empty string for ``Path``; a list of those) and the value is within
  the parameter's ``min``/``max``;
- anything else (a value out of range, ``1e3``, ``yes`` for a flag from the
  environment, a type not listed) goes to Typer's own adapter, built then,
  so every error message is Typer's, word for word.

``tests/test_coerce.py`` holds the two to the same results over a matrix of
values.  When Typer is not the version named in ``VERIFIED`` or its internals
differ, nothing is changed and Typer coerces as it always does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

VERIFIED = ("0.29.",)

_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?[0-9]{1,15}(\.[0-9]{1,15})?")

#: (value, param, ctx) -> the value, or ``_DECLINE`` for Typer's own adapter to decide
Fast = Callable[[Any, Any, Any], Any]
_DECLINE = object()


def _within(v: float, info: Any) -> Any:
    if info.clamp:
        return _DECLINE
    if (info.min is not None and v < info.min) or (info.max is not None and v > info.max):
        return _DECLINE
    return v


def _leaf(annotation: Any, info: Any) -> Fast | None:
    if info.parser is not None:
        return None
    if annotation is str:
        return lambda v, param, ctx: v if type(v) is str else _DECLINE
    if annotation is bool:
        return lambda v, param, ctx: v if type(v) is bool else _DECLINE
    if annotation is int:
        def as_int(v: Any, param: Any, ctx: Any) -> Any:
            if type(v) is int:
                return _within(v, info)
            if type(v) is str and _INT.fullmatch(v):
                return _within(int(v), info)
            return _DECLINE
        return as_int
    if annotation is float:
        def as_float(v: Any, param: Any, ctx: Any) -> Any:
            if type(v) in (int, float):
                return _within(float(v), info)
            if type(v) is str and _FLOAT.fullmatch(v):
                return _within(float(v), info)
            return _DECLINE
        return as_float
    if annotation is Path and info.path_type is None:
        from typer._param_types import coerce_cli_path

        def as_path(v: Any, param: Any, ctx: Any) -> Any:
            # Typer's own checks (exists, dir_okay, ...) on the Path that pydantic would have made
            if type(v) is str and v.strip() and "\0" not in v:
                return coerce_cli_path(Path(v), info, path_type=Path, param=param, ctx=ctx)
            return _DECLINE
        return as_path
    return None


def fast_coercion(annotation: Any, info: Any) -> Fast | None:
    """The plain coercion of ``annotation``, or None when only Typer's adapter does it."""
    if get_origin(annotation) is list:
        (item_type,) = get_args(annotation) or (None,)
        item = _leaf(item_type, info)
        if item is None:
            return None

        def as_list(v: Any, param: Any, ctx: Any) -> Any:
            if not isinstance(v, (list, tuple)):
                return _DECLINE
            out = [item(x, param, ctx) for x in v]
            return _DECLINE if any(x is _DECLINE for x in out) else out
        return as_list
    return _leaf(annotation, info)


def _verified() -> str | None:
    """None when the installed Typer is the one this was written for, else why not."""
    try:
        import typer
        from typer import _coercion, core
    except ImportError as exc:  # pragma: no cover - typer is a dependency
        return str(exc)
    if not typer.__version__.startswith(VERIFIED):
        return f"typer {typer.__version__} is not verified"
    get = getattr(getattr(core, "_TyperParameter", None), "get_runtime_param", None)
    if (getattr(core, "build_runtime_param", None) is not _coercion.build_runtime_param
            or get is None or "build_runtime_param" not in get.__code__.co_names
            or not hasattr(_coercion, "PassThroughRuntimeParam")
            or not hasattr(_coercion.RuntimeParam, "_coerce_value")
            or not hasattr(_coercion, "FileRuntimeParam")):
        return "typer's coercion internals differ"
    return None


_installed = False


def install() -> bool:
    """Put the plain coercion in front of Typer's; False (nothing changed) on another Typer."""
    global _installed
    if _installed:
        return True
    if _verified() is not None:
        return False
    from typer import _coercion, core

    typer_build = _coercion.build_runtime_param

    @dataclass(frozen=True)
    class PlainRuntimeParam(_coercion.RuntimeParam):
        """Our coercion first; Typer's adapter, built when first needed, for the rest."""

        fast: Fast
        descriptor: Any
        _typer: list[Any] = field(default_factory=list, compare=False, repr=False)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            out = self.fast(value, param, ctx)
            if out is not _DECLINE:
                return out
            if not self._typer:
                self._typer.append(typer_build(self.descriptor))
            return self._typer[0]._coerce_value(value, param=param, ctx=ctx)

    def build_runtime_param(descriptor: Any) -> Any:
        fast = None if descriptor.file_annotation is not None else fast_coercion(
            descriptor.annotation, descriptor.parameter_info)
        if fast is None:
            return typer_build(descriptor)
        return PlainRuntimeParam(annotation=descriptor.annotation, parameter_info=descriptor.parameter_info,
                                 fast=fast, descriptor=descriptor)

    core.build_runtime_param = build_runtime_param  # type: ignore[assignment]
    _installed = True
    return True
