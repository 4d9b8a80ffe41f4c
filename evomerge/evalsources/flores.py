"""FLORES+: professionally translated Wikipedia sentences, scored as bits per byte (how well the model knows
the language's text). openlanguagedata/flores_plus (the maintained successor of facebook/flores, whose loading
script `datasets` 4+ refuses), config `<lang>_<Script>` (eus_Latn, cat_Latn, glg_Latn, spa_Latn, eng_Latn), column
`text`; its `dev` split is the dev split and `devtest` the holdout. CC-BY-SA-4.0. The dataset is gated on the Hub:
accept its terms and log in before pulling."""

from __future__ import annotations

from evomerge.evalsources import Built, Location, PullOptions, Source, origin, seeded_sample, source_line, text

LOCATIONS = {lang: Location("openlanguagedata/flores_plus", code, "dev", "devtest", ("text",), "CC-BY-SA-4.0")
             for lang, code in {"eu": "eus_Latn", "ca": "cat_Latn", "gl": "glg_Latn", "es": "spa_Latn",
                                "en": "eng_Latn"}.items()}


def build(dev_rows: list[dict], holdout_rows: list[dict], loc: Location, opts: PullOptions) -> Built:
    items = []
    for split, src_split, rows, n in (("dev", loc.dev_split, dev_rows, opts.n_dev),
                                      ("holdout", loc.holdout_split, holdout_rows, opts.n_holdout)):
        for i in seeded_sample(rows, n, f"{opts.seed}:flores:{opts.lang}:{split}"):
            items.append({"id": f"flores-{opts.lang}-{split}-{rows[i].get('id', i)}", "split": split,
                          "text": text(rows[i], "text", loc, src_split, i).strip()})
    card = {"name": f"flores_{opts.lang}", "language": opts.lang, "kind": "perplexity", "metric": "bits_per_byte",
            "prompt": "{text}", "chat_template": False, "few_shot": 0,
            "source": source_line(loc, "FLORES+"), "license": loc.license,
            "origin": origin(loc, opts, "source split")}
    return Built(card, items)


SOURCE = Source("flores", LOCATIONS, build, "FLORES+ sentences for bits per byte; dev = dev, devtest = holdout")
