"""Shared-context scoring and one generation per prompt (issue 16).

A multiple-choice item's context is computed once and its choices on top of its cached keys and values: the
log-likelihoods must equal whole-sequence scoring (`share_context = False`, the path the lm-eval oracle pins) within
1e-5 in float32 (plus float32 rounding of large sums: TOL), with and without BOS, cloze and letter forms, and
contexts long enough to be left-truncated; the count of computed tokens shows the saving. Sets over the same
prompts generate once and give the same per-set results as separate generation. (vLLM's side, the prefix cache:
tests/test_backend_vllm.py::test_prefix_cache_scores_choices_after_a_shared_context.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from evomerge import evaluation
from evomerge.backends.hf import HFBackend
from evomerge.evalsets import load_evalset

from tiny_lm import make_byte_llama

# 1e-5, plus float32's relative rounding on sums of a few hundred nats (the byte model's sharpened head gives
# -240-nat choices; today's path alone moves by 7e-6 between batch sizes 1 and 4 on them). A wrong position, mask
# or cache row moves a choice by whole nats.
TOL = dict(abs=1e-5, rel=1e-7)

PASSAGE = ("Donostia hiri txiki bat da, itsasoaren ondoan. Kontxako badia ezaguna da eta udan jende asko etortzen "
           "da hondartzara. Alde Zaharrean pintxoak jaten dira, eta ") * 2  # ~300 byte tokens
ITEMS = [("Q: Non dago Donostia?\nA:", ["itsasoaren ondoan", "mendian", "basamortuan, urrun", "ibai baten ondoan"]),
         ("Q: Zer jaten da?\nA:", ["pintxoak", "ogia eta gazta", "ezer ez", "arraina"]),
         ("Galdera: Zer da Kontxa?\nErantzuna: ", ["badia bat", "mendi bat", "kale bat"])]


@pytest.fixture(scope="module", params=[False, True], ids=["no-bos", "bos"])
def backend(request, tmp_path_factory) -> HFBackend:
    torch.set_num_threads(2)
    path = make_byte_llama(tmp_path_factory.mktemp("shared") / "m", seed=5, bos=request.param)
    return HFBackend.load(path, batch_size=4)


def _both(backend: HFBackend, requests) -> tuple[list[float], list[float], int, int]:
    """(whole-sequence log-likelihoods, shared-context ones, tokens each computed)."""
    backend.share_context, backend.usage.tokens = False, 0
    whole, whole_tokens = backend.loglikelihoods(requests), backend.usage.tokens
    backend.share_context, backend.usage.tokens = True, 0
    shared, shared_tokens = backend.loglikelihoods(requests), backend.usage.tokens
    return whole, shared, whole_tokens, shared_tokens


@pytest.mark.parametrize("form", ["cloze", "letter"])
def test_shared_context_equals_whole_sequences_and_computes_fewer_tokens(backend, form):
    text = backend.text
    requests = []
    for question, choices in ITEMS:
        context = PASSAGE + "\n" + question
        if form == "letter":
            context += "".join(f"\n{'ABCD'[k]}: {c}" for k, c in enumerate(choices)) + "\nAnswer:"
            conts = [f" {'ABCD'[k]}" for k in range(len(choices))] + [" A: " + choices[0]]  # and one longer
        else:
            conts = [" " + c for c in choices]
        requests += [text.encode(context, x) for x in conts]
    whole, shared, whole_tokens, shared_tokens = _both(backend, requests)
    assert shared == pytest.approx(whole, **TOL)
    assert len(set(round(x, 3) for x in whole)) > len(ITEMS)  # the choices really differ
    # every context is computed once instead of once per distinct continuation
    contexts = {r.context for r in requests}
    assert shared_tokens < whole_tokens
    rows = {(r.context + r.continuation)[:-1] for r in requests}
    assert whole_tokens - shared_tokens == sum(len(r) for r in rows) - sum(
        len(c) + sum(len(s) for s in {r.continuation[:-1] for r in requests if r.context == c}) for c in contexts)


def test_left_truncated_contexts_and_a_token_cap_keep_the_scores(backend, monkeypatch):
    """Contexts left-truncated to the model's length (each choice then has its own context) next to shared ones,
    under a token cap that splits the context and continuation batches: still the whole-sequence scores."""
    monkeypatch.setattr(backend.text, "max_len", 120)
    requests = [backend.text.encode(PASSAGE + q, " " + c) for q, cs in ITEMS for c in cs]
    requests += [backend.text.encode("Kaixo", x) for x in (" mundua", " denoi", " zuri")]
    assert all(len(r.context) + len(r.continuation) <= 121 for r in requests)
    assert len({r.context for r in requests}) > len(ITEMS) + 1  # truncation gave choices their own contexts
    shapes = []
    forward = backend.model.forward
    monkeypatch.setattr(backend.model, "forward", lambda *a, **kw: shapes.append(
        (kw["input_ids"].shape[0], kw["attention_mask"].shape[1])) or forward(*a, **kw))
    monkeypatch.setattr(backend, "max_batch_tokens", 260)
    whole, shared, _, _ = _both(backend, requests)
    assert shared == pytest.approx(whole, **TOL)
    assert all(rows * width <= 260 or rows == 1 for rows, width in shapes) and len(shapes) > 4


def _write(root: Path, name: str, items: list[dict], **card) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    card = {"name": name, "language": "eu", "kind": "instruction", "metric": "prompt_acc", "prompt": "{question}",
            "chat_template": True, "max_new_tokens": 8, **card}
    (root / "card.yaml").write_text(yaml.safe_dump(card))
    (root / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    return root


def test_sets_over_the_same_prompts_generate_once_with_each_sets_verifiers(backend, tmp_path, monkeypatch):
    """Two instruction sets over the same questions (one with a stop string and a shorter answer budget, as the
    miniature's fidelity and answers sets), and a third over other questions: one generation per distinct
    prompt, and every set's scores and records equal separate generation's."""
    questions = ["Kaixo, zer moduz?", "Idatzi poema bat.", "Zein da zure izena?", "Kontatu ipuin bat."]
    items = [{"id": f"q{k}", "split": "dev", "question": q, "language": "eu",
              "constraints": [{"type": "words", "max": 3}]} for k, q in enumerate(questions)]
    other = [{**it, "id": f"o{k}", "question": q + " Mesedez."} for k, (it, q) in enumerate(zip(items, questions))]
    sets = [load_evalset(_write(tmp_path / "a", "a", items)),
            load_evalset(_write(tmp_path / "b", "b", items, stop=["o"], max_new_tokens=5)),
            load_evalset(_write(tmp_path / "c", "c", other))]
    prepared = [evaluation.prepare(backend, es, "dev", None, 0) for es in sets]
    assert prepared[0].prompts == prepared[1].prompts
    separate = [evaluation.score_set_records(backend, p) for p in prepared]
    calls = []
    generate_ids = backend.generate_ids
    monkeypatch.setattr(backend, "generate_ids", lambda prompts, *a: calls.append(len(prompts))
                        or generate_ids(prompts, *a))
    records: list[dict] = []
    together = evaluation.score(backend, prepared, records)
    assert sum(calls) == 2 * len(questions)  # a's and b's prompts once, c's once
    assert [together[p.name] for p in prepared] == [s for s, _ in separate]
    assert records == [r for _, rows in separate for r in rows]
    assert any(r["response"] != s["response"] for r, s in zip(records[:4], records[4:8]))  # b's stop cut

