"""The operands of a worded request: what a binary op takes ("bias", "2.0", "the row max"), an arithmetic
expression in words or symbols ("x plus bias", "a * sigmoid(b)"), an op inside one (`sigmoid(b)`,
"silu of x"), and a pair ("the sum of a and b")."""

from __future__ import annotations

import ast
from collections.abc import Callable

from kernelgen.frontends.lexicon_words import Item
from kernelgen.frontends.vocabulary import Word, number_call, render
from kernelgen.frontends.words_cursor import Cursor, ReadError, article_is_operand
from kernelgen.frontends.words_params import ParamReader, number

UNARY_KINDS = ("activation", "math", "norm", "softmax", "reduction")
ARITH = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


PAIRWISE = {"sum": "+", "prod": "*", "amax": "maximum", "amin": "minimum", "add": "+", "mul": "*", "sub": "-",
            "div": "/", "maximum": "maximum", "minimum": "minimum"}


def _pair_source(op: str, a: str, b: str) -> str:
    if op in ("+", "*", "-", "/"):
        return f"({a}) {op} ({b})"
    for u, v in ((a, b), (b, a)):
        try:
            float(v)
        except ValueError:
            continue
        return f"torch.clamp({u}, {'min' if op == 'maximum' else 'max'}={v})"
    return f"torch.{op}({a}, {b})"


class PairReader:
    """'the sum of x and y' is x + y, 'the max of x and 0' is torch.clamp(x, min=0): a reduction word with
    two operands joined by 'and' is the elementwise op, not a reduction of the first."""

    def pairwise(self, cur: Cursor, word: Word) -> str | None:
        if word.name not in PAIRWISE or not cur.at("of", text=("between",)):
            return None
        start = cur.i
        cur.take()
        first = self.expression(cur, stop_at_join=False)
        if not cur.at(text=("and",)):
            cur.i = start
            return None
        cur.take()
        second = self.expression(cur, stop_at_join=False)
        self.name_parts.append({"+": "add", "*": "mul", "-": "sub", "/": "div"}.get(PAIRWISE[word.name], word.name))
        return _pair_source(PAIRWISE[word.name], first, second)


