"""lm-evaluation-harness 0.4.13 as the oracle for multiple-choice scoring (as mergekit is for merges): on tiny byte
Llamas whose tokenizer does or does not prepend BOS, evomerge's per-choice log-likelihoods equal lm-eval's within
1e-4 and its acc and acc_norm equal lm-eval's, for cloze and letter forms, a prompt with trailing whitespace, and a
chat-templated prompt that already writes BOS.

lm-eval runs in this process (`HFLM` on the model directory, `simple_evaluate` on a task defined as a dict over a
local JSONL file, its prompts written in lm-eval's own Jinja), offline. Skipped when lm_eval is not installed (it
is in the `dev` extra).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval-harness is not installed (pip install 'evomerge[dev]')")

from evomerge import evaluation  # noqa: E402
from evomerge.backends.hf import HFBackend  # noqa: E402
from evomerge.evalsets import load_evalset  # noqa: E402

from tiny_lm import make_byte_llama  # noqa: E402

TOL = 1e-4
ROWS = [
    ("Zein da Euskal Herriko mendirik altuena?", ["Anie", "Aitzgorri", "Gorbeia eta beste asko"], 0),
    ("¿Qué se come en Navidad?", ["turrón", "ñoquis con salsa", "pan"], 1),
    ("Que é unha filloa?", ["un doce", "unha árbore moi grande", "un río"], 0),
    ("Què són els castells?", ["torres humanes", "cases", "muntanyes de pedra"], 2),
    ("What is tea?", ["a drink", "a very old car", "a dog"], 0),
    ("Zer da txakolina?", ["ardoa", "ogia", "gazta zahar ona"], 1),
    ("¿Dónde está Cádiz?", ["en Andalucía", "en Asturias", "en Aragón, cerca del río"], 0),
    ("Cal é a capital de Galicia?", ["Santiago", "Lugo", "A Coruña"], 0),
    ("Non és el Montseny?", ["al Vallès", "a Mallorca", "a la Garrotxa i Osona"], 2),
    ("Nola esaten da 'water'?", ["ura", "sua", "haizea"], 0),
]
# (evomerge card prompt, lm-eval Jinja doc_to_text, form, lm-eval doc_to_choice)
FORMS = {
    "cloze": ("Q: {question}\nA:", "Q: {{question}}\nA:", "cloze", "{{choices}}"),
    "cloze_trailing_space": ("Pregunta: {question}\nResposta: ", "Pregunta: {{question}}\nResposta: ", "cloze",
                             "{{choices}}"),
    "letter": ("{question}\n{options}\nAnswer:",
               "{{question}}\n{% for c in choices %}{{ 'ABC'[loop.index0] }}: {{c}}\n{% endfor %}Answer:", "letter",
               ["A", "B", "C"]),
}


@pytest.fixture(scope="module", params=[False, True], ids=["no-bos", "bos"])
def model(request, tmp_path_factory):
    """(model dir, evomerge HF backend, lm-eval HFLM, whether the tokenizer prepends BOS)."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(2)
    from lm_eval.models.huggingface import HFLM

    path = make_byte_llama(tmp_path_factory.mktemp("oracle") / "m", seed=3, bos=request.param)
    backend = HFBackend.load(path, batch_size=4)
    lm = HFLM(pretrained=str(path), device="cpu", batch_size=4, dtype="float32")
    return path, backend, lm, request.param


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("oracle_data")
    rows = [{"id": f"q{k}", "split": "dev", "question": q, "choices": c, "gold": g}
            for k, (q, c, g) in enumerate(ROWS)]
    (root / "items.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return root


def _lm_eval_results(lm, data: Path) -> dict:
    from lm_eval import simple_evaluate

    tasks = [{"task": f"oracle_{name}", "dataset_path": "json",
              "dataset_kwargs": {"data_files": {"test": str(data / "items.jsonl")}}, "test_split": "test",
              "output_type": "multiple_choice", "doc_to_text": text, "doc_to_choice": choice,
              "doc_to_target": "{{gold}}", "target_delimiter": " ",
              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                              {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}
             for name, (_, text, _, choice) in FORMS.items()]
    return simple_evaluate(model=lm, tasks=tasks, num_fewshot=0, log_samples=True, bootstrap_iters=0)


@pytest.fixture(scope="module")
def lm_eval_run(model, data):
    return _lm_eval_results(model[2], data)


@pytest.mark.parametrize("name", list(FORMS))
def test_scores_equal_lm_eval(model, data, lm_eval_run, name, tmp_path):
    path, backend, lm, bos = model
    prompt, _, form, _ = FORMS[name]
    card = {"name": name, "language": "xx", "kind": "multiple_choice", "metric": "acc", "prompt": prompt,
            "form": form, "target_delimiter": " "}
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card, allow_unicode=True))
    (tmp_path / "items.jsonl").write_text((data / "items.jsonl").read_text())
    es = load_evalset(tmp_path)
    prepared = evaluation.prepare(backend, es, "dev", None, seed=0)
    ours = backend.loglikelihoods(prepared.requests)
    got = evaluation.score_set(backend, prepared)

    samples = sorted(lm_eval_run["samples"][f"oracle_{name}"], key=lambda s: s["doc_id"])
    theirs = [float(r[0]) for s in samples for r in s["filtered_resps"]]
    # the same strings went in (evomerge's prompt vs lm-eval's Jinja): a mismatch here is a prompt difference
    assert [tuple(a) for s in samples for a in s["arguments"]] == [
        (evaluation.context_text(backend, es, it), " " + c) for it in es.select("dev") for c in it.continuations(
            es.card)]
    assert len(ours) == len(theirs) == 3 * len(ROWS)
    diff = max(abs(a - b) for a, b in zip(ours, theirs))
    print(f"\n{name} bos={bos}: max |ll diff| {diff:.2e}, acc {got.metric('acc')} acc_norm {got.metric('acc_norm')}")
    assert diff < TOL
    result = lm_eval_run["results"][f"oracle_{name}"]
    assert got.metric("acc") == pytest.approx(result["acc,none"], abs=1e-12)
    assert got.metric("acc_norm") == pytest.approx(result["acc_norm,none"], abs=1e-12)
    # BOS is really there (or not): the test would see the difference
    first = {r.context[0] for r in prepared.requests}
    assert (first == {backend.tokenizer.bos_token_id}) == bos


