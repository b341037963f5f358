"""Pass infrastructure: the registry, the pipeline-string parser, and the pass manager.

A failing pass is reported with its name and the passes that ran before it; in debug mode the
module is verified after every pass, so a pass that breaks the IR is caught where it happens.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from moec.ir.errors import MoecError
from moec.ir.graph import Module


class PassError(MoecError):
    """A pipeline string that does not parse, or a pass that failed."""


@dataclass(frozen=True)
class PassResult:
    module: Module
    modified: bool


@dataclass(frozen=True)
class ModulePass:
    """Base of all passes. Subclasses are frozen dataclasses; fields are options."""

    name: ClassVar[str] = ""

    def run(self, module: Module) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def spelling(self) -> str:
        opts = [
            f"{f.name.replace('_', '-')}={_format_option(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


REGISTRY: dict[str, type[ModulePass]] = {}

P = TypeVar("P", bound=type[ModulePass])


def register(cls: P) -> P:
    """Class decorator: make the pass available to pipeline strings under ``cls.name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"pass name {cls.name!r} empty or taken")
    REGISTRY[cls.name] = cls
    return cls


def _format_option(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return "/".join(_format_option(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_ITEM = re.compile(r"\s*([a-z][a-z0-9-]*)\s*(\{([^{}]*)\})?\s*(,|$)")


def _convert(raw: str, field: dataclasses.Field[Any], where: str) -> Any:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    try:
        if kind.startswith("bool"):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("tuple"):
            return tuple(float(x) for x in raw.split("/"))
    except ValueError:
        raise PassError(
            f"option {field.name.replace('_', '-')}: expected {kind}, found {raw!r}", where
        ) from None
    return raw


def _instantiate(name: str, body: str | None, where: str) -> ModulePass:
    cls = REGISTRY.get(name)
    if cls is None:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise PassError(f"unknown pass {name!r} (known: {known})", where)
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in (body or "").split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            allowed = ", ".join(sorted(fields)) or "no options"
            raise PassError(f"pass {name}: unknown option {key!r} (allowed: {allowed})", where)
        kwargs[fields[key].name] = _convert(raw.strip(), fields[key], where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise PassError(f"pass {name}: {err}", where) from None


def parse_pipeline(text: str) -> Pipeline:
    """Parse ``"a,b{x=1,y=2},c"`` into a Pipeline; errors say the column. ``"none"`` (as
    ``bench`` and ``sweep`` spell the exact program) and ``""`` are the empty pipeline."""
    passes: list[ModulePass] = []
    pos = 0
    text = text.strip()
    if text == "none":
        return Pipeline(())
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise PassError(f"expected a pass name at column {pos + 1} of {text!r}", "--passes")
        passes.append(_instantiate(m.group(1), m.group(3), f"--passes:{pos + 1}"))
        pos = m.end()
    return Pipeline(tuple(passes))


@dataclass(frozen=True)
class Pipeline:
    passes: tuple[ModulePass, ...] = ()

    def spelling(self) -> str:
        return ",".join(p.spelling() for p in self.passes)

    def run(
        self, module: Module, *, debug: bool = False, on_pass: Callable[[str], None] | None = None
    ) -> Module:
        done: list[str] = []
        for p in self.passes:
            try:
                result = p.run(module)
                module = result.module
                if debug:
                    module.verify()
            except MoecError as err:
                before = ", ".join(done) or "none"
                raise PassError(
                    f"pass {p.name} failed: {err.one_line()} (after: {before})", p.name
                ) from None
            done.append(p.name)
            if on_pass:
                on_pass(p.name)
        return module
