"""Belebele: 4-way reading comprehension over FLORES passages (900 questions per language, one split).

Rows as lm-evaluation-harness's belebele tasks read them: facebook/belebele, config `<lang>_<Script>` (eus_Latn,
cat_Latn, spa_Latn, eng_Latn), split `test`; Galician from proxectonos/belebele_gl (one JSONL file, split `train`).
Columns `link`, `flores_passage`, `question`, `mc_answer1..4`, `correct_answer_num` (a digit, stored as text).
Both CC-BY-SA-4.0.

Dev and holdout are split by passage, so no passage is seen in both. Letter form, lm-eval-harness's prompt
("P: passage / Q: question / A: ... D: ... / Answer:"), scored on the letters. Belebele has no training split:
the dev items are benchmark test data, so the search refuses them unless told otherwise
(evalsets.guard_test_splits).
"""

from __future__ import annotations

from evomerge.evalsources import (Built, Location, PullOptions, Source, grouped_split, integer, origin,
                                  source_line, text)

COLUMNS = ("flores_passage", "question", "mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4",
           "correct_answer_num")
LOCATIONS = {
    "eu": Location("facebook/belebele", "eus_Latn", "test", "test", COLUMNS, "CC-BY-SA-4.0"),
    "ca": Location("facebook/belebele", "cat_Latn", "test", "test", COLUMNS, "CC-BY-SA-4.0"),
    "es": Location("facebook/belebele", "spa_Latn", "test", "test", COLUMNS, "CC-BY-SA-4.0"),
    "en": Location("facebook/belebele", "eng_Latn", "test", "test", COLUMNS, "CC-BY-SA-4.0"),
    "gl": Location("proxectonos/belebele_gl", None, "train", "train", COLUMNS, "CC-BY-SA-4.0",
                   local_names=(("train", ("belebele_glg_Latn.jsonl",)),)),
}
PROMPT = "P: {passage}\nQ: {question}\n{options}\nAnswer:"


def build(dev_rows: list[dict], holdout_rows: list[dict], loc: Location, opts: PullOptions) -> Built:
    rows, split_name = dev_rows, loc.dev_split  # one split holds both
    groups = [str(r.get("link") or r["flores_passage"]) for r in rows]
    dev, holdout = grouped_split(groups, opts.n_dev, opts.n_holdout, f"{opts.seed}:belebele:{opts.lang}")
    items = []
    for split, idx in (("dev", dev), ("holdout", holdout)):
        for i in idx:
            r = rows[i]
            items.append({"id": f"belebele-{opts.lang}-{i:04d}", "split": split,
                          "passage": text(r, "flores_passage", loc, split_name, i),
                          "question": text(r, "question", loc, split_name, i).strip(),
                          "choices": [text(r, f"mc_answer{k}", loc, split_name, i) for k in range(1, 5)],
                          "gold": integer(r, "correct_answer_num", loc, split_name, i, 1, 4) - 1})
    card = {"name": f"belebele_{opts.lang}", "language": opts.lang, "kind": "multiple_choice", "metric": "gold_prob",
            "form": "letter", "prompt": PROMPT, "target_delimiter": " ",
            "chat_template": True if opts.chat_template is None else opts.chat_template,
            "few_shot": opts.few_shot, "source": source_line(loc, "Belebele"), "license": loc.license,
            "origin": origin(loc, opts, "passage", test_split=True)}
    notes = (f"{len(set(groups[i] for i in dev))} passages in dev, {len(set(groups[i] for i in holdout))} in holdout",)
    return Built(card, items, notes)


SOURCE = Source("belebele", LOCATIONS, build, "4-way reading comprehension (letters), split by passage")
