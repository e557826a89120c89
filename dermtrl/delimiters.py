"""Outside text inside a prompt: it sits between delimiters and can never forge one, however it is disguised.

Every delimiter of :mod:`dermtrl.prompts` has the form ``<<<LABEL>>>`` / ``<<<END LABEL>>>``. A passage we did
not write (a candidate narrative, a reference, a judge answer handed to the parser, a narrative handed to the
rationale model) could try to close its block early and append instructions. Searching for the exact
delimiter is not enough: a reader, and a model, takes ``< < <END CANDIDATE TEXT> > >``,
``<\\u200b<<END CANDIDATE TEXT>>>`` (a zero-width space), fullwidth ``＜＜＜`` or ``≪<END…`` for the real one.

So :func:`neutralise` first computes the text *as a model reads it* (:func:`reading_form`): compatibility
forms folded (NFKD: fullwidth and small forms become ASCII), invisible characters dropped (format characters
such as zero-width spaces, joiners, bidi marks, soft hyphens, variation selectors and tags, combining marks,
fillers, unassigned code points), whitespace dropped, case folded, and every angle-bracket look-alike (``‹ « ≪
⋘ 〈 ⟨ ⟪ 《 ❮ ᐸ ˂ …``) read as ``<`` or ``>``. In that form it looks for

* any run of two or more ``<`` (or ``>``): every delimiter starts with ``<<<`` and ends with ``>>>``;
* a single ``<``/``>`` touching a delimiter label (``<END CANDIDATE TEXT>``, ``< e n d  t e x t >``; the
  common word "text" only in its closing form),

and replaces each original character that made one of them with ``(`` or ``)``. The passage keeps its words
and stays readable; no substring of it reads as a delimiter any more (``tests/test_delimiters.py`` checks
this as a property over generated disguises).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["LABELS", "delimit", "neutralise", "reading_form"]

#: The labels between ``<<<`` and ``>>>`` in the project's delimiters, in their reading form (no spaces,
#: case folded). ``END`` is optional before each.
LABELS: tuple[str, ...] = ("candidatetext", "referencetext", "narrative", "text")

_LEFT, _RIGHT = "(", ")"  # what a neutralised bracket becomes: readable, and no angle bracket look-alike

# Angle-bracket look-alikes (after NFKD, which already folds fullwidth ＜ and small ﹤ to ASCII) and how many
# brackets a reader sees in each.
_LOOK_ALIKES: dict[str, str] = {
    **dict.fromkeys("<‹〈⟨❮❬❰ᐸ˂⧼⦑⋖⊲˱≺ᐸ⦓⟬⧀⩤", "<"),
    **dict.fromkeys("«≪⟪《", "<<"),
    "⋘": "<<<",
    **dict.fromkeys(">›〉⟩❯❭❱ᐳ˃⧽⦒⋗⊳˲≻ᐳ⦔⟭⧁⩥", ">"),
    **dict.fromkeys("»≫⟫》", ">>"),
    "⋙": ">>>",
}
# Letters from other scripts that read as Latin letters (a model reads "ЕND" as "END"): capitals first (Greek Ν
# reads as N, its small form ν as v), then small letters after case folding.
_HOMOGLYPH_CAPITALS = str.maketrans(dict(zip("АВЕКМНОРСТХІЅЈΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEKMHOPCTXISJABEZHIKMNOPTYX",
                                             strict=True)))
_HOMOGLYPHS = str.maketrans(dict(zip("аеорсхіԁѕјαεοριικνυɑı", "aeopcxidsjaeopiikvuai", strict=True)))
# Code points that render as nothing (or as blank) without being whitespace or format characters.
_BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e\u034f")
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Cn", "Co", "Cs", "Mn", "Me", "Zs", "Zl", "Zp"})


@lru_cache(maxsize=4096)
def _read_char(ch: str) -> str:
    """How a model reads one character: '' for invisible ones and whitespace, else folded characters."""
    out = []
    for d in unicodedata.normalize("NFKD", ch):
        if d in _BLANKS or d.isspace() or unicodedata.category(d) in _INVISIBLE_CATEGORIES:
            continue
        look = _LOOK_ALIKES.get(d)
        out.append(look if look is not None else d.translate(_HOMOGLYPH_CAPITALS).casefold().translate(_HOMOGLYPHS))
    return "".join(out)


def _reading(text: str) -> tuple[str, list[int]]:
    """The reading form and, for each of its characters, the index of the original character it came from."""
    chars: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        read = _read_char(ch)
        chars.append(read)
        origin.extend([i] * len(read))
    return "".join(chars), origin


#: ASCII characters a model reads as nothing: the controls and whitespace (``str.translate`` deletes them).
_ASCII_UNREAD = dict.fromkeys([*range(33), 127])


def reading_form(text: str) -> str:
    """``text`` as a model reads it: no invisible characters or whitespace, case folded, look-alikes folded
    (angle-bracket look-alikes to ``<``/``>``). Two texts a reader takes for the same have the same form."""
    if text.isascii():  # NFKD, look-alikes and homoglyphs leave ASCII as it is: only blanks go, and case
        return text.translate(_ASCII_UNREAD).lower()
    return "".join(map(_read_char, text))


# "text" alone is too common a word ("a < text > b" is prose): only its closing form "<END TEXT>" counts.
_LABEL = "(?:(?:end)?(?:" + "|".join(label for label in LABELS if label != "text") + ")|endtext)"
_FORGERIES = re.compile(
    r"<{2,}|>{2,}"  # a delimiter's opening or closing run
    rf"|<(?={_LABEL})"  # a single bracket opening a label
    r"|(?<=candidatetext)>|(?<=referencetext)>|(?<=narrative)>|(?<=<endtext)>"  # ... or closing one
)


def neutralise(text: str) -> str:
    """``text`` with every character that a reader could take for part of a delimiter made harmless.

    Each angle bracket (or look-alike) in a run of two or more, or touching a delimiter label, whatever
    whitespace or invisible characters sit between, becomes ``(`` or ``)``; all else is unchanged. Idempotent.
    """
    if text.isascii() and "<" not in text and ">" not in text:
        return text  # no ASCII character but < and > reads as a bracket: nothing to neutralise (the common case)
    if _FORGERIES.search(reading_form(text)) is None:
        return text  # brackets, but none a reader takes for a delimiter (``</think>`` in a reasoning trace)
    form, origin = _reading(text)
    hits: dict[int, str] = {}
    for m in _FORGERIES.finditer(form):
        for pos in range(m.start(), m.end()):
            if form[pos] in "<>":
                hits[origin[pos]] = _LEFT if form[pos] == "<" else _RIGHT
    if not hits:
        return text
    return "".join(hits.get(i, ch) for i, ch in enumerate(text))


def delimit(text: str, open_: str, close: str) -> str:
    """``open_``, the neutralised ``text``, ``close``, one per line."""
    return f"{open_}\n{neutralise(text)}\n{close}"
