"""XStoryCloze: pick the right ending of a four-sentence story (2-way cloze). The source's train split (360
stories) is the dev split and its eval split (1511) the holdout, as the paper's setting suggests.

Scored like lm-eval-harness's xstorycloze: the four sentences joined by spaces are the context, each ending is
a continuation after a space; no chat template by default (it is a plain-text continuation task).
"""

from __future__ import annotations

from evomerge.evalsources import Built, Location, PullOptions, Source, origin, seeded_sample

LOCATIONS = {
    "eu": Location("juletxara/xstory_cloze", "eu", "train", "eval"),
    "es": Location("juletxara/xstory_cloze", "es", "train", "eval"),
    "en": Location("juletxara/xstory_cloze", "en", "train", "eval"),
    "ca": Location("projecte-aina/xstorycloze_ca", None, "train", "eval"),
    "gl": Location("proxectonos/xstorycloze_gl", None, "train", "test"),
}


def build(dev_rows: list[dict], holdout_rows: list[dict], loc: Location, opts: PullOptions) -> Built:
    items = []
    for split, rows, n in (("dev", dev_rows, opts.n_dev), ("holdout", holdout_rows, opts.n_holdout)):
        for i in seeded_sample(rows, n, f"{opts.seed}:xstorycloze:{opts.lang}:{split}"):
            r = rows[i]
            context = " ".join(str(r[f"input_sentence_{k}"]).strip() for k in range(1, 5))
            items.append({"id": f"xsc-{opts.lang}-{split}-{i:04d}", "split": split, "context": context,
                          "choices": [str(r["sentence_quiz1"]).strip(), str(r["sentence_quiz2"]).strip()],
                          "gold": int(r["answer_right_ending"]) - 1})
    card = {"name": f"xstorycloze_{opts.lang}", "language": opts.lang, "kind": "multiple_choice",
            "metric": "gold_prob", "form": "cloze", "prompt": "{context}", "target_delimiter": " ",
            "chat_template": False if opts.chat_template is None else opts.chat_template, "few_shot": opts.few_shot,
            "source": f"{loc.dataset}{' ' + loc.config if loc.config else ''} (XStoryCloze)",
            "license": "CC-BY-SA-4.0", "origin": origin(loc, opts, "source split")}
    return Built(card, items)


SOURCE = Source("xstorycloze", LOCATIONS, build, "2-way story ending cloze; train = dev, eval = holdout")
