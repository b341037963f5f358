"""The opcode table: every stream-program instruction declared once.

In the spirit of xDSL's IRDL, an instruction is a frozen dataclass whose fields are its typed
operands (:func:`operand` with a :class:`~moec.ir.stream.kinds.Kind`), declared with
:func:`instruction`: its opcode, its text forms and its verifier constraints. For example::

    @instruction("wait", "wait $event count $count", verify=...)
    @dataclass(frozen=True)
    class Wait:
        event: str = operand(EVENT)
        count: int = operand(COUNT)
        loc: Location | None = field(default=None, compare=False)

A text form is the opcode followed by the operands as ``$field``, each preceded by the keyword
its kind is written with (``bytes $nbytes``, ``-> $peer``); a *lead* operand (a slot, an
activation block) comes right after the opcode. An instruction with optional operands (``send``
moves a slot *or* a block) has one form per combination; the printer writes the form whose
operands are exactly the instruction's non-None ones.

Everything else is derived from :data:`OPCODES` (or checked against it when first used):

* the grammar's instruction rules and opcode terminals (:mod:`.parser`, appended to
  ``msp.lark``), the fast line reader's patterns (:mod:`.lines`), the printer (:mod:`.printer`),
  usage messages (:mod:`.diagnostics`) and the names the printer quotes;
* the verifier (:mod:`.verify`): each operand is checked by its kind, then the instruction by
  its constraints;
* each concern of a backend keeps a :class:`HandlerTable`, one handler per opcode (the
  interpreter's timing and numerics); :meth:`HandlerTable.check` fails, at the import of the
  module that fills the table, when an opcode has no handler. A new concern (energy, a hardware
  model's per-instruction cost) is a new table in a new file, with no edit to any declaration.

``docs/isa.md`` ("Adding an opcode") walks through a new instruction.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Generic, TypeVar

from moec.ir.errors import Location
from moec.ir.stream.kinds import Kind

#: A verifier constraint of an instruction: ``check(walk, instr)`` raises a located
#: :class:`~moec.ir.errors.ProgramError` (``walk`` is :class:`moec.ir.stream.constraints.DieWalk`).
Constraint = Callable[[Any, Any], None]

T = TypeVar("T")
H = TypeVar("H")

_OPCODE_RE = re.compile(r"[a-z][a-z0-9_]*")


class OpcodeError(Exception):
    """A declaration or handler table that contradicts the opcode table (a bug, not bad input)."""


class Instruction:
    """Base of instruction classes: ``opcode`` is set by :func:`instruction`, ``loc`` is the
    dataclass field every instruction has."""

    __slots__ = ()
    opcode: ClassVar[str]
    loc: Location | None


def operand(kind: Kind, *, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is an operand of ``kind`` (``default=None``: optional)."""
    if default is dataclasses.MISSING:
        return field(metadata={"kind": kind})
    return field(default=default, metadata={"kind": kind})


@dataclass(frozen=True)
class Part:
    """One operand of a text form: the field, its kind, and the keyword written with it."""

    field: str
    kind: Kind
    keyword: str | None = None

    def usage(self) -> str:
        return f"{self.keyword} {self.kind.usage}" if self.keyword else self.kind.usage


@dataclass(frozen=True)
class Form:
    """One text form of an instruction (see the module docstring)."""

    opcode: str
    index: int
    parts: tuple[Part, ...]

    @property
    def rule(self) -> str:
        """Its grammar rule (and parser callback) name."""
        return f"op_{self.opcode}_{self.index}"

    @property
    def glued(self) -> bool:
        """True when the first operand is written glued to the opcode (one terminal)."""
        return bool(self.parts) and self.parts[0].kind.lead

    @cached_property
    def fields(self) -> frozenset[str]:
        return frozenset(p.field for p in self.parts)

    def usage(self) -> str:
        return " ".join([self.opcode, *(p.usage() for p in self.parts)])


@dataclass(frozen=True, eq=False)
class OpDef:
    """An instruction's declaration: its class, operands, text forms and constraints."""

    opcode: str
    cls: type
    #: every operand field, in field order, with its kind
    operands: tuple[tuple[str, Kind], ...]
    forms: tuple[Form, ...]
    constraints: tuple[Constraint, ...]
    doc: str = ""

    def usage(self) -> str:
        """How it is written, for messages (``gemm sK tokens T``)."""
        return "  or  ".join(f.usage() for f in self.forms)

    @cached_property
    def by_presence(self) -> dict[tuple[bool, ...], Form]:
        """Each form by which operands it has (in :attr:`operands` order): the form of an
        instruction is ``by_presence[tuple(operand is not None ...)]``."""
        names = [n for n, _ in self.operands]
        return {tuple(n in f.fields for n in names): f for f in self.forms}

    def form_of(self, instr: Any) -> Form | None:
        """The form whose operands are exactly ``instr``'s non-None ones, if any."""
        return self.by_presence.get(tuple(getattr(instr, n) is not None for n, _ in self.operands))


