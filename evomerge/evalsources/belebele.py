"""Belebele: 4-way reading comprehension over FLORES passages (900 questions per language, one split).

Dev and holdout are split by passage, so no passage is seen in both. Letter form, lm-eval-harness's prompt
("P: passage / Q: question / A: ... D: ... / Answer:"), scored on the letters. Galician comes from
proxectonos/belebele_gl, the others from facebook/belebele. Belebele has no training split: the dev items are
benchmark test data, so the search refuses them unless told otherwise (evalsets.guard_test_splits).
"""

from __future__ import annotations

from evomerge.evalsources import Built, Location, PullOptions, Source, grouped_split, origin

LOCATIONS = {
    "eu": Location("facebook/belebele", "eus_Latn", "test", "test"),
    "ca": Location("facebook/belebele", "cat_Latn", "test", "test"),
    "es": Location("facebook/belebele", "spa_Latn", "test", "test"),
    "en": Location("facebook/belebele", "eng_Latn", "test", "test"),
    "gl": Location("proxectonos/belebele_gl", None, "train", "train"),
}
PROMPT = "P: {passage}\nQ: {question}\n{options}\nAnswer:"


def build(dev_rows: list[dict], holdout_rows: list[dict], loc: Location, opts: PullOptions) -> Built:
    rows = dev_rows  # one split holds both
    groups = [str(r.get("link") or r["flores_passage"]) for r in rows]
    dev, holdout = grouped_split(groups, opts.n_dev, opts.n_holdout, f"{opts.seed}:belebele:{opts.lang}")
    items = []
    for split, idx in (("dev", dev), ("holdout", holdout)):
        for i in idx:
            r = rows[i]
            items.append({"id": f"belebele-{opts.lang}-{i:04d}", "split": split,
                          "passage": r["flores_passage"].strip(), "question": r["question"].strip(),
                          "choices": [str(r[f"mc_answer{k}"]).strip() for k in range(1, 5)],
                          "gold": int(r["correct_answer_num"]) - 1})
    card = {"name": f"belebele_{opts.lang}", "language": opts.lang, "kind": "multiple_choice", "metric": "gold_prob",
            "form": "letter", "prompt": PROMPT, "target_delimiter": " ",
            "chat_template": True if opts.chat_template is None else opts.chat_template,
            "few_shot": opts.few_shot,
            "source": f"{loc.dataset}{' ' + loc.config if loc.config else ''} (Belebele)", "license": "CC-BY-SA-4.0",
            "origin": origin(loc, opts, "passage")}
    notes = (f"{len(set(groups[i] for i in dev))} passages in dev, {len(set(groups[i] for i in holdout))} in holdout",)
    return Built(card, items, notes)


SOURCE = Source("belebele", LOCATIONS, build, "4-way reading comprehension (letters), split by passage")
