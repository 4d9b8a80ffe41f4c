"""Offline language identification tells eu/ca/gl/es/en apart on the shipped prompts' reference answers."""

from __future__ import annotations

import pytest

from evomerge.evalsets import load_evalset
from evomerge.language_id import identify, is_language, known_languages

from conftest import REPO

LANGS = ("eu", "ca", "gl", "es", "en")


def test_the_identifier_knows_the_five_languages_offline():
    assert set(LANGS) <= known_languages()


@pytest.mark.parametrize("lang", LANGS)
def test_reference_answers_are_identified_as_their_language(lang):
    es = load_evalset(REPO / "eval_sets" / f"instructions_{lang}")
    wrong = [(it.id, identify(it.reference)) for it in es.items if identify(it.reference)[0] != lang]
    assert not wrong
    # and never as any of the other four (the check a fidelity objective relies on)
    for other in set(LANGS) - {lang}:
        assert not any(is_language(it.reference, other) for it in es.items)


def test_empty_text_is_no_language():
    assert not is_language("   ", "en")


def test_unknown_candidate_is_an_error():
    with pytest.raises(ValueError, match="xb"):
        identify("hola", ["es", "xb"])
