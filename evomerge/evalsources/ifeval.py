"""IFEval (en) and its translations (es, ca, eu, gl): prompts with verifiable instructions, mapped onto evomerge's
constraint types (verifiers.py).

Rows (google/IFEval's schema, which every translation keeps): `key`, `prompt`, `instruction_id_list`, `kwargs` (one
argument mapping per instruction; the Hub's parquet files pad every mapping with None for the arguments it lacks).
- en: google/IFEval, split `train` (its only split). Apache-2.0.
- es: BSC-LT/IFEval_es, split `test`; ca: projecte-aina/IFEval_ca, split `test`. CC-BY-4.0. Their instruction ids
  carry a language prefix (`es:punctuation:no_comma`), which names lm-evaluation-harness's multilingual registry,
  and its checks differ from google's: "less than N" allows N (`<=`), placeholders, highlights and sections are
  always "at least", and there are Spanish/Catalan-only instructions (capital/lowercase in the language, ¿...?
  and ¡...! marks, words with ñ, ü or an accent), all mapped here.
- eu, gl: the Merge-and-Conquer authors' (HiTZ) translations, published only as data files of their Iber-IFEval
  runner (github.com/eneko98/Iber-IFEval, data/input_data.{eu,gl}.jsonl), with google's unprefixed ids and
  semantics; their runner checks `english_capital`/`english_lowercase` in the translation's own language. The
  repository states no licence, so evomerge does not download it: the user does, and pulls with `--from DIR`.

A prompt is dropped, and the pull says how many and why, only when an instruction cannot be checked: an id no
registry defines, arguments that cannot be read, or a response language the offline identifier does not know.

IFEval publishes only its evaluation data: dev and holdout are a seeded split of it, and the search refuses the
dev part unless told otherwise (evalsets.guard_test_splits).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from evomerge.errors import UserError
from evomerge.evalsources import Built, Location, PullOptions, Source, origin, source_line

COLUMNS = ("key", "prompt", "instruction_id_list", "kwargs")
IBER_IFEVAL = "github.com/eneko98/Iber-IFEval"


def _iber(lang: str, name: str) -> Location:
    fetch = (f"the {name} IFEval is published only as data/input_data.{lang}.jsonl in {IBER_IFEVAL} (the "
             "Merge-and-Conquer authors' runner), which states no licence: download that file into a folder DIR "
             f"yourself and run `evomerge evalset pull ifeval --lang {lang} --from DIR`")
    return Location(IBER_IFEVAL, None, "test", "test", COLUMNS,
                    "none stated (translation of google/IFEval, Apache-2.0)", fetch=fetch,
                    local_names=(("test", (f"input_data.{lang}.jsonl",)),))


LOCATIONS = {
    "en": Location("google/IFEval", None, "train", "train", COLUMNS, "Apache-2.0"),
    "es": Location("BSC-LT/IFEval_es", None, "test", "test", COLUMNS, "CC-BY-4.0"),
    "ca": Location("projecte-aina/IFEval_ca", None, "test", "test", COLUMNS, "CC-BY-4.0"),
    "eu": _iber("eu", "Basque"),
    "gl": _iber("gl", "Galician"),
}

# constrained_response's accepted answers, as each registry's code fixes them (the prompt only says "answer with
# one of the following options")
CONSTRAINED_OPTIONS = {
    "google:en": ["My answer is yes.", "My answer is no.", "My answer is maybe."],
    "google:eu": ["Nire erantzuna baiezkoa da.", "Nire erantzuna ezezkoa da.", "Nire erantzuna agian da."],
    "google:gl": ["A resposta é si", "A resposta é non", "A resposta é pode ser"],
    "bsc:es": ["Sí.", "No.", "Quizás."],
    "bsc:ca": ["Sí.", "No.", "Quizás."],
}
ACCENTED = "áéíóú"


class Unsupported(Exception):
    """An instruction this module cannot map (the message starts with the instruction id)."""


@dataclass(frozen=True)
class Registry:
    """Whose checks an instruction id means: google's (unprefixed ids) or lm-eval's multilingual es/ca registry
    (`es:`/`ca:` ids). `lang` is the language the case and constrained-response checks expect."""

    name: str
    lang: str

    def range(self, n: Any, relation: Any) -> dict[str, int]:
        n = int(n)
        rel = str(relation).strip().lower()
        if rel == "at least":
            return {"min": n}
        if rel == "less than":  # google: fewer than n; the es/ca registry compares with <=
            return {"max": n if self.name == "bsc" else n - 1}
        raise Unsupported(f"relation {relation!r}")


def _options(reg: Registry) -> list[str]:
    options = CONSTRAINED_OPTIONS.get(f"{reg.name}:{reg.lang}")
    if options is None:
        raise Unsupported(f"no known answer options for {reg.lang}")
    return options


Mapper = Callable[[dict, Registry], dict[str, Any]]
_COMMON: dict[str, Mapper] = {
    "keywords:existence": lambda k, g: {"type": "include_keywords", "words": list(k["keywords"]),
                                        "match": "substring"},
    "keywords:forbidden_words": lambda k, g: {"type": "exclude_keywords", "words": list(k["forbidden_words"])},
    "keywords:frequency": lambda k, g: {"type": "keyword_count", "word": k["keyword"], "match": "substring",
                                        **g.range(k["frequency"], k["relation"])},
    "keywords:letter_frequency": lambda k, g: {"type": "letter_count", "letter": k["letter"],
                                               **g.range(k["let_frequency"], k["let_relation"])},
    "language:response_language": lambda k, g: {"type": "response_language", "language": k["language"]},
    "length_constraints:number_sentences": lambda k, g: {"type": "sentences",
                                                         **g.range(k["num_sentences"], k["relation"])},
    "length_constraints:number_words": lambda k, g: {"type": "words", **g.range(k["num_words"], k["relation"])},
    "length_constraints:number_paragraphs": lambda k, g: {"type": "paragraphs", "count": int(k["num_paragraphs"]),
                                                          "separator": "***"},
    "length_constraints:nth_paragraph_first_word": lambda k, g: {
        "type": "paragraph_first_word", "count": int(k["num_paragraphs"]), "nth": int(k["nth_paragraph"]),
        "word": k["first_word"]},
    # placeholders, highlights and sections are "at least" in every registry (the es/ca kwargs' relation is unused)
    "detectable_content:number_placeholders": lambda k, g: {"type": "placeholders",
                                                            "min": int(k["num_placeholders"])},
    "detectable_content:postscript": lambda k, g: {"type": "postscript", "marker": k["postscript_marker"]},
    "detectable_format:number_bullet_lists": lambda k, g: {"type": "bullets", "count": int(k["num_bullets"])},
    "detectable_format:number_highlighted_sections": lambda k, g: {"type": "highlights",
                                                                   "min": int(k["num_highlights"])},
    "detectable_format:multiple_sections": lambda k, g: {"type": "sections", "min": int(k["num_sections"]),
                                                         "marker": k["section_spliter"]},
    "detectable_format:json_format": lambda k, g: {"type": "json"},
    "detectable_format:title": lambda k, g: {"type": "title"},
    "detectable_format:constrained_response": lambda k, g: {"type": "contains_any", "options": _options(g)},
    "combination:two_responses": lambda k, g: {"type": "two_responses"},
    "combination:repeat_prompt": lambda k, g: {"type": "starts_with", "text": k["prompt_to_repeat"]},
    "startend:end_checker": lambda k, g: {"type": "ends_with", "text": k["end_phrase"]},
    "startend:quotation": lambda k, g: {"type": "quoted"},
    "change_case:capital_word_frequency": lambda k, g: {"type": "capital_words",
                                                        **g.range(k["capital_frequency"], k["capital_relation"])},
    "punctuation:no_comma": lambda k, g: {"type": "no_commas"},
}
# google/IFEval: "english" case checks; the eu/gl runner checks them in the translation's own language
_GOOGLE: dict[str, Mapper] = {
    **_COMMON,
    "change_case:english_capital": lambda k, g: {"type": "uppercase", "language": g.lang},
    "change_case:english_lowercase": lambda k, g: {"type": "lowercase", "language": g.lang},
}
# lm-eval's multilingual registry (es:/ca: ids), with its language-specific instructions and its own variants of
# three common checks: bullets are `*` lines only, a final period is ignored by the end check, and the nth
# paragraph starts with every word of `first_word`, punctuation removed
_BSC: dict[str, Mapper] = {
    **_COMMON,
    "detectable_format:number_bullet_lists": lambda k, g: {"type": "bullets", "count": int(k["num_bullets"]),
                                                           "markers": "*"},
    "startend:end_checker": lambda k, g: {"type": "ends_with", "text": k["end_phrase"], "strip_period": True},
    "length_constraints:nth_paragraph_first_word": lambda k, g: {
        **_COMMON["length_constraints:nth_paragraph_first_word"](k, g), "words": "all"},
    "change_case:spanish_capital": lambda k, g: {"type": "uppercase", "language": "es"},
    "change_case:spanish_lowercase": lambda k, g: {"type": "lowercase", "language": "es"},
    "change_case:catalan_capital": lambda k, g: {"type": "uppercase", "language": "ca"},
    "change_case:catalan_lowercase": lambda k, g: {"type": "lowercase", "language": "ca"},
    "punctuation:question_marks": lambda k, g: {"type": "enclosed", "open": "¿", "close": "?"},
    "punctuation:exclamation_marks": lambda k, g: {"type": "enclosed", "open": "¡", "close": "!"},
    "special_character:enie": lambda k, g: {"type": "words_containing", "chars": "ñ",
                                            "min": int(k["let_frequency"]), "max": int(k["let_frequency"])},
    "special_character:dieresis": lambda k, g: {"type": "words_containing", "chars": "ü",
                                                "min": int(k["let_frequency"]), "max": int(k["let_frequency"])},
    "special_character:tildes": lambda k, g: {"type": "words_containing", "chars": ACCENTED,
                                              **g.range(k["num_words"], k["relation"])},
}
BSC_PREFIXES = ("es", "ca")


def _resolve(iid: str, lang: str) -> tuple[Mapper, Registry]:
    head, _, rest = iid.partition(":")
    if head in BSC_PREFIXES and rest.count(":") == 1:
        if head != lang:
            raise Unsupported(f"{iid} ({head} instruction in a {lang} set)")
        fn = _BSC.get(rest)
        reg = Registry("bsc", head)
    else:
        fn = _GOOGLE.get(iid)
        reg = Registry("google", lang)
    if fn is None:
        raise Unsupported(iid)
    return fn, reg


def constraints(instruction_ids: list[str], kwargs: list[dict | None], lang: str = "en") -> list[dict[str, Any]]:
    """IFEval's instruction ids and kwargs (None-padded, as the datasets store them) as constraint objects, for a
    set in `lang` (the language google-registry case and constrained-response checks expect)."""
    out = []
    for iid, kw in zip(instruction_ids, kwargs):
        fn, reg = _resolve(str(iid), lang)
        args = {k: v for k, v in (kw or {}).items() if v is not None}
        try:
            out.append(fn(args, reg))
        except Unsupported as e:
            raise Unsupported(f"{iid} ({e})") from None
        except (KeyError, TypeError, ValueError) as e:
            raise Unsupported(f"{iid} (arguments: {type(e).__name__} {e})") from None
    return out


def _row_lists(r: dict, loc: Location, split: str, i: int) -> tuple[list[str], list[dict | None]]:
    ids, kws = r["instruction_id_list"], r["kwargs"]
    where = f"{loc.where(split)}: row {i}"
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise UserError(f"{where}: instruction_id_list", "must be a list of instruction ids",
                        "is this IFEval's own schema?")
    if not isinstance(kws, list) or not all(k is None or isinstance(k, dict) for k in kws):
        raise UserError(f"{where}: kwargs", "must be a list of argument mappings", "is this IFEval's own schema?")
    if len(ids) != len(kws):
        raise UserError(f"{where}: kwargs", f"has {len(kws)} entries for {len(ids)} instructions",
                        "IFEval gives one argument mapping per instruction")
    if not isinstance(r["prompt"], str) or not r["prompt"].strip():
        raise UserError(f"{where}: prompt", "must be non-empty text", "is this IFEval's own schema?")
    return ids, kws


def _source(loc: Location) -> str:
    files = [f for _, names in loc.local_names for f in names]
    if loc.fetch and files:  # a runner's data file, not a Hub dataset
        return f"{loc.dataset} data/{files[0]} (IFEval)"
    return source_line(loc, "IFEval")


def build(dev_rows: list[dict], holdout_rows: list[dict], loc: Location, opts: PullOptions) -> Built:
    from evomerge.language_id import known_languages
    from evomerge.verifiers import parse_constraint

    usable, dropped = [], {}
    for i, r in enumerate(dev_rows):
        ids, kws = _row_lists(r, loc, loc.dev_split, i)
        try:
            cs = constraints(ids, kws, opts.lang)
            for c in cs:
                if "language" in c and c["language"] not in known_languages():
                    raise Unsupported(f"language {c['language']!r} unknown to the offline identifier")
                try:
                    parse_constraint(c, "ifeval")
                except UserError as e:
                    raise Unsupported(f"{c['type']} ({e.problem})") from None
        except Unsupported as e:
            reason = str(e)
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        usable.append((i, r, cs))
    order = list(range(len(usable)))
    random.Random(f"{opts.seed}:ifeval:{opts.lang}").shuffle(order)
    dev = sorted(order[:opts.n_dev])
    holdout = sorted(order[opts.n_dev:opts.n_dev + opts.n_holdout])
    items = []
    for split, picks in (("dev", dev), ("holdout", holdout)):
        for k in picks:
            i, r, cs = usable[k]
            # a prompt that asks for another language expects that language back
            lang = next((c["language"] for c in cs if c["type"] == "response_language"), opts.lang)
            items.append({"id": f"ifeval-{opts.lang}-{r.get('key', i)}", "split": split, "prompt": r["prompt"],
                          "constraints": cs, "language": lang})
    card = {"name": f"ifeval_{opts.lang}", "language": opts.lang, "kind": "instruction", "metric": "prompt_acc",
            "prompt": "{prompt}", "chat_template": True if opts.chat_template is None else opts.chat_template,
            "few_shot": 0, "max_new_tokens": 1280, "source": _source(loc), "license": loc.license,
            "origin": origin(loc, opts, "seeded shuffle", test_split=True)}
    notes = tuple(f"dropped {n} prompt(s): {why}" for why, n in sorted(dropped.items()))
    return Built(card, items, notes)


SOURCE = Source("ifeval", LOCATIONS, build, "verifiable instructions (IFEval and its es/ca/eu/gl translations)")
