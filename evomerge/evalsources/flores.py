"""FLORES+: professionally translated Wikipedia sentences, scored as bits per byte (how well the model knows
the language's text). FLORES's dev split is the dev split and devtest the holdout. The dataset is gated on the
Hub: accept its terms and log in before pulling."""

from __future__ import annotations

from evomerge.evalsources import Built, Location, PullOptions, Source, origin, seeded_sample

LOCATIONS = {lang: Location("openlanguagedata/flores_plus", code, "dev", "devtest")
             for lang, code in {"eu": "eus_Latn", "ca": "cat_Latn", "gl": "glg_Latn", "es": "spa_Latn",
                                "en": "eng_Latn"}.items()}


def build(dev_rows: list[dict], holdout_rows: list[dict], loc: Location, opts: PullOptions) -> Built:
    items = []
    for split, rows, n in (("dev", dev_rows, opts.n_dev), ("holdout", holdout_rows, opts.n_holdout)):
        for i in seeded_sample(rows, n, f"{opts.seed}:flores:{opts.lang}:{split}"):
            items.append({"id": f"flores-{opts.lang}-{split}-{rows[i].get('id', i)}", "split": split,
                          "text": str(rows[i]["text"]).strip()})
    card = {"name": f"flores_{opts.lang}", "language": opts.lang, "kind": "perplexity", "metric": "bits_per_byte",
            "prompt": "{text}", "chat_template": False, "few_shot": 0,
            "source": f"{loc.dataset} {loc.config} (FLORES+)", "license": "CC-BY-SA-4.0",
            "origin": origin(loc, opts, "source split")}
    return Built(card, items)


SOURCE = Source("flores", LOCATIONS, build, "FLORES+ sentences for bits per byte; dev = dev, devtest = holdout")