def generate(name: str, args: str, body: list[str], env: dict[str, Any]) -> Callable[..., Any]:
    """A function compiled from generated source (``def name(args): body``), the way
    :mod:`dataclasses` writes ``__init__``: the printer, the fast reader and the verifier build
    one per form or instruction from the table, so the table costs no call per operand."""
    src = f"def {name}({args}):\n" + "\n".join(f"    {line}" for line in body) + "\n"
    exec(src, env)
    fn: Callable[..., Any] = env[name]
    return fn


class OpcodeTable:
    """The registry of declared instructions, in declaration order; ``version`` changes with
    every declaration so derived artefacts (grammar, patterns, printers) know to rebuild."""

    def __init__(self) -> None:
        self._defs: dict[str, OpDef] = {}
        self._by_class: dict[type, OpDef] = {}
        self._handlers: list[HandlerTable[Any]] = []
        self.version = 0

    def declare(self, opdef: OpDef) -> None:
        if opdef.opcode in self._defs:
            raise OpcodeError(f"opcode {opdef.opcode!r} is declared twice")
        self._defs[opdef.opcode] = opdef
        self._by_class[opdef.cls] = opdef
        self.version += 1

    def withdraw(self, opcode: str) -> None:
        """Remove a declaration and its handlers (for tests that declare a toy opcode)."""
        opdef = self._defs.pop(opcode)
        del self._by_class[opdef.cls]
        for table in self._handlers:
            table._withdraw(opcode)
        self.version += 1

    def __iter__(self) -> Iterator[str]:
        return iter(self._defs)

    def __len__(self) -> int:
        return len(self._defs)

    def __contains__(self, opcode: object) -> bool:
        return opcode in self._defs

    def __getitem__(self, opcode: str) -> OpDef:
        return self._defs[opcode]

    def defs(self) -> tuple[OpDef, ...]:
        return tuple(self._defs.values())

    def of(self, instr: Any) -> OpDef | None:
        """The declaration of an instruction (or instruction class), None if undeclared."""
        cls = instr if isinstance(instr, type) else type(instr)
        return self._by_class.get(cls)


#: The stream program's instruction set (filled by :mod:`.instructions` and by anyone who
#: declares an instruction with :func:`instruction`).
OPCODES = OpcodeTable()


def _parse_form(opcode: str, index: int, text: str, kinds: dict[str, Kind]) -> Form:
    words = text.split()
    where = f"form {text!r} of {opcode!r}"
    if not words or words[0] != opcode:
        raise OpcodeError(f"{where} must start with the opcode")
    parts: list[Part] = []
    keyword: str | None = None
    for w in words[1:]:
        if not w.startswith("$"):
            if keyword is not None:
                raise OpcodeError(f"{where}: keyword {keyword!r} has no operand after it")
            keyword = w
            continue
        name = w[1:]
        kind = kinds.get(name)
        if kind is None:
            raise OpcodeError(f"{where}: ${name} is not an operand field")
        if any(p.field == name for p in parts):
            raise OpcodeError(f"{where}: ${name} appears twice")
        if kind.lead and (parts or keyword is not None):
            raise OpcodeError(f"{where}: a {kind.name} is written only right after the opcode")
        if kind.keywords and keyword not in kind.keywords:
            want = " or ".join(repr(k) for k in kind.keywords)
            raise OpcodeError(f"{where}: a {kind.name} is written after {want}")
        if not kind.keywords and keyword is not None:
            raise OpcodeError(f"{where}: a {kind.name} takes no keyword, found {keyword!r}")
        parts.append(Part(name, kind, keyword))
        keyword = None
    if keyword is not None:
        raise OpcodeError(f"{where}: keyword {keyword!r} has no operand after it")
    return Form(opcode, index, tuple(parts))


