"""``verify``: check the graph IR (SSA form, use lists, MoE layer shapes). Changes nothing."""

from __future__ import annotations

from dataclasses import dataclass

from moec.compiler.passes.pipeline import ModulePass, PassResult, register
from moec.ir.graph import Module


@register
@dataclass(frozen=True)
class VerifyIR(ModulePass):
    name = "verify"

    def run(self, module: Module) -> PassResult:
        module.verify()
        return PassResult(module, False)