def test_a_chat_prompt_that_writes_bos_equals_lm_eval(model):
    """The chat template writes `<s>` itself: lm-eval then adds none, and neither may evomerge (BOS once)."""
    from lm_eval.api.instance import Instance

    _, backend, lm, _ = model
    pairs = [(backend.text.chat_prompt(q), " " + c) for q, cs, _ in ROWS[:4] for c in cs]
    requests = [backend.text.encode(c, x) for c, x in pairs]
    assert all(r.context.count(backend.tokenizer.bos_token_id) == 1 for r in requests)
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    ours = backend.loglikelihoods(requests)
    assert max(abs(a - float(b[0])) for a, b in zip(ours, theirs)) < TOL


def test_the_eval_command_per_item_equals_lm_eval(model, data, lm_eval_run, tmp_path, capsys):
    """End to end: `evomerge eval --per-item` on the model directory, against lm-eval's samples item by item."""
    from evomerge.cli import main

    path, _, _, _ = model
    prompt, _, form, _ = FORMS["letter"]
    card = {"name": "letter", "language": "xx", "kind": "multiple_choice", "metric": "acc", "prompt": prompt,
            "form": form}
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "card.yaml").write_text(yaml.safe_dump(card, allow_unicode=True))
    (tmp_path / "set" / "items.jsonl").write_text((data / "items.jsonl").read_text())
    out = tmp_path / "per_item.jsonl"
    assert main(["eval", str(path), "--eval-set", str(tmp_path / "set"), "--backend", "hf", "--json",
                 "--per-item", str(out)]) == 0
    scores = json.loads(capsys.readouterr().out)["letter"]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    samples = sorted(lm_eval_run["samples"]["oracle_letter"], key=lambda s: s["doc_id"])
    assert [x["id"] for x in lines] == [f"q{k}" for k in range(len(ROWS))]
    for x, s in zip(lines, samples):
        assert x["loglikelihoods"] == pytest.approx([float(r[0]) for r in s["filtered_resps"]], abs=TOL)
        assert (x["correct"], x["correct_norm"]) == (bool(s["acc"]), bool(s["acc_norm"]))
    result = lm_eval_run["results"]["oracle_letter"]
    assert (scores["acc"], scores["acc_norm"]) == pytest.approx((result["acc,none"], result["acc_norm,none"]))
