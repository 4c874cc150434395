"""``calc``: a calculator tool. The model writes ``<calc>3 * (4 + 5)</calc>``; generation stops
at ``</calc>``, the tool evaluates the expression and the model sees ``<result>27</result>``.

It shows what a tool brings besides running code: its own ``instructions`` for the default
prompt, a per-trajectory session (``x = 3`` in one turn, ``x + 1`` in a later one; another
trajectory never sees ``x``), a default per-call limit (``timeout_s``), and failures returned
as results, never raised. Expressions are parsed with :mod:`ast` and only arithmetic is
evaluated: no names but the session's variables, no calls, no attributes.
"""

from __future__ import annotations

import ast
import asyncio
import math
import operator
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from simpletir.core.errors import ConfigError
from simpletir.core.specs import option
from simpletir.core.types import ToolCall, ToolContext, ToolResult

NAME = "calc"
CALL = re.compile(r"<calc>(.*?)</calc>", re.DOTALL)


@dataclass
class CalcOptions:
    """``plugin_config.calc``."""

    decimals: int = option(6, "decimal places a non-integer result is rounded to")
    max_exponent: int = option(100, "largest exponent ** accepts (huge powers would hang the tool)")
    max_chars: int = option(200, "longest expression accepted, in characters")
    timeout_s: float = option(2.0, "the tool's default per-call limit (rollout.tools_timeout_s overrides)")

    def __post_init__(self) -> None:
        where = f"plugin_config.{NAME}"
        if not 0 <= self.decimals <= 15:
            raise ConfigError(f"{where}.decimals = {self.decimals} must be between 0 and 15")
        if self.max_exponent < 1:
            raise ConfigError(f"{where}.max_exponent = {self.max_exponent} must be >= 1")
        if self.max_chars < 1:
            raise ConfigError(f"{where}.max_chars = {self.max_chars} must be >= 1")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ConfigError(f"{where}.timeout_s = {self.timeout_s} must be > 0")


Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalcError(Exception):
    """An expression the calculator refuses; its message is what the model sees."""


class CalcTool:
    """The :class:`simpletir.core.specs.Tool` protocol, with the optional Tool v1 members."""

    name = NAME
    instructions = (
        "You can use a calculator: write an arithmetic expression as <calc>expression</calc> and "
        "its value is returned as <result>value</result>. Assign with <calc>x = 2 * 3</calc> to "
        "use x in later calculations."
    )

    def __init__(self, options: CalcOptions) -> None:
        self.options = options
        self.timeout_s = options.timeout_s  # the loop's limit when rollout.tools_timeout_s is unset

    @property
    def stop_strings(self) -> Sequence[str]:
        return ("</calc>",)

    def parse_call(self, turn_text: str, ctx: ToolContext | None = None) -> ToolCall | None:
        calls = CALL.findall(turn_text)
        return ToolCall(tool=NAME, code=calls[-1].strip()) if calls else None

    # -- sessions: one dict of variables per trajectory ------------------------------------
    def open_session(self, ctx: ToolContext) -> dict[str, Any]:
        return {}

    def close_session(self, session: dict[str, Any]) -> None:
        session.clear()

    # -- running ---------------------------------------------------------------------------
    async def run(
        self, call: ToolCall, ctx: ToolContext | None = None, *, timeout_s: float | None = None
    ) -> ToolResult:
        variables = ctx.session if ctx is not None and isinstance(ctx.session, dict) else None
        return self.evaluate(call.code, variables)

    async def run_many(self, calls: Sequence[ToolCall]) -> AsyncIterator[tuple[int, ToolResult]]:
        for index, call in enumerate(calls):
            yield index, await self.run(call)
            await asyncio.sleep(0)

    def evaluate(self, code: str, variables: dict[str, Any] | None = None) -> ToolResult:
        """Evaluate ``code`` (``expr`` or ``name = expr``); any refusal is a failed result."""
        started = time.perf_counter()
        try:
            text = self._evaluate(code, variables)
        except (CalcError, ArithmeticError, ValueError) as exc:
            message = str(exc) if isinstance(exc, CalcError) else f"{type(exc).__name__}: {exc}"
            return ToolResult(stderr=message, exit_code=1, duration_ms=_ms(started))
        return ToolResult(stdout=text, duration_ms=_ms(started))

    def format_observation(self, result: ToolResult) -> str:
        return f"\n<result>{result.stdout if result.ok else result.error or result.stderr}</result>\n"

    async def aclose(self) -> None:
        """Nothing to release: the calculator holds no process."""

    # -- the evaluator ---------------------------------------------------------------------
    def _evaluate(self, code: str, variables: dict[str, Any] | None) -> str:
        if len(code) > self.options.max_chars:
            raise CalcError(f"expression longer than {self.options.max_chars} characters")
        target = None
        match = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*=(?!=)(.*)", code, re.DOTALL)
        if match:
            if variables is None:
                raise CalcError("assignments need a session (this run has none)")
            target, code = match.group(1), match.group(2)
        try:
            tree = ast.parse(code.strip(), mode="eval")
        except SyntaxError as exc:
            raise CalcError(f"not an arithmetic expression: {exc.msg}") from None
        value = self._value(tree.body, variables or {})
        if target is not None:
            assert variables is not None
            variables[target] = value
        if isinstance(value, float):
            return str(int(value)) if value.is_integer() else str(round(value, self.options.decimals))
        return str(value)

    def _value(self, node: ast.AST, variables: dict[str, Any]) -> Number:
        result: Number
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            result = node.value  # type: ignore[assignment]  # narrowed by the type() check
        elif isinstance(node, ast.Name):
            if node.id not in variables:
                raise CalcError(f"unknown name {node.id!r}")
            result = variables[node.id]
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            result = _UNARY[type(node.op)](self._value(node.operand, variables))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self._value(node.left, variables), self._value(node.right, variables)
            if isinstance(node.op, ast.Pow) and abs(right) > self.options.max_exponent:
                raise CalcError(f"exponent {right} is above max_exponent={self.options.max_exponent}")
            result = _BINARY[type(node.op)](left, right)
        else:
            raise CalcError(f"{type(node).__name__} is not arithmetic")
        return result


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def build(options: CalcOptions, experiment: object) -> CalcTool:
    """The factory: cheap (no process, no state), as every factory must be."""
    return CalcTool(options)
