"""Ops of the words reader that take their own operands: gated words, matmuls, losses and two-tensor
functions ("matmul of a and b", "cross entropy loss from logits and integer targets"), and int8
dequantization with its scale ("dequantize int8 with per-row scale")."""

from __future__ import annotations

from typing import Any

from kernelgen.frontends import lookahead as ahead
from kernelgen.frontends.lexicon_words import Item
from kernelgen.frontends.vocabulary import Word, render
from kernelgen.frontends.words_cursor import Cursor, ReadError, Step


class MultiReader:
    """Mixin of the words reader: needs `declare`, `note`, `emit` and `name_parts`."""

    def _multi_operand(self, cur: Cursor, word: Word, params: dict[str, Any], drops: set[str]) -> Step:
        if word.kind == "gated" and ahead.split_follows(cur):  # "silu and mul on one input split in halves"
            while not cur.at("split"):
                cur.take()
            cur.take()
            return Step(word.name, lambda v: self._split_gated(v, word, params))
        named: list[Item] = []
        introduced = cur.at("of", text=("between", "from"))  # "matmul of a and b", "loss from logits and ..."
        if introduced:
            cur.take()
        elif cur.at("letter") or ahead.article_operand(cur):  # "matrix multiply a and b" (letters only:
            introduced = True  # "matmul bias relu" adds a bias)
        while introduced and cur.peek() is not None and (cur.at("noun", "letter") or (
                cur.at("article", "filler", "join") and ahead.noun_ahead(cur)) or ahead.article_operand(cur)):
            it = cur.take()
            if it.kind in ("noun", "letter") or ahead.article_operand(cur, back=1):
                named.append(it)
        roles = {"matmul": ("lhs", "rhs"), "bmm": ("blhs", "brhs"), "linear": ("lin_x", "lin_w", "feature")}

        def apply(v: str | None) -> str:
            if v is not None:
                raise ReadError(f"{word.name} takes its own inputs; write it first or use a formula")
            ops: dict[str, str | None] = {}
            for k, o in enumerate(word.operands):
                if o in drops:
                    ops[o] = None
                    continue
                role = roles.get(word.name, ("rows",) * 3)[k] if word.kind == "matmul" else "rows"
                if k < len(named):
                    nm = named[k].value[0] if named[k].kind == "noun" else named[k].text
                else:
                    nm = o
                if word.kind == "loss" and o == "target" and word.name in ("cross_entropy", "nll_loss"):
                    self.declare(nm, "target", fill="index")
                elif word.kind == "loss" and (o == "target" or o == "p"):
                    self.declare(nm, "rows", fill="rand")
                else:
                    self.declare(nm, role)
                ops[o] = nm
            self.note(word_note(word, params))
            self.name_parts.append(word.name)
            return self.emit(render(word, ops, params))

        return Step(word.name, apply)

    def _split_gated(self, v: str | None, word: Word, params: dict[str, Any]) -> str:
        """act(x1) * x2 with x1, x2 the two halves of the last dim of one input x [M, N] (N even)."""
        x = v or self.declare("x", "rows")
        half = f"{x}.shape[-1] // 2"
        self.note(f"{word.name} on one input: its last dim split in halves, act(x[..., :N/2]) * x[..., N/2:]")
        self.note(word_note(word, params))
        self.name_parts.append(word.name)
        return self.emit(render(word, {"a": f"{x}[..., :{half}]", "b": f"{x}[..., {half}:]"}, params))

    def dequantize(self, cur: Cursor, pending: list[Item]) -> Step:
        cur.take()
        kind = "tensor"
        found = False
        for it in pending:
            if it.kind == "dim":
                kind, found = {-1: "row", 0: "col"}.get(it.value, "tensor"), True
        while cur.at("int8", "join", "filler", "scale_kind", "dim", "scale", "article"):
            it = cur.take()
            if it.kind == "scale_kind":
                kind, found = it.value, True
            elif it.kind == "dim":
                kind, found = {-1: "row", 0: "col"}.get(it.value, "tensor"), True
        if not found:
            self.note("dequantize: one scale for the whole tensor (say 'per-row' or 'per-column' for others)")

        def apply(v: str | None) -> str:
            x = v or self.declare("x", "int8", fill="int8")
            if kind == "row":
                scale = self.declare("scale", "per_row") + "[:, None]"
            elif kind == "col":
                scale = self.declare("scale", "feature")
            else:
                scale = self.declare("scale", "scalar", 0.05)
            self.note("dequantize: x int8 [M, N] to float32, times the scale")
            self.name_parts.append("dequantize_int8")
            return self.emit(f"{x}.float() * {scale}")

        return Step("dequantize", apply)


def word_note(word: Word, params: dict[str, Any]) -> str:
    """The word's convention note, unless the text set the parameter the note is about."""
    return "" if word.note_param and word.note_param in params else word.note
