"""How search text is normalised, the one place both sides share: the worker folds search queries into
terms with it (``scoring.search_terms``), and the API reads queries and catalog titles with it
(``api/catalog_search.py``), so a term written is the term read.

The rules are those of search engines' analysers (Elasticsearch's ``asciifolding`` and ICU folding,
with a word-delimiter table that keeps ``+`` and ``#``):

- **Accent folding.** Compatibility decomposition (NFKD), then the combining diacritical marks are
  dropped: ``Crème Brûlée`` reads ``creme brulee``, ``Müsli`` reads ``musli``, full-width ``ＲＥＤ`` reads
  ``red``. Only the diacritical-mark blocks are dropped, so the marks that tell letters apart in other
  scripts stay (Japanese が is not か, Devanagari vowel signs stay), and what NFKD split apart there is
  composed again (NFC).
- **Letters NFKD does not decompose** are folded as ``asciifolding`` does: ``ø`` ``o``, ``æ`` ``ae``,
  ``œ`` ``oe``, ``ł`` ``l``, ``đ``/``ð`` ``d``, ``þ`` ``th``, ``ħ`` ``h``, ``ı`` ``i``; ``ß`` becomes ``ss``
  by case folding.
- **Case folding** (``str.casefold``), so ``STRASSE`` equals ``Straße``.
- **Tokens** are runs of word characters that may go on with ``+`` and ``#``: ``c++``, ``c#`` and ``f#``
  stay three different tokens; other punctuation and spaces separate tokens.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import cache

# Combining marks that are accents on Latin, Greek and Cyrillic letters (and on symbols): the blocks
# Combining Diacritical Marks, their Extended and Supplement blocks, for Symbols, and Half Marks.
_ACCENTS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")

# Lower-case letters that are no base letter plus a mark (NFKD leaves them whole), as asciifolding
# folds them; upper-case forms reach this table already case-folded.
_LETTERS = str.maketrans(
    {
        "ø": "o",
        "æ": "ae",
        "œ": "oe",
        "ł": "l",
        "đ": "d",
        "ð": "d",
        "þ": "th",
        "ħ": "h",
        "ı": "i",
        "ŧ": "t",
        "ŀ": "l",
        "ĸ": "k",
        "ŋ": "n",
        "ƒ": "f",
    }
)


@cache
def _token() -> re.Pattern[str]:
    r"""A token: a word character, then word characters, combining marks (Devanagari's vowel signs are
    part of a word; ``\w`` alone would split it there), ``+`` or ``#`` (``c++``, ``c#``, ``4k``).

    Built on first use (a pass over the code points, about 0.1 s), not at import."""
    ranges: list[str] = []
    start = None
    for cp in range(sys.maxunicode + 2):
        mark = cp <= sys.maxunicode and unicodedata.category(chr(cp)).startswith("M")
        if mark and start is None:
            start = cp
        elif not mark and start is not None:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(cp - 1))}")
            start = None
    return re.compile(rf"\w[\w{''.join(ranges)}+#]*")


def fold(text: str) -> str:
    """``text`` accent-folded and case-folded, as every search comparison reads it (module docstring).

    Returns a string of the same words (spaces and punctuation kept), idempotent: ``fold(fold(t)) ==
    fold(t)``; NFC and NFD spellings of one text fold to the same string.
    """
    out = unicodedata.normalize("NFKD", text).casefold()
    # casefold may produce new decomposable characters (e.g. "ǰ" stays whole in NFKD's input): once more
    out = unicodedata.normalize("NFKD", out)
    out = _ACCENTS.sub("", out).translate(_LETTERS)
    return unicodedata.normalize("NFC", out)


def tokens(text: str) -> list[str]:
    """The tokens of ``text`` after ``fold``, in order, repeats kept (``"C++ Primer"`` -> ``["c++", "primer"]``)."""
    return _token().findall(fold(text))
