"""The small parts of a worded request: an op's parameters ("leaky relu with slope 0.2", "clamp to [-1, 1]",
"eps 1e-6", "over dim 0"), an operand ("bias", "2.0", "the row max") and an arithmetic expression in words
or symbols ("x plus bias", "a * sigmoid(b)")."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from kernelgen.frontends.lexicon_words import Item
from kernelgen.frontends.vocabulary import PARAM_WORDS, Src, Word, number_call, render

UNARY_KINDS = ("activation", "math", "norm", "softmax", "reduction")
GATED_BASE = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}
ARITH = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
PARAM_ALIASES = {"min": ("min", "min_val"), "max": ("max", "max_val"), "alpha": ("alpha",), "beta": ("beta",),
                 "threshold": ("threshold",), "value": ("value",)}


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


def _param_of(word: Word, it: Item) -> str | None:
    """The parameter of `word` that the item names ("slope" -> negative_slope, "min" -> min_val)."""
    name = it.value if it.kind == "param" else PARAM_WORDS.get(it.text)
    if name is None:
        return None
    for candidate in PARAM_ALIASES.get(name, (name,)):
        if candidate in word.params:
            return candidate
    return None


def _number(it: Item | None) -> bool:
    return it is not None and it.kind == "num"


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


class OperandReader(PairReader):
    """Mixin of the words reader: needs `declare`, `own_input`, `noun`, `note` and `name_parts`."""

    def params(self, cur: Cursor, word: Word, pending: list[Item]) -> tuple[dict[str, Any], set[str]]:
        params: dict[str, Any] = {}
        drops: set[str] = set()

        def bind(value: float, name: str | None = None) -> bool:
            free = [p for p in word.numbers if p not in params]
            name = name or (free[0] if free else None)
            if name is None:
                return False
            params[name] = int(value) if name == "dim" else value
            return True

        def modifier(it: Item) -> bool:
            if it.kind == "mod":
                pname, value = it.value
                if pname not in word.params:
                    raise ReadError(f"{it.text!r} does not apply to {word.name}")
                params[pname] = value
            elif it.kind == "drop":
                if not set(it.value) <= set(word.optional):
                    raise ReadError(f"{it.text!r} does not apply to {word.name}")
                drops.update(it.value)
            elif it.kind == "dim":
                if "dim" in word.params:
                    params["dim"] = it.value
                elif not (word.kind == "norm" and it.value == -1):
                    raise ReadError(f"{it.text!r} does not apply to {word.name}")
            elif it.text == "int8":
                raise ReadError(f"'int8' does not apply to {word.name}")
            else:
                return False
            return True

        for it in pending:
            modifier(it)
        depth = 0
        while not cur.done():
            it, nxt = cur.peek(), cur.peek(1)
            if it.kind == "num":
                if not bind(it.value):
                    break
                cur.take()
            elif it.kind in ("mod", "drop", "dim") or it.text == "int8":
                if it.kind == "dim" and "dim" not in word.params and word.kind != "norm":
                    break
                modifier(cur.take())
            elif (it.kind == "param" or it.text in PARAM_WORDS) and (_number(nxt) or (
                    nxt is not None and nxt.text in ("=", "of", "is") and _number(cur.peek(2)))):
                pname = _param_of(word, it)
                if pname is None:
                    if it.kind == "param":
                        raise ReadError(f"{word.name} has no parameter {it.text!r}")
                    break
                cur.take()
                if cur.peek().text in ("=", "of", "is"):
                    cur.take()
                bind(cur.take().value, pname)
            elif it.kind == "lastn" and _number(nxt):
                cur.take()
                k = int(cur.take().value)
                if cur.at("dims_word", "dim_index"):
                    cur.take()
                if k != 1 and not (word.kind == "reduction" and k == 2):
                    raise ReadError(f"{word.name} over the last {k} dims: the words reader handles the last dim "
                                    "only (a number here is never an eps); write a formula for more dims")
                if "dim" in word.params:
                    params["dim"] = -1 if k == 1 else (-2, -1)
            elif it.kind == "dim_index" and _number(nxt):
                if "dim" not in word.params:
                    raise ReadError(f"{word.name} takes no dim")
                cur.take()
                params["dim"] = int(cur.take().value)
            elif it.text == "[" or (it.kind == "between" and _number(nxt)):
                cur.take()
                while not cur.done() and cur.peek().text not in ("]",) and (cur.at("num", "join") or
                                                                           cur.peek().text in (",", "and", "to")):
                    x = cur.take()
                    if x.kind == "num" and not bind(x.value):
                        raise ReadError(f"{word.name} has no parameter for the number {x.text}")
                    if it.kind == "between" and x.kind == "num" and sum(p in params for p in word.numbers) >= 2:
                        break
                if it.text == "[":
                    if not cur.at(text=("]",)):
                        raise ReadError("a '[' is never closed")
                    cur.take()
            elif it.text in ("to", "between") and self._bounds_follow(cur):
                cur.take()
                while cur.at("filler"):
                    cur.take()
                if it.text == "between" and _number(cur.peek()):
                    cur.items[cur.i - 1] = Item("between", "between")  # read the pair below
                    cur.i -= 1
            elif it.kind == "dtype" and "dtype" in word.params:
                params["dtype"] = Src(cur.take().value)
            elif it.text == "tanh" and "approximate" in word.params:
                cur.take()
                params["approximate"] = "tanh"
            elif it.text == "(" and self._only_modifiers(cur, word):
                cur.take()
                depth += 1
            elif it.text == ")" and depth:
                cur.take()
                depth -= 1
            elif it.kind == "join" and nxt is not None and self._applies(word, nxt, cur.peek(2)):
                cur.take()
            elif it.kind == "op" and cur.i > 0 and cur.items[cur.i - 1].kind == "mod" and (
                    it.word is word or GATED_BASE.get(word.name) == it.word.name):
                cur.take()  # "geglu with exact gelu", "gelu (tanh approximation) gelu": the op named again
            elif it.kind == "join" and word.kind == "norm" and nxt is not None and nxt.kind == "noun" \
                    and nxt.value[0] in word.operands and nxt.value[0] not in drops:
                cur.take(), cur.take()  # "layer norm with weight and bias": its own operands, already there
            else:
                break
        if depth:
            raise ReadError("a '(' after an op is never closed")
        return params, drops

    @staticmethod
    def _applies(word: Word, it: Item, after: Item | None) -> bool:
        if it.kind in ("mod", "drop", "dim_index", "lastn", "between") or it.text == "[":
            return True
        if it.kind == "dim":
            return "dim" in word.params or word.kind == "norm"
        if it.text == "tanh":
            return False  # "gelu and tanh" is two ops; "gelu tanh" (adjacent) is the approximation
        if after is not None and after.text in ("of", "=", "is"):
            return (it.kind == "param" or it.text in PARAM_WORDS) and _param_of(word, it) is not None
        return (it.kind == "param" or it.text in PARAM_WORDS) and _number(after) and _param_of(word, it) is not None

    @staticmethod
    def _bounds_follow(cur: Cursor) -> bool:
        """'to [-1, 1]', 'to fp16', 'to 6', 'to the range 0 to 1': a bound or a dtype after fillers."""
        k = 1
        while cur.peek(k) is not None and cur.peek(k).kind == "filler":
            k += 1
        nxt = cur.peek(k)
        return nxt is not None and (nxt.text == "[" or nxt.kind in ("num", "dtype")) and (
            k > 1 or cur.peek().text == "to")

    @staticmethod
    def _only_modifiers(cur: Cursor, word: Word) -> bool:
        k = 1
        while cur.peek(k) is not None and cur.peek(k).text != ")":
            it = cur.peek(k)
            if not (it.kind in ("mod", "drop", "dim", "num", "param", "join", "filler", "lastn", "dims_word")
                    or it.text == "tanh" or it.text in PARAM_WORDS):
                return False
            k += 1
        return cur.peek(k) is not None

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
        if it.text == "-" and _number(cur.peek(1)):
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
            elif it.kind == "param" and it.value == "exponent" and _number(nxt):
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


