"""The cursor the words reader walks a request's items with, the steps it builds, and its one-line error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kernelgen.frontends.lexicon_words import Item


class ReadError(ValueError):
    """The words cannot be read; the message is one line naming what went wrong."""


class Cursor:
    def __init__(self, items: list[Item]):
        self.items, self.i = items, 0

    def done(self) -> bool:
        return self.i >= len(self.items)

    def peek(self, k: int = 0) -> Item | None:
        j = self.i + k
        return self.items[j] if 0 <= j < len(self.items) else None

    def take(self) -> Item:
        it = self.items[self.i]
        self.i += 1
        return it

    def at(self, *kinds: str, text: tuple[str, ...] = ()) -> bool:
        it = self.peek()
        return it is not None and (it.kind in kinds or it.text in text)

    def until_close(self) -> list[Item]:
        """The items up to the ')' matching an '(' just taken (the ')' is consumed)."""
        depth, out = 1, []
        while not self.done():
            it = self.take()
            depth += (it.text == "(") - (it.text == ")")
            if depth == 0:
                return out
            out.append(it)
        raise ReadError("an opening parenthesis is never closed")


def article_is_operand(cur: Cursor, k: int = 0) -> bool:
    """'a' used as an operand name ("add a and b", "matmul of a and b"): an 'a' not followed by a noun."""
    it, nxt = cur.peek(k), cur.peek(k + 1)
    return it is not None and it.kind == "article" and (
        nxt is None or nxt.kind in ("join", "seq", "sym", "by", "of") or nxt.text == "from")


@dataclass
class Step:
    label: str
    apply: Callable[[str | None], str]
    pre: str = ""  # one of PRE_OPS: a residual add feeding a norm is returned too
    row_op: bool = False
    movable: bool = False  # a noun ("+ residual", "with scale", "a causal mask") that feeds a preceding row op
