"""An op's parameters in words: numbers next to it ("leaky relu 0.2", "clamp to [-1, 1]"), parameter words
("eps 1e-6", "slope 0.2"), modifiers ("tanh approximation", "population"), dims ("over dim 0", "per row") and
dropped operands ("without weight")."""

from __future__ import annotations

from typing import Any

from kernelgen.frontends.lexicon_words import Item
from kernelgen.frontends.vocabulary import PARAM_WORDS, Src, Word
from kernelgen.frontends.words_cursor import Cursor, ReadError

GATED_BASE = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}
PARAM_ALIASES = {"min": ("min", "min_val"), "max": ("max", "max_val"), "alpha": ("alpha",), "beta": ("beta",),
                 "threshold": ("threshold",), "value": ("value",)}


def _param_of(word: Word, it: Item) -> str | None:
    """The parameter of `word` that the item names ("slope" -> negative_slope, "min" -> min_val)."""
    name = it.value if it.kind == "param" else PARAM_WORDS.get(it.text)
    if name is None:
        return None
    for candidate in PARAM_ALIASES.get(name, (name,)):
        if candidate in word.params:
            return candidate
    return None


def number(it: Item | None) -> bool:
    return it is not None and it.kind == "num"


class ParamReader:
    """Mixin of the words reader: reads the parameters written around an op."""

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
            elif (it.kind == "param" or it.text in PARAM_WORDS) and (number(nxt) or (
                    nxt is not None and nxt.text in ("=", "of", "is") and number(cur.peek(2)))):
                pname = _param_of(word, it)
                if pname is None:
                    if it.kind == "param":
                        raise ReadError(f"{word.name} has no parameter {it.text!r}")
                    break
                cur.take()
                if cur.peek().text in ("=", "of", "is"):
                    cur.take()
                bind(cur.take().value, pname)
            elif it.kind == "lastn" and number(nxt):
                cur.take()
                k = int(cur.take().value)
                if cur.at("dims_word", "dim_index"):
                    cur.take()
                if k != 1 and not (word.kind == "reduction" and k == 2):
                    raise ReadError(f"{word.name} over the last {k} dims: the words reader handles the last dim "
                                    "only (a number here is never an eps); write a formula for more dims")
                if "dim" in word.params:
                    params["dim"] = -1 if k == 1 else (-2, -1)
            elif it.kind == "dim_index" and number(nxt):
                if "dim" not in word.params:
                    raise ReadError(f"{word.name} takes no dim")
                cur.take()
                params["dim"] = int(cur.take().value)
            elif it.text == "[" or (it.kind == "between" and number(nxt)):
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
                if it.text == "between" and number(cur.peek()):
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
        return (it.kind == "param" or it.text in PARAM_WORDS) and number(after) and _param_of(word, it) is not None

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
