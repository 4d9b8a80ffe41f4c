"""IFEval (en) and its translations (es, ca): prompts with verifiable instructions, mapped onto evomerge's
constraint types (verifiers.py). A prompt with an instruction that has no equivalent here (constrained_response,
whose accepted answers are English sentences in IFEval's code) or with arguments that cannot be read is dropped,
and the pull says how many.

IFEval publishes one split, its test data: dev and holdout are a seeded split of it, and the search refuses the
dev part unless told otherwise (evalsets.guard_test_splits).
"""

from __future__ import annotations

import random
from typing import Any, Callable

from evomerge.evalsources import Built, Location, PullOptions, Source, origin

LOCATIONS = {
    "en": Location("google/IFEval", None, "train", "train"),
    "es": Location("BSC-LT/IFEval_es", None, "train", "train"),
    "ca": Location("projecte-aina/IFEval_ca", None, "train", "train"),
}


class Unsupported(Exception):
    """An instruction this module cannot map."""


def _range(n: Any, relation: Any) -> dict[str, int]:
    n = int(n)
    rel = str(relation).strip().lower()
    if rel == "less than":
        return {"max": n - 1}
    if rel == "at least":
        return {"min": n}
    raise Unsupported(f"relation {relation!r}")


_MAP: dict[str, Callable[[dict], dict[str, Any]]] = {
    "keywords:existence": lambda k: {"type": "include_keywords", "words": list(k["keywords"]),
                                     "match": "substring"},
    "keywords:forbidden_words": lambda k: {"type": "exclude_keywords", "words": list(k["forbidden_words"])},
    "keywords:frequency": lambda k: {"type": "keyword_count", "word": k["keyword"], "match": "substring",
                                     **_range(k["frequency"], k["relation"])},
    "keywords:letter_frequency": lambda k: {"type": "letter_count", "letter": k["letter"],
                                            **_range(k["let_frequency"], k["let_relation"])},
    "language:response_language": lambda k: {"type": "response_language", "language": k["language"]},
    "length_constraints:number_sentences": lambda k: {"type": "sentences", **_range(k["num_sentences"], k["relation"])},
    "length_constraints:number_words": lambda k: {"type": "words", **_range(k["num_words"], k["relation"])},
    "length_constraints:number_paragraphs": lambda k: {"type": "paragraphs", "count": int(k["num_paragraphs"]),
                                                       "separator": "***"},
    "length_constraints:nth_paragraph_first_word": lambda k: {
        "type": "paragraph_first_word", "count": int(k["num_paragraphs"]), "nth": int(k["nth_paragraph"]),
        "word": k["first_word"]},
    "detectable_content:number_placeholders": lambda k: {"type": "placeholders", "min": int(k["num_placeholders"])},
    "detectable_content:postscript": lambda k: {"type": "postscript", "marker": k["postscript_marker"]},
    "detectable_format:number_bullet_lists": lambda k: {"type": "bullets", "count": int(k["num_bullets"])},
    "detectable_format:number_highlighted_sections": lambda k: {"type": "highlights", "min": int(k["num_highlights"])},
    "detectable_format:multiple_sections": lambda k: {"type": "sections", "count": int(k["num_sections"]),
                                                      "marker": k["section_spliter"]},
    "detectable_format:json_format": lambda k: {"type": "json"},
    "detectable_format:title": lambda k: {"type": "title"},
    "combination:two_responses": lambda k: {"type": "two_responses"},
    "combination:repeat_prompt": lambda k: {"type": "starts_with", "text": k["prompt_to_repeat"]},
    "startend:end_checker": lambda k: {"type": "ends_with", "text": k["end_phrase"]},
    "startend:quotation": lambda k: {"type": "quoted"},
    "change_case:capital_word_frequency": lambda k: {"type": "capital_words",
                                                     **_range(k["capital_frequency"], k["capital_relation"])},
    "change_case:english_capital": lambda k: {"type": "uppercase"},
    "change_case:english_lowercase": lambda k: {"type": "lowercase"},
    "punctuation:no_comma": lambda k: {"type": "no_commas"},
}


def constraints(instruction_ids: list[str], kwargs: list[dict | None]) -> list[dict[str, Any]]:
    """IFEval's instruction ids and kwargs (None-padded, as the datasets store them) as constraint objects."""
    out = []
    for iid, kw in zip(instruction_ids, kwargs):
        fn = _MAP.get(iid)
        if fn is None:
            raise Unsupported(iid)
        args = {k: v for k, v in (kw or {}).items() if v is not None}
        try:
            out.append(fn(args))
        except (KeyError, TypeError, ValueError) as e:
            raise Unsupported(f"{iid} arguments ({e})") from None
    return out


def build(dev_rows: list[dict], holdout_rows: list[dict], loc: Location, opts: PullOptions) -> Built:
    from evomerge.errors import UserError
    from evomerge.verifiers import parse_constraint

    from evomerge.language_id import known_languages

    usable, dropped = [], {}
    for i, r in enumerate(dev_rows):
        try:
            cs = constraints(list(r["instruction_id_list"]), list(r["kwargs"]))
            for c in cs:
                parse_constraint(c, "ifeval")
                if c["type"] == "response_language" and c["language"] not in known_languages():
                    raise Unsupported(f"response_language:{c['language']}")
        except (Unsupported, UserError) as e:
            reason = str(e).split(" ")[0]
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
            "few_shot": 0, "max_new_tokens": 512, "source": f"{loc.dataset} (IFEval)", "license": "Apache-2.0",
            "origin": origin(loc, opts, "seeded shuffle")}
    notes = tuple(f"dropped {n} prompt(s): {why}" for why, n in sorted(dropped.items()))
    return Built(card, items, notes)


SOURCE = Source("ifeval", LOCATIONS, build, "verifiable instructions (IFEval and its es/ca translations)")