class OperandReader(PairReader, ParamReader):
    """Mixin of the words reader: needs `declare`, `own_input`, `noun`, `note` and `name_parts`."""

    def operand(self, cur: Cursor) -> str | Callable[[str], str] | None:
        """What a binary op takes: a name, a number, a parenthesized expression, or a reduction of the value
        it applies to ("subtract the row max": keepdim, so it broadcasts back)."""
        while cur.at("filler", "by") or cur.at(text=("with", "to")) or (cur.at("article") and
                                                                         not article_is_operand(cur)):
            cur.take()
        pending: list[Item] = []
        while cur.at("dim"):
            pending.append(cur.take())
        it = cur.peek()
        if it is None:
            return None
        if it.kind == "op" and it.word.kind == "reduction":
            cur.take()
            word = it.word
            params, _ = self.params(cur, word, pending)
            self.reduction_dims.append("dim" in params)
            if "dim" in params:
                params["keepdim"] = True  # broadcasts back against the value it came from
            else:
                self.note(f"{word.name}: over every element (PyTorch's default); say 'row' or 'over the last "
                          "dim' for rows")
            self.note("" if word.note_param in params and word.note_param else word.note)
            return lambda v: render(word, {"x": v}, params)
        if pending:
            raise ReadError(f"{pending[0].text!r} does not apply to {it.text!r}")
        if it.kind == "op" and it.word.kind in UNARY_KINDS and cur.peek(1) is not None and \
                cur.peek(1).text in ("of", "("):
            return self._call(cur)  # "divide by the square root of 64", "multiply by sigmoid(b)"
        if it.kind == "num":
            cur.take()
            return repr(it.value)
        if it.text == "-" and number(cur.peek(1)):
            cur.take()
            return repr(-cur.take().value)
        if it.text == "(":
            cur.take()
            return "(" + self.expression(Cursor(cur.until_close()), stop_at_join=False) + ")"
        if it.kind in ("noun", "letter", "scale", "article"):
            return self.noun(cur.take())
        return None

    def expression(self, cur: Cursor, stop_at_join: bool) -> str:
        parts: list[str] = []
        starts: list[int] = []  # where each open parenthesis, then the last atom, starts in parts
        last = 0
        expect_operand, depth = True, 0
        while not cur.done():
            it, nxt = cur.peek(), cur.peek(1)
            if expect_operand:
                if it.kind == "filler" or (it.kind == "article" and nxt is not None and nxt.kind == "noun") or (
                        it.kind == "by" and parts and parts[-1] == "/"):
                    cur.take()
                elif it.kind == "scale" and nxt is not None and nxt.kind in ("noun", "letter"):
                    cur.take()  # "scaled logits": logits * scale
                    last = len(parts)
                    parts.append(f"{self.noun(cur.take())} * {self.noun(it)}")
                    expect_operand = False
                elif it.kind in ("noun", "letter", "scale", "article"):
                    last = len(parts)
                    parts.append(self.noun(cur.take()))
                    expect_operand = False
                elif it.kind == "num":
                    last = len(parts)
                    parts.append(repr(cur.take().value))
                    expect_operand = False
                elif it.text in ("(", "-"):
                    if it.text == "(":
                        starts.append(len(parts))
                    parts.append(cur.take().text)
                    depth += it.text == "("
                elif it.kind == "op" and it.word.kind in UNARY_KINDS + ("gated",):
                    last = len(parts)
                    parts.append(self._call(cur))
                    expect_operand = False
                else:
                    raise ReadError(f"expected an operand, found {it.text!r}")
                continue
            if it.text == ")" and depth:
                parts.append(cur.take().text)
                depth -= 1
                last = starts.pop()
            elif it.text in ("+", "-", "*", "/", "@", "**"):
                if stop_at_join and it.kind == "join" and (nxt is None or nxt.kind in ("op", "dequantize")):
                    break  # "x + bias + gelu": the second '+' joins the next op
                parts.append(cur.take().text)
                expect_operand = True
            elif it.kind == "op" and it.word.name in ARITH and it.word.kind == "binary":
                cur.take()
                parts.append(ARITH[it.word.name])
                expect_operand = True
            elif it.kind == "op" and it.word.name in ("square", "cube") and it.text.endswith("ed"):
                cur.take()  # "x squared", "(a - b) squared", "x cubed"
                parts[last:] = [render(it.word, {"x": " ".join(parts[last:])}, {})]
            elif it.kind == "param" and it.value == "exponent" and number(nxt):
                cur.take()
                parts += ["**", repr(cur.take().value)]
            else:
                break
        if expect_operand or depth:
            raise ReadError("an expression is incomplete: " + (" ".join(parts) or "nothing"))
        src = " ".join(parts)
        try:
            ast.parse(src, mode="eval")
        except SyntaxError:
            raise ReadError(f"cannot read the expression {src!r}") from None
        return src

    def _call(self, cur: Cursor) -> str:
        """An op inside an expression: `sigmoid(b)`, `silu of x plus bias`, `swiglu(a, b)`."""
        item = cur.take()
        word = item.word
        params, drops = self.params(cur, word, [])
        if cur.at(text=("(",)):
            cur.take()
            inner = cur.until_close()
            args, current = [], []
            for x in inner + [Item("sym", ",")]:
                if x.text == "," and x.kind in ("sym", "join"):
                    args.append(self.expression(Cursor(current), stop_at_join=False))
                    current = []
                else:
                    current.append(x)
        elif cur.at("of", text=("between",)):
            pair = self.pairwise(cur, word)
            if pair is not None:
                return pair
            cur.take()
            args = [self.expression(cur, stop_at_join=False)]
        elif cur.peek() is None or cur.at("seq", "after", "dim"):
            args = [self.main()]  # "log of softmax", "mean of the squares of each row": of the input
        else:
            raise ReadError(f"{item.text!r} inside an expression needs 'of' or parentheses: {item.text}(...)")
        if len(args) > len(word.operands):
            raise ReadError(f"{word.name} takes {len(word.operands)} operand(s), got {len(args)}")
        plain = number_call(word, args)
        if plain is not None:  # "the square root of 64"
            return plain
        ops: dict[str, str | None] = dict(zip(word.operands, args))
        for extra in word.operands[len(args):]:
            ops[extra] = None if (extra in drops or extra in word.optional and word.kind != "norm") else \
                self.own_input(word, extra)
        if word.kind == "gated" and len(args) < 2:
            raise ReadError(f"{word.name} needs two operands: {word.name}(a, b)")
        if word.kind == "reduction":
            self.reduction_dims.append("dim" in params or word.params.get("dim", -1) is not None)
        self.note("" if word.note_param in params and word.note_param else word.note)
        self.name_parts.append(word.name)
        return render(word, ops, params)


