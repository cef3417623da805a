"""What Groove does with our answer: fill its own keys, render the Liquid template."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, TextIO

from liquid import Environment, RenderContext
from liquid.ast import BlockNode
from liquid.builtin.expressions import LoopExpression
from liquid.builtin.tags.for_tag import ForNode, ForTag
from liquid.builtin.tags.tablerow_tag import TablerowNode, TablerowTag
from liquid.exceptions import LiquidError, ResourceLimitError
from liquid.token import Token

MAX_VALUE_CHARS = 262_144
"""Longest text a filter may take or make (a profile value is far shorter)."""
MAX_ITEMS = 10_000
"""Longest list or range a filter may take or make (the loop limit, likewise)."""
MAX_INT_BITS = 1024
"""Largest integer a filter may take or make (about 300 digits): no 4,300-digit products."""
RENDER_SECONDS = 0.5
"""Time one render may take, checked at each loop iteration (a real template takes ~1 ms)."""

_DEADLINE: ContextVar[float] = ContextVar("liquid_render_deadline", default=float("inf"))


class TemplateLimitError(ResourceLimitError):
    """A value in a template grew past what a sidebar needs (text, list or number size)."""


class _GrooveEnvironment(Environment):
    """Standard Liquid with limits, so a template cannot stall the event loop or fill memory.

    python-liquid's own limits: iterations of nested loops (their product), the bytes
    held by ``assign``/``capture`` variables, the bytes written out, and the depth of
    nested contexts. Filters are wrapped (``_bounded``) so that a chain of filters in
    one expression cannot build what those limits only see afterwards.
    """

    loop_iteration_limit = MAX_ITEMS
    local_namespace_limit = 1_048_576
    output_stream_limit = 1_048_576
    context_depth_limit = 30

    def setup_tags_and_filters(self, *, extra: bool = False) -> None:
        """The standard tags and filters; filters bounded, loops timed."""
        super().setup_tags_and_filters(extra=extra)
        self.filters = {name: _bounded(name, func) for name, func in self.filters.items()}
        self.add_tag(_TimedForTag)
        self.add_tag(_TimedTablerowTag)


class _TimedBlock(BlockNode):
    """A loop's body: each iteration first checks the render's deadline.

    Loops are the only way a template of bounded length does unbounded work; the
    iteration limit bounds one nest of loops, not a thousand loops in a row.
    """

    __slots__ = ()

    def render_to_output(self, context: RenderContext, buffer: TextIO) -> int:
        """Render the body, unless the render is past its time."""
        if time.monotonic() > _DEADLINE.get():
            raise TemplateLimitError(
                f"the template took longer than {RENDER_SECONDS} s to render", token=None
            )
        return super().render_to_output(context, buffer)


class _TimedForNode(ForNode):
    __slots__ = ()

    def __init__(
        self,
        token: Token,
        expression: LoopExpression,
        block: BlockNode,
        default: BlockNode | None = None,
    ) -> None:
        super().__init__(token, expression, _TimedBlock(block.token, block.nodes), default)


class _TimedForTag(ForTag):
    node_class = _TimedForNode


class _TimedTablerowNode(TablerowNode):
    __slots__ = ()

    def __init__(self, token: Token, expression: LoopExpression, block: BlockNode) -> None:
        super().__init__(token, expression, _TimedBlock(block.token, block.nodes))


class _TimedTablerowTag(TablerowTag):
    node_class = _TimedTablerowNode


def _check(name: str, value: Any) -> None:
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise TemplateLimitError(f"{name}: text longer than {MAX_VALUE_CHARS:,}", token=None)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise TemplateLimitError(f"{name}: number too large", token=None)
    elif isinstance(value, list | tuple | range | dict) and len(value) > MAX_ITEMS:
        raise TemplateLimitError(f"{name}: more than {MAX_ITEMS:,} items", token=None)


def _bounded(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` refusing oversized arguments and results (its attributes kept by wraps)."""

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        for value in args:
            _check(name, value)
        for value in kwargs.values():
            _check(name, value)
        result = func(*args, **kwargs)
        _check(name, result)
        return result

    return call


_ENV = _GrooveEnvironment()


def groove_keys(email: str) -> dict[str, str]:
    """The keys Groove always sets itself, derived from the email as a stand-in for its data."""
    local = email.partition("@")[0]
    words = [w.capitalize() for w in local.replace("_", ".").replace("-", ".").split(".") if w]
    first = words[0] if words else local
    last = " ".join(words[1:])
    full = " ".join(words) or local
    return {
        "email": email,
        "name": full,
        "first_name": first,
        "last_name": last,
        "full_name": full,
        "status": "active",
    }


def render_sidebar(template: str, profile: Mapping[str, Any], email: str) -> str:
    """Render a Custom Profile template as Groove would: our keys, overridden by Groove's.

    Every failure is a LiquidError, resource limits included; a Python error raised
    inside a filter (python-liquid lets a few through) becomes one too.
    """
    context = {**profile, **groove_keys(email)}
    deadline = _DEADLINE.set(time.monotonic() + RENDER_SECONDS)
    try:
        return _ENV.from_string(template).render(**context)
    except LiquidError:
        raise
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
        raise TemplateLimitError(f"the template failed: {type(exc).__name__}", token=None) from None
    finally:
        _DEADLINE.reset(deadline)