def instruction(
    opcode: str, *forms: str, verify: Constraint | Sequence[Constraint] = (), doc: str = ""
) -> Callable[[type[T]], type[T]]:
    """Class decorator: declare the frozen dataclass below it as instruction ``opcode``.

    ``forms`` are its text forms (module docstring); ``verify`` its constraints, run by the
    verifier in order after each operand has passed its kind's check. Every field but ``loc``
    must be an :func:`operand`; a field absent from some form must default to None.
    """
    constraints = (verify,) if callable(verify) else tuple(verify)

    def deco(cls: type[T]) -> type[T]:
        if not _OPCODE_RE.fullmatch(opcode):
            raise OpcodeError(f"opcode {opcode!r} must match {_OPCODE_RE.pattern}")
        params = getattr(cls, "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise OpcodeError(f"instruction {opcode!r}: {cls.__name__} must be a frozen dataclass")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        kinds: dict[str, Kind] = {}
        for f in fields:
            if f.name == "loc":
                if f.compare:
                    raise OpcodeError(f"instruction {opcode!r}: loc must have compare=False")
                continue
            kind = f.metadata.get("kind")
            if not isinstance(kind, Kind):
                raise OpcodeError(
                    f"instruction {opcode!r}: field {f.name} is not an operand(KIND) or loc"
                )
            kinds[f.name] = kind
        if "loc" not in {f.name for f in fields}:
            raise OpcodeError(f"instruction {opcode!r}: {cls.__name__} needs a loc field")
        if not forms:
            raise OpcodeError(f"instruction {opcode!r} has no text form")
        parsed = tuple(_parse_form(opcode, k, text, kinds) for k, text in enumerate(forms))
        if any(not f.parts for f in parsed):
            raise OpcodeError(
                f"instruction {opcode!r}: a form needs an operand (a line is an opcode, a blank "
                "and its operands)"
            )
        if len({f.glued for f in parsed}) > 1:
            raise OpcodeError(
                f"instruction {opcode!r}: every form must start with a lead operand, or none"
            )
        defaults = {f.name for f in fields if f.default is None}
        for form in parsed:
            absent = set(kinds) - form.fields - defaults
            if absent:
                raise OpcodeError(
                    f"instruction {opcode!r}: {', '.join(sorted(absent))} absent from form "
                    f"{form.usage()!r} must default to None"
                )
        if len({f.fields for f in parsed}) != len(parsed):
            raise OpcodeError(f"instruction {opcode!r}: two forms take the same operands")
        cls.opcode = opcode  # type: ignore[attr-defined]
        OPCODES.declare(
            OpDef(opcode, cls, tuple(kinds.items()), parsed, constraints, doc or cls.__doc__ or "")
        )
        return cls

    return deco


class HandlerTable(Generic[H]):
    """One handler per opcode for one concern of a backend (timing, numerics, energy, ...).

    ``register("gemm", "act")`` decorates a handler of those opcodes; :meth:`check` raises
    :class:`OpcodeError` naming every opcode of the table without one (call it at the end of the
    module that registers them, so a missing handler fails its import); :meth:`by_class` gives
    the dispatch dict ``{instruction class: handler}``, checked again whenever the table has
    changed since (an opcode declared later, e.g. in a test, still cannot fall through).
    """

    def __init__(self, concern: str, table: OpcodeTable = OPCODES) -> None:
        self.concern = concern
        self.table = table
        self._handlers: dict[str, H] = {}
        self._dispatch: tuple[int, dict[type, H]] = (-1, {})
        table._handlers.append(self)

    def register(self, *opcodes: str) -> Callable[[H], H]:
        def deco(fn: H) -> H:
            for op in opcodes:
                if op not in self.table:
                    raise OpcodeError(f"{self.concern} handler for undeclared opcode {op!r}")
                if op in self._handlers:
                    raise OpcodeError(f"opcode {op!r} has two {self.concern} handlers")
                self._handlers[op] = fn
            self._dispatch = (-1, {})
            return fn

        return deco

    def _withdraw(self, opcode: str) -> None:
        self._handlers.pop(opcode, None)
        self._dispatch = (-1, {})

    def __getitem__(self, opcode: str) -> H:
        return self._handlers[opcode]

    def missing(self) -> list[str]:
        """Declared opcodes without a handler, in declaration order."""
        return [op for op in self.table if op not in self._handlers]

    def check(self) -> None:
        missing = self.missing()
        if missing:
            raise OpcodeError(
                f"no {self.concern} handler for opcode {', '.join(map(repr, missing))}: "
                f"register one with @{self.concern.upper()}.register(...)"
            )

    def by_class(self) -> dict[type, H]:
        version, table = self._dispatch
        if version != self.table.version:
            self.check()
            table = {d.cls: self._handlers[d.opcode] for d in self.table.defs()}
            self._dispatch = (self.table.version, table)
        return table
