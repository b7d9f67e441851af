"""Look-ahead tests of the words reader: what the next items of a request are (an operand, a second
operand, an article used as the name a, an expression)."""

from __future__ import annotations

from kernelgen.frontends.words_cursor import Cursor, article_is_operand

OPERAND_KINDS = ("noun", "letter", "num", "scale", "article")


def is_number(src: str) -> bool:
    try:
        float(src)
        return True
    except ValueError:
        return False


def next_is_noun(cur: Cursor) -> bool:
    """Whether an 'a' at the cursor is an article ("a gate tensor", "a causal mask"), not the operand a."""
    nxt = cur.peek(1)
    if nxt is not None and nxt.kind == "op" and nxt.text in ("squared", "cubed"):
        return False  # "a squared plus b squared": the operand a
    return nxt is not None and (nxt.kind in ("noun", "filler", "scale", "dequantize") or (
        nxt.kind == "op" and nxt.word.kind != "binary"))


def second_operand_next(cur: Cursor, allow_and: bool = True) -> bool:
    """'by', 'with', 'and', 'to', 'from' and a second operand: "divide x by 2", "add a and b". Not 'and' after
    a noun: "add bias and residual" adds both to the input."""
    it = cur.peek()
    if it is None or it.text not in ("by", "with", "and", "to", "from") or (it.text == "and" and not allow_and):
        return False
    k = 1
    while cur.peek(k) is not None and (cur.peek(k).kind == "filler" or (
            cur.peek(k).kind == "article" and cur.peek(k + 1) is not None and cur.peek(k + 1).kind != "join")):
        k += 1
    nxt = cur.peek(k)
    if nxt is None:
        return False
    if nxt.kind in ("noun", "letter", "num", "scale", "article") or nxt.text in ("(", "-"):
        return True
    return it.text != "and" and (nxt.kind == "dim" or (nxt.kind == "op" and nxt.word.kind != "binary"))


def of_after(cur: Cursor) -> bool:
    nxt = cur.peek(1)
    return nxt is not None and nxt.kind == "of"


def article_operand(cur: Cursor, back: int = 0) -> bool:
    return article_is_operand(cur, -back)


def noun_ahead(cur: Cursor) -> bool:
    nxt = cur.peek(1)
    return nxt is not None and nxt.kind in ("noun", "letter")


def operand_next(cur: Cursor, k: int = 0) -> bool:
    """Whether an operand starts at (or, past 'with', 'to', 'by' and fillers, after) item k."""
    while cur.peek(k) is not None and (cur.peek(k).kind in ("filler", "by") or cur.peek(k).text in ("with", "to")
                                       or (cur.peek(k).kind == "article" and not article_is_operand(cur, k))):
        k += 1
    it = cur.peek(k)
    return it is not None and (it.kind in ("noun", "letter", "num", "scale", "article") or it.text in ("(", "-") or
                               (it.kind == "op" and it.word.kind in ("reduction",)) or
                               (it.kind == "op" and it.word.kind in ("activation", "math", "softmax", "norm") and
                                cur.peek(k + 1) is not None and cur.peek(k + 1).text in ("of", "(")) or
                               (it.kind == "dim" and cur.peek(k + 1) is not None and cur.peek(k + 1).kind == "op"))


def operand_after_of(cur: Cursor) -> bool:
    """An 'of' (or 'to', 'applied to', 'between') followed, past fillers, by an operand or an op."""
    if not cur.at("of", text=("between",)):
        return False
    k = 1
    while cur.peek(k) is not None and cur.peek(k).kind == "filler":
        k += 1
    nxt = cur.peek(k)
    return nxt is not None and (nxt.kind in OPERAND_KINDS or nxt.kind == "op" or nxt.text in ("(", "-"))


def expression_follows(cur: Cursor) -> bool:
    """Whether the operand at the cursor starts an expression ("x plus bias", "2 * x")."""
    nxt, after = cur.peek(1), cur.peek(2)
    if nxt is not None and nxt.text == "+" and (after is None or after.kind in ("op", "dequantize", "seq")):
        return False  # "bias + relu": the '+' joins the next op
    return nxt is not None and (nxt.kind == "sym" and nxt.text in ("+", "-", "*", "/", "@", "**") or
                                nxt.text == "+" or (nxt.kind == "op" and nxt.word.kind == "binary"
                                                    and cur.peek(2) is not None
                                                    and cur.peek(2).kind in OPERAND_KINDS))


def single_operand(cur: Cursor) -> bool:
    """A letter right after a one-operand op, then nothing that could extend it into an expression:
    "normalize x along the last dim", "relu x". ("relu x plus b" is refused, not guessed.)"""
    it, nxt = cur.peek(), cur.peek(1)
    if it is None or not (it.kind == "letter" or article_is_operand(cur)):
        return False
    return nxt is None or nxt.kind in ("seq", "after", "dim", "lastn", "dim_index", "mod", "drop", "param",
                                       "between") or nxt.text in ("to", "[", "with")


def only_fillers_after(cur: Cursor) -> bool:
    """'to the input', 'on the tensor': an 'of' word followed only by fillers up to the next step."""
    k = 1
    while cur.peek(k) is not None and cur.peek(k).kind == "filler":
        k += 1
    nxt = cur.peek(k)
    return k > 1 and (nxt is None or nxt.kind in ("seq", "after", "join"))


def split_follows(cur: Cursor) -> bool:
    """'split in halves' after a gated word, past fillers, joins and 'on'/'of' words."""
    k = 0
    while cur.peek(k) is not None and cur.peek(k).kind in ("filler", "join", "of", "article"):
        k += 1
    return cur.peek(k) is not None and cur.peek(k).kind == "split"


def norm_follows(cur: Cursor) -> bool:
    """The next op of the step, past joins and fillers, is a norm ("add and rms norm", "add + layernorm")."""
    k = 0
    while cur.peek(k) is not None and cur.peek(k).kind in ("join", "filler"):
        k += 1
    it = cur.peek(k)
    return it is not None and it.kind == "op" and it.word.kind == "norm"
