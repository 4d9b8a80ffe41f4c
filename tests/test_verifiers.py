"""Every constraint type accepts a hand-made response that keeps it and rejects one that breaks it."""

from __future__ import annotations

import pytest

from evomerge.errors import UserError
from evomerge.verifiers import RULES, check, check_loose, loose_variants, parse_constraint

# type -> (constraint, a response that keeps it, a response that breaks it); several cases per type where the
# rule has an edge worth pinning down
CASES = [
    ({"type": "vocabulary_share", "words": ["hiribu", "da"], "min": 0.5}, "hiribu Tamsk da .", "the capital is Tamsk ."),
    ({"type": "words", "max": 5}, "one two three four five", "one two three four five six"),
    ({"type": "words", "min": 3}, "l'home i la dona", "hola bon dia"[:8]),
    ({"type": "words", "min": 2, "max": 3}, "Kaixo, zer moduz?", "Kaixo"),
    ({"type": "sentences", "min": 2, "max": 2}, "It costs 3.5 euros. That is cheap!", "It costs 3.5 euros."),
    ({"type": "sentences", "max": 1}, "¿Vienes mañana?", "¿Vienes? Sí."),
    ({"type": "paragraphs", "count": 2}, "First part.\n\nSecond part.", "First part.\nStill first."),
    ({"type": "paragraphs", "count": 2, "separator": "***"}, "One.\n***\nTwo.", "One.\n\nTwo."),
    ({"type": "paragraph_first_word", "count": 2, "nth": 2, "word": "Mentrestant"},
     "La tardor.\n\nMentrestant, plou.", "La tardor.\n\nDesprés, plou."),
    ({"type": "paragraph_first_word", "count": 2, "nth": 2, "word": "mientras tanto", "words": "all"},
     "Llueve.\n\n(Mientras) tanto, nada.", "Llueve.\n\nMientras, nada."),
    ({"type": "include_keywords", "words": ["caldera", "técnico"]}, "La caldera no va; llamé al técnico.",
     "La caldera no va."),
    ({"type": "include_keywords", "words": ["pan"]}, "Pan recién hecho.", "Panadería abierta."),
    ({"type": "include_keywords", "words": ["galdara"], "match": "prefix"}, "Galdarak ez du funtzionatzen.",
     "Berogailuak ez du funtzionatzen."),
    ({"type": "include_keywords", "words": ["ana"], "match": "substring"}, "banana", "bnn"),
    ({"type": "exclude_keywords", "words": ["sun", "light"]}, "Sunny days and daylight savings.",
     "The sun is bright."),
    ({"type": "keyword_count", "word": "fresh", "min": 2}, "Fresh bread, fresh milk.", "Fresh bread, freshly milk."),
    ({"type": "keyword_count", "word": "ogia", "max": 1, "match": "prefix"}, "Ogia erosi dut.", "Ogia eta ogiak."),
    ({"type": "letter_count", "letter": "z", "min": 2}, "Zazpi", "Bost"),
    ({"type": "bullets", "count": 2}, "* one\n- two", "* one\n* two\n* three"),
    ({"type": "bullets", "count": 1}, "Intro:\n* only one", "*not a bullet*\n* one\n*  two"),
    ({"type": "bullets", "count": 2, "markers": "*"}, "* one\n- dash\n* two", "- one\n- two"),
    ({"type": "bullets", "count": 2}, "*Emphasis* opens a line.\n---", "**Bold** line\n* one"),  # lm-eval's rule
    ({"type": "numbered_items", "count": 3}, "1. a\n2. b\n3) c", "1. a\n2. b"),
    ({"type": "highlights", "min": 2}, "Some *key idea* and **another**.", "Only *one* here."),
    ({"type": "sections", "count": 2, "marker": "SECCIÓ"}, "SECCIÓ 1\nA\nSECCIÓ 2\nB", "SECCIÓ 1\nA and B"),
    ({"type": "sections", "min": 2, "marker": "SECCIÓN"}, "SECCIÓN 1\nA\nSECCIÓN 2\nB\nSECCIÓN 3\nC",
     "SECCIÓN 1\nA y B"),
    ({"type": "placeholders", "min": 2}, "Dear [name], thanks for the [gift].", "Dear [name], thanks."),
    ({"type": "json"}, '{"a": 1}', "a: 1"),
    ({"type": "json"}, '```json\n{"city": "York"}\n```', '{"city": York}'),
    ({"type": "title"}, "<<Itsaso zaharra>>\nOlatuak...", "Itsaso zaharra\nOlatuak..."),
    ({"type": "title"}, "<<T>> body", "<<>> body"),
    ({"type": "lowercase"}, "todo en minúsculas, ñandú", "Todo en minúsculas"),
    ({"type": "uppercase"}, "ATENCIÓN, PELIGRO", "ATENCIÓN, peligro"),
    ({"type": "lowercase", "language": "es"}, "escribo una carta a mi amigo para pedirle que vaya a votar mañana.",
     "escric una carta al meu amic per demanar-li que vagi a votar demà."),
    ({"type": "lowercase", "language": "es"}, "escribo una carta a mi amigo para pedirle que vaya a votar mañana.",
     "Escribo una carta a mi amigo para pedirle que vaya a votar mañana."),
    ({"type": "uppercase", "language": "ca"}, "AQUESTA ÉS UNA CANÇÓ SOBRE LA PLUJA QUE CAU SOBRE LA CIUTAT.",
     "ESTA ES UNA CANCIÓN SOBRE LA LLUVIA QUE CAE SOBRE LA CIUDAD."),
    ({"type": "uppercase", "language": "eu"}, "EURIA ARI DU ETA KALEAK BUSTITA DAUDE GAUR GOIZEAN.",
     "Euria ari du eta kaleak bustita daude gaur goizean."),
    ({"type": "words_containing", "chars": "ñ", "min": 2, "max": 2}, "El niño sueña.", "El niño sueña cada año."),
    ({"type": "words_containing", "chars": "ñ", "min": 2, "max": 2}, "EL NIÑO SUEÑA.", "El niño duerme."),
    ({"type": "words_containing", "chars": "áéíóú", "min": 3}, "Él está aquí y allá también.",
     "Ella está aquí."),
    ({"type": "words_containing", "chars": "ü", "max": 0}, "La lengua es rica.", "La lingüística es rica."),
    ({"type": "enclosed", "open": "¿", "close": "?"}, "Hola. ¿Vienes mañana? Sí.", "Hola. Vienes mañana? Sí."),
    ({"type": "enclosed", "open": "¿", "close": "?"}, "¿Qué tal?", "¿ ? Nada."),
    ({"type": "enclosed", "open": "¡", "close": "!"}, "¡Qué bonito es!", "Qué bonito es!"),
    ({"type": "contains_any", "options": ["Sí.", "No.", "Quizás."]}, "Creo que no. Mi respuesta: No.",
     "Creo que no, la respuesta es no"),
    ({"type": "contains_any", "options": ["My answer is yes.", "My answer is no."]}, "Hmm. My answer is yes.",
     "my answer is yes."),
    ({"type": "capital_words", "min": 2}, "DANGER: NO diving", "Danger: no diving"),
    ({"type": "capital_words", "max": 0}, "Calm words only", "CALM words"),
    ({"type": "no_commas"}, "No commas here.", "One, two."),
    ({"type": "quoted"}, '"Every mile together."', 'Every mile "together".'),
    ({"type": "quoted"}, '"Cada cim plegats."', "«Cada cim plegats.»"),  # lm-eval: straight quotes only
    ({"type": "starts_with", "text": "Honestly,"}, "  honestly, yes.", "Yes, honestly."),
    ({"type": "ends_with", "text": "Zorte on!"}, "Prestatu ondo. Zorte on!\n", "Zorte on! Prestatu ondo."),
    ({"type": "ends_with", "text": "Eso es todo"}, '"Bien. Eso es todo"', "Bien. Eso es todo."),
    ({"type": "ends_with", "text": "Eso es todo", "strip_period": True}, "Bien. Eso es todo.", "Bien. Eso es todo.."),
    ({"type": "postscript", "marker": "P.D."}, "Hola.\n\nP.D. Trae la guitarra.", "Hola. Trae la guitarra."),
    ({"type": "postscript", "marker": "P.P.S"}, "Hola. p. p. s. trae la guitarra.", "Hola.\nP.S. Trae la guitarra."),
    ({"type": "two_responses"}, "Pepper.\n******\nBiscuit.", "Pepper.\n******\nPepper."),
    ({"type": "two_responses", "separator": "---"}, "A\n---\nB", "A\n******\nB"),
    ({"type": "response_language", "language": "eu"},
     "Gaur goizean galdarak ez du funtzionatzen eta horregatik ez dago ur berorik etxean.",
     "Esta mañana la caldera no funciona y por eso no hay agua caliente en casa."),
    ({"type": "response_language", "language": "gl"},
     "Esta mañá a caldeira deixou de funcionar e por iso non hai auga quente na casa.",
     "Aquest matí la caldera ha deixat de funcionar i per això no hi ha aigua calenta a casa."),
]


