"""Worded requests -> a PyTorch program (statements over named inputs), one vocabulary snippet per op.

How a request is read (README, "How a request is read"):
- "then", "followed by", "->", ";" split the request into groups applied in order; inside a group, ops
  apply in the order written, joined by "and", "+", "with" or nothing;
- "of", "applied to", "on" and call syntax group: "silu of x plus bias" is silu(x + bias), the op takes
  everything after "of" up to the next "then";
- a residual add, a bias add, a scale or a causal mask written after a norm or softmax in the same group
  feeds it ("fused rmsnorm + residual", "softmax with a causal mask"); a residual add that feeds a norm is
  also returned (the updated residual stream);
- a number binds only to a parameter of the op just before it, in the order the vocabulary lists
  ("leaky relu 0.2", "clamp to [-1, 1]"), or to the parameter the text names ("eps 1e-6"); any other number
  is refused;
- every word must be used: a word outside the vocabulary, or one that cannot be placed, refuses the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernelgen.frontends import lookahead as ahead
from kernelgen.frontends.lexicon_words import Item
from kernelgen.frontends.vocabulary import BY_NAME, Src, Word, render
from kernelgen.frontends.words_cursor import Cursor, ReadError, Step
from kernelgen.frontends.words_multi import MultiReader, word_note
from kernelgen.frontends.words_operands import OperandReader

PRE_OPS = ("residual", "bias", "scale", "causal_mask")  # may be written after the norm / softmax they feed
ROW_OPS = ("norm", "softmax")


@dataclass
class Decl:
    name: str
    role: str  # rows | rows4d | feature | per_row | scalar | target | lhs | rhs | blhs | brhs | lin_x | lin_w | int8
    value: float | None = None
    fill: str = "randn"


@dataclass
class Program:
    statements: list[str]
    outputs: list[str]
    decls: dict[str, Decl]
    notes: list[str]
    name_parts: list[str]


@dataclass
class Reader(OperandReader, MultiReader):
    statements: list[str] = field(default_factory=list)
    decls: dict[str, Decl] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs_extra: list[str] = field(default_factory=list)
    name_parts: list[str] = field(default_factory=list)
    causal: bool = False
    temps: int = 0
    whole: set[str] = field(default_factory=set)  # values that are reductions over every element
    reduction_dims: list[bool] = field(default_factory=list)  # per reduction: whether the text named its dim

    # ---- inputs and statements -------------------------------------------------------------------
    def declare(self, name: str, role: str, value: float | None = None, fill: str = "randn") -> str:
        if name not in self.decls:
            self.decls[name] = Decl(name, role, value, fill)
        return name

    def own_input(self, word: Word, operand: str) -> str:
        """A parameter tensor an op brings (a norm's weight and bias, prelu's weight), [N]. Layer norm's bias
        is `ln_bias` (so "layer norm then add bias" has two biases); a name already used gets the op's prefix."""
        name = "ln_bias" if (word.name, operand) == ("layer_norm", "bias") else operand
        if name in self.decls:
            name = f"{word.name}_{operand}"
        return self.declare(name, "feature")

    def main(self) -> str:
        return self.declare("x", "rows4d" if self.causal else "rows")

    def emit(self, expr: str) -> str:
        self.temps += 1
        name = f"h{self.temps}"
        self.statements.append(f"{name} = {expr}")
        return name

    def note(self, text: str) -> None:
        if text and text not in self.notes:
            self.notes.append(text)

    def noun(self, it: Item) -> str:
        if it.kind == "scale":
            return self.declare("scale", "scalar", 0.125)
        if it.kind in ("letter", "article"):
            return self.declare(it.text, "rows")
        name, role = it.value
        if role == "scalar":
            from kernelgen.frontends.lexicon_words import SCALAR_VALUES

            return self.declare(name, "scalar", SCALAR_VALUES.get(name, 0.5))
        if role == "target":
            return self.declare(name, "target", fill="index")
        return self.declare(name, role)

    # ---- the request ----------------------------------------------------------------------------
    def read(self, items: list[Item]) -> Program:
        self.causal = any(it.word is not None and it.word.name == "causal_mask" for it in items)
        groups: list[list[Item]] = [[]]
        order: list[int] = [0]  # "A after B": B's group runs first
        depth = 0
        for it in items:
            depth += it.text == "(" and 1 or 0
            depth -= it.text == ")" and 1 or 0
            if it.kind in ("seq", "after") and depth == 0:
                groups.append([])
                if it.kind == "after":
                    order.insert(len(order) - 1, len(groups) - 1)
                else:
                    order.append(len(groups) - 1)
            else:
                groups[-1].append(it)
        groups = [groups[k] for k in order]
        value: str | None = None
        for g in groups:
            if not g:
                raise ReadError("an ordering word ('then', '->', ...) has nothing on one side")
            value = self.group(g, value)
        if value is None:
            raise ReadError("no op found")
        if True in self.reduction_dims and False in self.reduction_dims:
            raise ReadError("some reductions name a dim and others do not ('per row' applies to the op next to "
                            "it): say the dim for each")
        outputs = [value] + [o for o in self.outputs_extra if o != value]
        return Program(self.statements, outputs, self.decls, self.notes, self.name_parts)

    def group(self, items: list[Item], running: str | None) -> str | None:
        cur = Cursor(items)
        steps: list[Step] = []
        pending: list[Item] = []
        while not cur.done():
            it = cur.peek()
            if it.kind in ("filler", "join") or (it.kind == "article" and ahead.next_is_noun(cur)):
                cur.take()
            elif it.kind == "mod" and it.value[0] == "reduction" and it.value[1] in ("sum", "mean") and not any(
                    x.kind == "op" and x.word.kind == "loss" for x in items):
                cur.items[cur.i] = Item("op", it.text, word=BY_NAME[it.value[1]])  # "the sum reduction over dim 1"
            elif it.kind in ("mod", "dim", "drop") or it.text == "int8":
                pending.append(cur.take())
            elif it.text == "squared" and cur.peek(1) is not None and cur.peek(1).kind == "op" and \
                    cur.peek(1).word.kind in ("activation", "math"):
                cur.take()  # "squared relu" is relu(x) ** 2: the adjective applies to the op's result
                steps.append(self.phrase(cur, pending, True))
                steps.append(self._unary_step(BY_NAME["square"], {}, set(), None))
                pending = []
            else:
                steps.append(self.phrase(cur, pending, running is not None or bool(steps)))
                pending = []
        if pending:
            raise ReadError(f"{pending[0].text!r} is not next to an op it applies to")
        steps = self._feed_row_ops(steps)
        value = running
        for s in steps:
            value = s.apply(value)
        return value

    def _feed_row_ops(self, steps: list[Step]) -> list[Step]:
        """A residual / bias add, scale or causal mask written after a norm or softmax of the same group
        feeds it: move it before the first row op."""
        out: list[Step] = []
        for s in steps:
            first_row = next((k for k, t in enumerate(out) if t.row_op), None)
            if s.movable and first_row is not None:
                self.note(f"{s.label!r} written after {out[first_row].label!r} feeds it (write 'then' for the "
                          "other order)")
                out.insert(first_row, s)
            else:
                out.append(s)
        for k, s in enumerate(out[:-1]):
            if s.pre == "residual" and out[k + 1].row_op and out[k + 1].label in ("rms_norm", "layer_norm"):
                original = s.apply

                def keep(v, original=original):
                    h = original(v)
                    self.outputs_extra.append(h)
                    return h

                out[k] = Step(s.label, keep, s.pre, movable=s.movable)
                self.note("the residual sum feeding the norm is returned too: (y, h) with h = x + residual")
        return out

    # ---- phrases --------------------------------------------------------------------------------
    def phrase(self, cur: Cursor, pending: list[Item], has_running: bool) -> Step:
        it = cur.peek()
        if it.kind == "op":
            return self.op_phrase(cur, pending)
        if it.kind == "dequantize":
            return self.dequantize(cur, pending)
        if it.kind == "scale":
            if not ahead.operand_next(cur, 1):  # "scaled softmax", "softmax with scale": the input `scale`
                cur.take()
                step = self._binary_step(BY_NAME["mul"], self.declare("scale", "scalar", 0.125), "scale")
                step.movable = True
                return step
            return self.op_phrase(cur, pending, BY_NAME["mul"])  # "scale by 0.5", "scale x by alpha"
        if it.kind == "noun" and not ahead.expression_follows(cur):
            cur.take()
            name, role = self.noun(it), it.value[1]
            nxt = cur.peek()
            if nxt is not None and nxt.kind == "op" and nxt.word.kind == "binary":
                word = cur.take().word  # "bias add", "residual add"
            elif name in ("residual", "bias"):
                word = BY_NAME["add"]
            elif role == "scalar":
                word = BY_NAME["div" if name == "temperature" else "mul"]
            elif name == "gate":
                word = BY_NAME["mul"]
            else:
                raise ReadError(f"{it.text!r} alone: say what it does with it (add, multiply, ...)")
            step = self._binary_step(word, name, name if name in ("residual", "bias", "scale") else "")
            step.movable = True
            return step
        if it.kind in ahead.OPERAND_KINDS or it.text in ("(", "-"):
            if it.kind == "num" and not ahead.expression_follows(cur):
                raise ReadError(f"the number {it.text} is not next to a parameter of an op")
            src = self.expression(cur, stop_at_join=True)

            def start(v: str | None, src=src) -> str:
                if v is not None:
                    raise ReadError(f"the operand {src!r} follows another op with no operator between them")
                return src if src.isidentifier() else self.emit(src)

            return Step(src, start)
        raise ReadError(f"cannot place {it.text!r} here")

    def op_phrase(self, cur: Cursor, pending: list[Item], as_word: Word | None = None) -> Step:
        item = cur.take()
        word = as_word or item.word
        if word.name in ("maximum", "minimum") and item.text in ("maximum", "minimum") and (
                cur.at("dim") or (cur.at("of") and cur.peek(1) is not None and cur.peek(1).kind == "dim")):
            word = BY_NAME["amax" if word.name == "maximum" else "amin"]  # "minimum of each row": a reduction
            if cur.at("of"):
                cur.take()
        if word.kind == "binary" and ahead.operand_after_of(cur):  # "elementwise max of x and 0"
            pair = self.pairwise(cur, word)
            if pair is not None:
                return Step(item.text, lambda v, pair=pair: self._pair_start(v, item.text, pair))
        if word.kind == "binary":
            operand = self.operand(cur) if ahead.operand_next(cur) else None
            if pending:
                raise ReadError(f"{pending[0].text!r} does not apply to {item.text!r}")
            if operand is None and word.name == "add" and ahead.norm_follows(cur):
                # "fused add and rms norm": the residual add of a pre-norm block (returned too)
                self.note("'add' next to a norm is the residual add: h = x + residual")
                step = self._binary_step(word, self.declare("residual", "rows"), "residual")
                return step
            first_is_name = cur.i > 0 and cur.items[cur.i - 1].kind in ("letter", "article", "num", "sym")
            if isinstance(operand, str) and ahead.second_operand_next(cur, allow_and=first_is_name):
                # "divide x by the row sum", "multiply x by sigmoid of x", "add a and b", "subtract 1 from x"
                link = cur.take().text
                while cur.at("filler") or (cur.at("article") and not ahead.article_operand(cur)):
                    cur.take()
                nxt = cur.peek()
                second = self.operand(cur) if nxt.kind in ("dim",) or (
                    nxt.kind == "op" and nxt.word.kind == "reduction" and not ahead.of_after(cur)) else \
                    self.expression(cur, stop_at_join=True)
                first, second = (second, operand) if link in ("to", "from") else (operand, second)
                if callable(first):
                    raise ReadError(f"cannot read {item.text!r} with a reduction as its first operand")
                return self._binary_step(word, second, "", first=first)
            return self._binary_step(word, operand, operand if operand in ("residual", "bias", "scale") else "")
        params, drops = self.params(cur, word, pending)
        if word.name == "cast" and "dtype" not in params:
            raise ReadError("cast to which dtype? (fp16, bf16, fp32)")
        if word.name in ("clamp", "hardtanh") and len([p for p in params if p in word.numbers]) == 1 and \
                not any(it.kind == "param" or it.text in ("min", "max") for it in cur.items[:cur.i]):
            raise ReadError(f"{word.name} with one bound: say which ('min 0', 'max 6') or give both")
        if word.name == "threshold" and len(params) < 2:
            raise ReadError("threshold needs two numbers: the threshold and the value below it")
        if word.kind in ("gated", "matmul", "loss", "pair"):
            return self._multi_operand(cur, word, params, drops)
        operand: str | None = None
        pair = self.pairwise(cur, word) if ahead.operand_after_of(cur) else None
        if pair is not None:  # "sum of a and b", "max of x and 0"
            return Step(item.text, lambda v, pair=pair: self._pair_start(v, item.text, pair))
        if cur.at("of") and ahead.only_fillers_after(cur):  # "applies softmax to the input": the input
            while cur.at("of", "filler"):
                cur.take()
        if cur.at("of") and ahead.operand_after_of(cur):
            cur.take()
            operand = self.expression(cur, stop_at_join=False)
            more, more_drops = self.params(cur, word, [])  # "the elu of x with alpha 1.5"
            params.update(more)
            drops |= more_drops
        elif ahead.single_operand(cur):  # "normalize x along the last dim", "clip x to [0, 1]"
            operand = self.noun(cur.take())
            more, more_drops = self.params(cur, word, [])
            params.update(more)
            drops |= more_drops
        elif cur.at(text=("(",)):  # call syntax inside words: "relu(x) then add 1"
            cur.take()
            operand = self.expression(Cursor(cur.until_close()), stop_at_join=False)
        return self._unary_step(word, params, drops, operand)

    def _pair_start(self, v: str | None, text: str, pair: str) -> str:
        if v is not None:
            raise ReadError(f"{text!r} of two operands comes after another op: use 'then'")
        return self.emit(pair)

    def _unary_step(self, word: Word, params: dict[str, Any], drops: set[str], operand: str | None) -> Step:
        def apply(v: str | None) -> str:
            if v is not None and operand is not None:
                raise ReadError(f"{word.name} 'of' {operand!r} comes after another op: use 'then' or a formula")
            x = operand or v or self.main()
            if x in self.whole and word.kind in ("reduction", "norm", "softmax"):
                raise ReadError(f"{word.name} after a reduction over every element would apply to one number; "
                                "say which dim ('per row', 'over the last dim')")
            if word.positive and x in self.decls and self.decls[x].role in ("rows", "rows4d"):
                self.decls[x].fill = "positive"
            ops: dict[str, str | None] = {word.operands[0]: x}
            for extra in word.operands[1:]:
                ops[extra] = None if extra in drops else self.own_input(word, extra)
            if word.name == "clamp" and "min" not in params and "max" not in params:
                params.update(min=Src(self.declare("lo", "scalar", -1.0)), max=Src(self.declare("hi", "scalar", 1.0)))
                self.note("clamp: no bounds in the text, so they are inputs lo=-1.0, hi=1.0")
            if word.kind == "reduction":
                self.reduction_dims.append("dim" in params or word.params.get("dim", -1) is not None)
            if word.kind == "reduction" and "dim" not in params and word.params.get("dim", -1) is None:
                self.note(f"{word.name}: over every element (PyTorch's default); say 'over the last dim' or "
                          "'per row' for rows")
            self.note(word_note(word, params))
            self.name_parts.append(word.name)
            out = self.emit(render(word, ops, params))
            if word.kind == "reduction" and params.get("dim", word.params.get("dim")) is None:
                self.whole.add(out)
            return out

        return Step(word.name, apply, "causal_mask" if word.name == "causal_mask" else "",
                    row_op=word.kind in ROW_OPS, movable=word.name == "causal_mask")

    def _binary_step(self, word: Word, operand, pre: str, first: str | None = None) -> Step:
        def apply(v: str | None) -> str:
            if first is not None:
                if v is not None:
                    raise ReadError(f"{word.name} of {first!r} comes after another op: use 'then' or a formula")
                x, y = first, operand
            elif v is None and operand == "x":
                raise ReadError(f"{word.name} x and what? (write '{word.name} x and y' or a formula)")
            elif v is None and operand is None:
                x, y = self.declare("a", "rows"), self.declare("b", "rows")
            else:
                x = v or self.main()
                y = operand or self.declare("y", "rows")
            self.name_parts.append({"residual": "add", "bias": "bias", "scale": "scale"}.get(pre, word.name))
            if callable(y):
                y = y(x)
            if ahead.is_number(y) and word.name in ("maximum", "minimum"):
                return self.emit(f"torch.clamp({x}, {'min' if word.name == 'maximum' else 'max'}={y})")
            return self.emit(render(word, {"x": x, "y": y}, {}))

        return Step(pre or word.name, apply, pre)
