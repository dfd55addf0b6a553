"""Search text normalisation (issue 26, part 3): one function for the terms the worker writes and the
queries and titles the API reads. Properties over any text, and the inputs of the issue."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from streamrec.scoring import search_terms
from streamrec.search_text import fold, tokens

ACCENTED = "àáâãäåçèéêëìíîïñòóôõöùúûüýÿāăąćčďēėęěğīįķĺľńňōőŕřśşšţťūůűųźżžșț"
letters = st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz +#-" + ACCENTED), max_size=30)


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


def test_the_issue_inputs() -> None:
    assert search_terms("creme brulee") == search_terms("Crème Brûlée") == ["creme brulee", "creme", "brulee"]
    assert search_terms("musli") == search_terms("Müsli") == ["musli"]
    assert search_terms("c++ primer") == ["c++ primer", "c++", "primer"]
    assert search_terms("c# primer") == ["c# primer", "c#", "primer"]
    assert len({tuple(search_terms(q)) for q in ("c++ primer", "c# primer", "f# primer", "c primer")}) == 4


def test_letters_that_nfkd_keeps_whole_are_folded_as_search_engines_do() -> None:
    assert tokens("Straße Øl Æble Œuvre Łódź Đakovo Þing ıi") == [
        "strasse",
        "ol",
        "aeble",
        "oeuvre",
        "lodz",
        "dakovo",
        "thing",
        "ii",
    ]
    assert tokens("ＲＥＤ　Ｓｈｏｅｓ Ｃ＃") == ["red", "shoes", "c#"]  # full width, as NFKC reads it


def test_marks_that_tell_letters_apart_in_other_scripts_stay() -> None:
    assert tokens("がか") == ["がか"] and fold("が") != fold("か")
    assert tokens("हिन्दी पुस्तक") == ["हिन्दी", "पुस्तक"]  # vowel signs belong to the word
    assert tokens("한국어") == ["한국어"]


def test_tokens_keep_plus_and_hash_only_after_a_word_character() -> None:
    assert tokens("C++/C# & F#, #1 +x a+b") == ["c++", "c#", "f#", "1", "x", "a+b"]


@given(st.text(max_size=40))
def test_fold_is_idempotent(text: str) -> None:
    once = fold(text)
    assert fold(once) == once
    assert tokens(" ".join(tokens(text))) == tokens(text)


@given(st.text(max_size=40))
def test_nfc_and_nfd_spellings_read_the_same(text: str) -> None:
    forms = {unicodedata.normalize(f, text) for f in ("NFC", "NFD", "NFKC", "NFKD")}
    assert len({tuple(tokens(f)) for f in forms}) == 1
    assert len({tuple(search_terms(f)) for f in forms}) == 1


@given(letters)
def test_accents_and_case_do_not_matter(text: str) -> None:
    plain = strip_accents(text)
    assert tokens(text) == tokens(plain) == tokens(plain.upper()) == tokens(text.upper())
    assert search_terms(text) == search_terms(plain.upper())