@pytest.mark.parametrize("constraint,good,bad", CASES, ids=[f"{c['type']}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_rule_accepts_and_rejects(constraint, good, bad):
    c = parse_constraint(constraint, "test")
    assert check(c, good), good
    assert not check(c, bad), bad


def test_every_constraint_type_has_cases():
    assert {c["type"] for c, _, _ in CASES} == set(RULES)


def test_loose_forgives_a_preamble_and_markdown():
    c = parse_constraint({"type": "starts_with", "text": "Honestly"}, "t")
    response = "Sure! Here is my answer:\nHonestly, yes."
    assert not check(c, response) and check_loose(c, response)
    lc = parse_constraint({"type": "lowercase"}, "t")
    assert check_loose(lc, "Here you go:\nall lowercase here")
    assert "**bold**".replace("*", "") in loose_variants("**bold**")


@pytest.mark.parametrize("bad,where", [
    ({"type": "wordz", "max": 3}, "type"),
    ({"type": "words"}, "needs min or max"),
    ({"type": "words", "max": "3"}, "max"),
    ({"type": "words", "max": True}, "max"),
    ({"type": "bullets"}, "count"),
    ({"type": "bullets", "count": 2, "extra": 1}, "extra"),
    ({"type": "include_keywords", "words": []}, "words"),
    ({"type": "include_keywords", "words": ["a"], "match": "fuzzy"}, "match"),
    ({"type": "sections", "marker": "SECTION"}, "needs count or min"),
    ({"type": "sections", "count": 2}, "marker"),
    ({"type": "uppercase", "language": "xx"}, "unknown language 'xx'"),
    ({"type": "response_language", "language": "klingon"}, "unknown language"),
    ({"type": "words_containing", "chars": "ñ"}, "needs min or max"),
    ({"type": "enclosed", "open": "¿"}, "close"),
    ({"type": "contains_any", "options": []}, "options"),
    ({"type": "bullets", "count": 2, "markers": "+"}, "markers"),
    ({"type": "paragraph_first_word", "count": 2, "nth": 1, "word": "a", "words": "some"}, "words"),
    ({"type": "ends_with", "text": "x", "strip_period": "yes"}, "strip_period"),
    (["words"], "mapping"),
])
def test_malformed_constraints_are_refused(bad, where):
    with pytest.raises(UserError, match=where):
        parse_constraint(bad, "items.jsonl:1")
