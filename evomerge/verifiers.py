"""Verifiable instruction constraints: one rule function per constraint type, in a plain dict. Pure (the
`response_language` rule, and `uppercase`/`lowercase` given a `language`, ask the offline language identifier).

A constraint is written in an item as `{"type": "words", "min": 40, "max": 80}`. Where IFEval has a rule, the check
is lm-evaluation-harness 0.4's IFEval check, quirks included (words are runs of `\\w`, so "l'home" is two words; a
bullet is any line starting with `*` not followed by `*`, or with `-`; a **bold** span is one highlight and its inner
*...* another; a postscript marker may appear anywhere), so eval sets pulled from IFEval score as lm-eval scores
them: tests/test_ifeval_oracle.py runs lm-eval's own checks on a fixed set of responses, and the README lists the
differences that remain (sentences are counted by a rule, not by NLTK's Punkt model; languages are identified by
py3langid, not langdetect). Arguments such as `markers` or `strip_period` carry the es/ca registry's variants.
Keyword rules take `match`: `word` (default), `prefix` (a word starting with it: Basque inflects by suffixes, so
"galdara" is in "galdarak") or `substring` (IFEval's rule for keyword existence and frequency).
Every rule is language-neutral: markers that differ by language (a section word, a postscript marker) are
arguments, not constants.

`check(constraint, response)` is the strict verdict; `check_loose` also accepts the response with its first and/or
last line removed and with markdown asterisks dropped (IFEval's loose variants), which forgives "Sure, here it is:"
preambles.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from evomerge.errors import UserError


@dataclass(frozen=True)
class Constraint:
    """One verifiable constraint: its type and its (validated) arguments."""

    type: str
    args: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.args}

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **self.kwargs}


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


# titles NLTK's English Punkt model (which lm-eval's sentence count uses) reads as abbreviations before a name
_TITLES = frozenset("mr mrs ms dr prof st jr sr messrs gen sen rep lt maj col adm".split())
_BOUNDARY = re.compile(r"(\S*?)([.!?…]+)[\"'”’»)\]]*\s+(?=(\S))")


def _sentences(text: str) -> list[str]:
    # lm-eval counts sentences with NLTK's English Punkt model, which evomerge does not ship; this rule follows its
    # common verdicts: a sentence ends at . ! ? or an ellipsis (and any closing quotes or brackets) followed by
    # whitespace; a line break alone does not end one ("Title\nText." is one sentence), nor does a number like 3.5,
    # a title (Mr.) or a single letter (J., c.); a dotted abbreviation (p.m., U.S.) or an ellipsis ends one only
    # before a capitalized word
    text, parts, start = text.strip(), [], 0
    for m in _BOUNDARY.finditer(text):
        word, stop, following = m.group(1).lower(), m.group(2), m.group(3)
        if stop == ".":
            bare = word.lstrip("\"'“‘«([")
            if bare in _TITLES or (len(bare) == 1 and bare.isalpha()):
                continue
            if "." in bare and not following[0].isupper():
                continue
        elif stop in ("...", "…") and not following[0].isupper():
            continue
        parts.append(text[start:m.end()])
        start = m.end()
    parts.append(text[start:])
    return [p for p in parts if re.search(r"\w", p)]


def _within(count: int, lo: int | None, hi: int | None) -> bool:
    return (lo is None or count >= lo) and (hi is None or count <= hi)


def _strip_fence(text: str) -> str:
    # lm-eval's JsonFormat: an opening ``` (or ```json) and a closing ``` are each dropped when present
    t = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        t = t.removeprefix(prefix)
    return t.removesuffix("```").strip()


def _words_rule(r: str, min: int | None = None, max: int | None = None) -> bool:
    return _within(len(_words(r)), min, max)


def _sentences_rule(r: str, min: int | None = None, max: int | None = None) -> bool:
    return _within(len(_sentences(r)), min, max)


def _paragraphs_rule(r: str, count: int, separator: str = "blank") -> bool:
    # "blank": paragraphs are separated by empty lines; "***": by markdown dividers (IFEval's number_paragraphs)
    if separator == "***":
        parts = re.split(r"\s?\*\*\*\s?", r)
        if any(not p.strip() for i, p in enumerate(parts) if 0 < i < len(parts) - 1):
            return False  # an empty paragraph between two dividers
        parts = [p for p in parts if p.strip()]
    else:
        parts = [p for p in re.split(r"\n\s*\n", r) if p.strip()]
    return len(parts) == count


def _paragraph_first_word_rule(r: str, count: int, nth: int, word: str, words: str = "first") -> bool:
    # lm-eval's ParagraphFirstWordCheck: paragraphs are split at "\n\n" and empty ones are not counted, but `nth`
    # indexes the split as it is (an empty paragraph there fails). words="first" (google): the first
    # whitespace-separated word, its leading quotes dropped, up to the first . , ? ! ' or "; words="all" (the es/ca
    # registry): as many words as `word` has, each with every punctuation character removed.
    parts = r.split("\n\n")
    found = sum(1 for p in parts if p.strip())
    if nth > found or nth < 1 or not parts[nth - 1].strip():
        return False
    paragraph = parts[nth - 1].strip()
    if words == "all":
        expected = word.lower().split()
        got = ["".join(ch for ch in w if ch not in string.punctuation).lower() for w in paragraph.split()]
        return found == count and got[:len(expected)] == expected
    first = re.split(r"[.,?!'\"]", paragraph.split()[0].lstrip("'").lstrip('"'))[0].lower()
    return found == count and first == word.lower()


MATCHES = ("word", "prefix", "substring")


def _occurrences(r: str, word: str, match: str) -> int:
    # "word": the whole word; "prefix": a word starting with it (Basque inflects by suffixes: "galdara" is in
    # "galdarak"); "substring": anywhere (IFEval's rule for keyword existence and frequency)
    pattern = re.escape(word)
    if match in ("word", "prefix"):
        pattern = rf"(?<!\w){pattern}"
    if match == "word":
        pattern += r"(?!\w)"
    return len(re.findall(pattern, r, flags=re.IGNORECASE))


def _include_rule(r: str, words: list[str], match: str = "word") -> bool:
    return all(_occurrences(r, w, match) for w in words)


def _exclude_rule(r: str, words: list[str], match: str = "word") -> bool:
    return not any(_occurrences(r, w, match) for w in words)


def _keyword_count_rule(r: str, word: str, min: int | None = None, max: int | None = None,
                        match: str = "word") -> bool:
    return _within(_occurrences(r, word, match), min, max)


def _letter_count_rule(r: str, letter: str, min: int | None = None, max: int | None = None) -> bool:
    return _within(r.lower().count(letter.lower()), min, max)


def _bullets_rule(r: str, count: int, markers: str = "*-") -> bool:
    # lm-eval's BulletListChecker: a line starting with `*` not followed by `*` (so "*emphasis* ..." counts), or
    # with `-` (so does "---"); the es/ca registry counts `*` lines only (markers="*")
    n = len(re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)) if "*" in markers else 0
    n += len(re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)) if "-" in markers else 0
    return n == count


def _numbered_rule(r: str, count: int) -> bool:
    return len(re.findall(r"^\s*\d+[.)][ \t]+\S", r, flags=re.MULTILINE)) == count


def _highlights_rule(r: str, min: int) -> bool:
    # lm-eval's HighlightSectionChecker: non-empty *spans* plus non-empty **spans** (so "*a* **b**" counts 2)
    single = [s for s in re.findall(r"\*[^\n\*]*\*", r) if s.strip("*").strip()]
    double = [s for s in re.findall(r"\*\*[^\n\*]*\*\*", r) if s.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double) >= min


def _sections_rule(r: str, marker: str, count: int | None = None, min: int | None = None) -> bool:
    # `count`: exactly that many sections; `min`: at least (IFEval's multiple_sections checks "at least")
    n = len(re.split(rf"\s?{re.escape(marker)}\s?\d+\s?", r)) - 1
    return (count is None or n == count) and (min is None or n >= min)


def _placeholders_rule(r: str, min: int) -> bool:
    # lm-eval's PlaceholderChecker: the shortest [...] on a line, empty "[]" included
    return len(re.findall(r"\[.*?\]", r)) >= min


def _json_rule(r: str) -> bool:
    try:
        json.loads(_strip_fence(r))
    except ValueError:
        return False
    return True


def _title_rule(r: str) -> bool:
    # lm-eval's TitleChecker: the longest <<...>> on a line, with text once its own < and > are trimmed
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def _in_language(r: str, language: str | None) -> bool:
    from evomerge.language_id import is_language

    return language is None or is_language(r.lower(), language)


def _lowercase_rule(r: str, language: str | None = None) -> bool:
    # `language`: also written in that language (the IFEval translations' "all lowercase, in Spanish")
    return r.islower() and _in_language(r, language)


def _uppercase_rule(r: str, language: str | None = None) -> bool:
    # the language is identified on the lowercased text: identifiers are trained on ordinary casing
    return r.isupper() and _in_language(r, language)


def _words_containing_rule(r: str, chars: str, min: int | None = None, max: int | None = None) -> bool:
    # words (runs of \w) holding any of `chars`, case-insensitive: ñ, ü, accented vowels (IFEval_es/ca's
    # special_character instructions)
    wanted = set(chars.lower())
    return _within(sum(1 for w in _words(r) if wanted & set(w.lower())), min, max)


def _enclosed_rule(r: str, open: str, close: str) -> bool:
    # a span opened by `open` and closed by the next `close`, with text between: ¿...? and ¡...! (IFEval_es/ca's
    # question_marks and exclamation_marks)
    spans = re.findall(rf"{re.escape(open)}(.*?){re.escape(close)}", r, flags=re.DOTALL)
    return any(s.lstrip(open).strip() for s in spans)  # lm-eval's es/ca checks: "¿¿?" is empty too


def _contains_any_rule(r: str, options: list[str]) -> bool:
    # IFEval's constrained_response: one of the given answers appears, as written
    return any(o in r for o in options)


def _capital_words_rule(r: str, min: int | None = None, max: int | None = None) -> bool:
    # lm-eval splits words with NLTK's word_tokenize, which keeps hyphenated words and dotted abbreviations whole
    # ("WELL-KNOWN", "U.S." are one word each): the same here, with runs of \w joined by - or .
    return _within(sum(1 for w in re.findall(r"\w+(?:[-.]\w+)*", r) if w.isupper()), min, max)


def _no_commas_rule(r: str) -> bool:
    return "," not in r


def _quoted_rule(r: str) -> bool:
    # lm-eval's QuotationChecker: straight double quotes only
    t = r.strip()
    return len(t) > 1 and t[0] == '"' and t[-1] == '"'


def _starts_with_rule(r: str, text: str) -> bool:
    return r.strip().lower().startswith(text.strip().lower())


def _ends_with_rule(r: str, text: str, strip_period: bool = False) -> bool:
    # lm-eval's EndChecker: a closing double quote is ignored; the es/ca registry also drops one final period
    end = r.strip().strip('"').lower()
    if strip_period:
        end = end.removesuffix(".")
    return end.endswith(text.strip().lower())


def _postscript_rule(r: str, marker: str) -> bool:
    # lm-eval's PostscriptChecker: the marker anywhere (not only at a line start), case-insensitive, a space allowed
    # after each of its inner periods ("P. S." for "P.S.", as lm-eval's patterns for P.S., P.P.S and P.D. allow)
    pattern = r"\.\s?".join(re.escape(p) for p in marker.strip().lower().split("."))
    return re.search(pattern, r.lower()) is not None


def _two_responses_rule(r: str, separator: str = "******") -> bool:
    # lm-eval's TwoResponsesChecker: empty text is allowed before the first separator and after the last one
    parts = r.split(separator)
    if any(not p.strip() for p in parts[1:-1]):
        return False
    kept = [p.strip() for p in parts if p.strip()]
    return len(kept) == 2 and kept[0] != kept[1]


def vocabulary_share(r: str, words: list[str] | tuple[str, ...]) -> float:
    """The share of the response's words (runs of `\\w`) found in `words` (case-insensitive); capitalized words
    count for neither side (names are written the same in both languages of the miniature, and proper nouns
    would bias the share in real languages). 0.0 when no word is left."""
    vocab = {w.lower() for w in words}
    counted = [w for w in _words(r) if not w[0].isupper()]
    return sum(w.lower() in vocab for w in counted) / len(counted) if counted else 0.0


def _vocabulary_share_rule(r: str, words: list[str], min: float) -> bool:
    # a language no identifier knows (the miniature's synthetic B) is recognized by its word list instead
    return vocabulary_share(r, words) >= min


def _response_language_rule(r: str, language: str) -> bool:
    from evomerge.language_id import is_language

    # lm-eval counts a response whose language cannot be detected (no letters) as following the instruction
    return not any(c.isalpha() for c in r) or is_language(r, language)


@dataclass(frozen=True)
class Rule:
    """A constraint type: its check, its required and optional arguments (name -> type), and what it asks."""

    check: Callable[..., bool]
    required: Mapping[str, type]
    optional: Mapping[str, type]
    doc: str
    needs_one_of: tuple[str, ...] = ()  # at least one of these optional arguments


_RANGE = {"min": int, "max": int}
RULES: dict[str, Rule] = {
    "words": Rule(_words_rule, {}, _RANGE, "number of words within [min, max]", ("min", "max")),
    "sentences": Rule(_sentences_rule, {}, _RANGE, "number of sentences within [min, max]", ("min", "max")),
    "paragraphs": Rule(_paragraphs_rule, {"count": int}, {"separator": str},
                       "exactly `count` paragraphs (separated by blank lines, or by *** lines)"),
    "paragraph_first_word": Rule(_paragraph_first_word_rule, {"count": int, "nth": int, "word": str}, {"words": str},
                                 "exactly `count` paragraphs (split at blank lines) and paragraph `nth` starts with "
                                 "`word` (words: first, or all: every word of `word`)"),
    "include_keywords": Rule(_include_rule, {"words": list}, {"match": str},
                             "every word or phrase appears (match: word, prefix or substring)"),
    "exclude_keywords": Rule(_exclude_rule, {"words": list}, {"match": str},
                             "none of the words or phrases appears (match: word, prefix or substring)"),
    "keyword_count": Rule(_keyword_count_rule, {"word": str}, {**_RANGE, "match": str},
                          "`word` appears [min, max] times (match: word, prefix or substring)", ("min", "max")),
    "letter_count": Rule(_letter_count_rule, {"letter": str}, _RANGE, "`letter` appears [min, max] times",
                         ("min", "max")),
    "bullets": Rule(_bullets_rule, {"count": int}, {"markers": str},
                    "exactly `count` lines starting with a bullet marker (markers: * and -, or one of them)"),
    "numbered_items": Rule(_numbered_rule, {"count": int}, {}, "exactly `count` numbered lines (1. or 1))"),
    "highlights": Rule(_highlights_rule, {"min": int}, {}, "at least `min` *highlighted* spans"),
    "sections": Rule(_sections_rule, {"marker": str}, {"count": int, "min": int},
                     "exactly `count` (or at least `min`) sections, each opened by `marker` and a number",
                     ("count", "min")),
    "placeholders": Rule(_placeholders_rule, {"min": int}, {}, "at least `min` [placeholders]"),
    "json": Rule(_json_rule, {}, {}, "the whole response is JSON (a ```json fence is allowed)"),
    "title": Rule(_title_rule, {}, {}, "a title in double angular brackets, <<like this>>"),
    "lowercase": Rule(_lowercase_rule, {}, {"language": str},
                      "no capital letters (and, with `language`, written in that language)"),
    "uppercase": Rule(_uppercase_rule, {}, {"language": str},
                      "only capital letters (and, with `language`, written in that language)"),
    "words_containing": Rule(_words_containing_rule, {"chars": str}, _RANGE,
                             "number of words holding any of `chars` (e.g. ñ) within [min, max]", ("min", "max")),
    "enclosed": Rule(_enclosed_rule, {"open": str, "close": str}, {},
                     "a span of text opened by `open` and closed by `close` (¿...?, ¡...!)"),
    "contains_any": Rule(_contains_any_rule, {"options": list}, {},
                         "one of `options` appears in the response, as written"),
    "capital_words": Rule(_capital_words_rule, {}, _RANGE, "number of all-capital words within [min, max]",
                          ("min", "max")),
    "no_commas": Rule(_no_commas_rule, {}, {}, "no commas"),
    "quoted": Rule(_quoted_rule, {}, {}, 'the whole response is wrapped in straight double quotes (")'),
    "starts_with": Rule(_starts_with_rule, {"text": str}, {}, "starts with `text` (case-insensitive)"),
    "ends_with": Rule(_ends_with_rule, {"text": str}, {"strip_period": bool},
                      "ends with `text` (case-insensitive; a closing \" and, with strip_period, a final . ignored)"),
    "postscript": Rule(_postscript_rule, {"marker": str}, {}, "`marker` (P.S., P.D., ...) appears in the response"),
    "two_responses": Rule(_two_responses_rule, {}, {"separator": str},
                          "two different responses separated by `separator` (******)"),
    "response_language": Rule(_response_language_rule, {"language": str}, {},
                              "written in `language` (offline language identification)"),
    "vocabulary_share": Rule(_vocabulary_share_rule, {"words": list, "min": float}, {},
                             "at least a `min` share (0..1) of the words are in `words` (capitalized words "
                             "count for neither side): fidelity to a language given by its word list"),
}


def parse_constraint(obj: Any, where: str) -> Constraint:
    """Validate one constraint object from an item; unknown types and arguments are refused."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise UserError(where, "a constraint must be a mapping with a string `type`", 'e.g. {"type": "words", "max": 50}')
    rule = RULES.get(obj["type"])
    if rule is None:
        raise UserError(f"{where}: type", f"unknown constraint type {obj['type']!r}",
                        f"known: {', '.join(sorted(RULES))}")
    args = {k: v for k, v in obj.items() if k != "type"}
    allowed = {**rule.required, **rule.optional}
    for key, value in args.items():
        if key not in allowed:
            raise UserError(f"{where}: {key}", f"unknown argument of {obj['type']}",
                            f"arguments: {', '.join(allowed) or 'none'}")
        want = allowed[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is list:
            ok = ok and bool(value) and all(isinstance(w, str) and w for w in value)
        if not ok:
            raise UserError(f"{where}: {key}", f"must be {'a non-empty list of strings' if want is list else want.__name__}",
                            f"see {obj['type']}: {rule.doc}")
    if isinstance(args.get("language"), str):
        from evomerge.language_id import known_languages

        if args["language"] not in known_languages():
            raise UserError(f"{where}: language", f"unknown language {args['language']!r}",
                            "use an ISO 639-1 code the offline identifier knows, e.g. eu, ca, gl, es, en")
    if "match" in args and args["match"] not in MATCHES:
        raise UserError(f"{where}: match", f"unknown match {args['match']!r}", f"use one of {', '.join(MATCHES)}")
    if "words" in args and obj["type"] == "paragraph_first_word" and args["words"] not in ("first", "all"):
        raise UserError(f"{where}: words", f"unknown words {args['words']!r}", "use first or all")
    if "markers" in args and not (args["markers"] and set(args["markers"]) <= set("*-")):
        raise UserError(f"{where}: markers", f"unknown markers {args['markers']!r}", 'use "*-", "*" or "-"')
    missing = [k for k in rule.required if k not in args]
    if missing:
        raise UserError(f"{where}: {missing[0]}", f"{obj['type']} needs {missing[0]}", rule.doc)
    if rule.needs_one_of and not any(k in args for k in rule.needs_one_of):
        raise UserError(where, f"{obj['type']} needs {' or '.join(rule.needs_one_of)}", rule.doc)
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in args.items()))
    return Constraint(obj["type"], frozen)


def check(constraint: Constraint, response: str) -> bool:
    """The strict verdict: does the response keep the constraint? An empty response keeps none (as in lm-eval)."""
    return bool(response.strip()) and bool(RULES[constraint.type].check(response, **constraint.kwargs))


def loose_variants(response: str) -> list[str]:
    """IFEval's loose variants: the response, without its first line, without its last line, without both; each
    also with every asterisk removed."""
    lines = response.split("\n")
    base = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    out = base + [v.replace("*", "") for v in base]
    return [v for v in out if v]


def check_loose(constraint: Constraint, response: str) -> bool:
    """The loose verdict: some loose variant keeps the constraint."""
    return any(check(constraint, v) for v in loose_variants(response))
