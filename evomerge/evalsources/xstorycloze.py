"""XStoryCloze: pick the right ending of a four-sentence story (2-way cloze). The source's train split (360
stories) is the dev split and its evaluation split (1511) the holdout, as the paper's setting suggests.

Where each language's rows are, as lm-evaluation-harness's task files read them:
- eu, es, en: juletxara/xstory_cloze, config = the language. Its `main` branch is a loading script, which `datasets`
  4+ refuses, so the rows come from the Hub's parquet export (revision `refs/convert/parquet`, files
  `<lang>/<split>/*.parquet`), named explicitly so the `eval` split keeps its name. Columns `input_sentence_1..4`,
  `sentence_quiz1/2`, `answer_right_ending` (1 or 2). CC-BY-SA-4.0.
- ca: projecte-aina/xstorycloze_ca, config `ca`, splits train/eval, the same columns. CC-BY-4.0.
- gl: proxectonos/xstorycloze_gl (default config `gl`, two TSV files), splits train/test, columns in the original
  StoryCloze spelling: `InputSentence1..4`, `RandomFifthSentenceQuiz1/2`, `AnswerRightEnding`. CC-BY-4.0.

Scored like lm-eval-harness's xstorycloze: the four sentences joined by spaces are the context, each ending is
a continuation after a space; no chat template by default (it is a plain-text continuation task).
"""

from __future__ import annotations

from evomerge.evalsources import (Built, Location, PullOptions, Source, integer, origin, seeded_sample, source_line,
                                  text)

SNAKE = ("input_sentence_1", "input_sentence_2", "input_sentence_3", "input_sentence_4", "sentence_quiz1",
         "sentence_quiz2", "answer_right_ending")
CAMEL = ("InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4", "RandomFifthSentenceQuiz1",
         "RandomFifthSentenceQuiz2", "AnswerRightEnding")
PARQUET_EXPORT = "refs/convert/parquet"


def _juletxara(lang: str) -> Location:
    return Location("juletxara/xstory_cloze", lang, "train", "eval", SNAKE, "CC-BY-SA-4.0", PARQUET_EXPORT,
                    (("train", f"{lang}/train/*.parquet"), ("eval", f"{lang}/eval/*.parquet")))


LOCATIONS = {
    "eu": _juletxara("eu"),
    "es": _juletxara("es"),
    "en": _juletxara("en"),
    "ca": Location("projecte-aina/xstorycloze_ca", "ca", "train", "eval", SNAKE, "CC-BY-4.0"),
    "gl": Location("proxectonos/xstorycloze_gl", None, "train", "test", CAMEL, "CC-BY-4.0",
                   local_names=(("train", ("XStoryCloze_train_gl.tsv",)), ("test", ("XStoryCloze_test_gl.tsv",)))),
}


def build(dev_rows: list[dict], holdout_rows: list[dict], loc: Location, opts: PullOptions) -> Built:
    s1, s2, s3, s4, q1, q2, answer = loc.columns
    items = []
    for split, src_split, rows, n in (("dev", loc.dev_split, dev_rows, opts.n_dev),
                                      ("holdout", loc.holdout_split, holdout_rows, opts.n_holdout)):
        for i in seeded_sample(rows, n, f"{opts.seed}:xstorycloze:{opts.lang}:{split}"):
            r = rows[i]
            context = " ".join(text(r, c, loc, src_split, i) for c in (s1, s2, s3, s4))
            items.append({"id": f"xsc-{opts.lang}-{split}-{i:04d}", "split": split, "context": context,
                          "choices": [text(r, q1, loc, src_split, i), text(r, q2, loc, src_split, i)],
                          "gold": integer(r, answer, loc, src_split, i, 1, 2) - 1})
    card = {"name": f"xstorycloze_{opts.lang}", "language": opts.lang, "kind": "multiple_choice",
            "metric": "gold_prob", "form": "cloze", "prompt": "{context}", "target_delimiter": " ",
            "chat_template": False if opts.chat_template is None else opts.chat_template, "few_shot": opts.few_shot,
            "source": source_line(loc, "XStoryCloze"), "license": loc.license,
            "origin": origin(loc, opts, "source split")}
    return Built(card, items)


SOURCE = Source("xstorycloze", LOCATIONS, build, "2-way story ending cloze; train = dev, eval/test = holdout")
