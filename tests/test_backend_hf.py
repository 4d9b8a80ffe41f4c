"""The HF backend and evaluation on a tiny byte-level Llama: every metric equals an independent computation from
plain transformers log-probabilities (one unpadded forward per request, no batching, no sharing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from evomerge import evaluation
from evomerge.backends.hf import HFBackend, Request, rolling_windows
from evomerge.evalsets import load_evalset

from tiny_lm import make_byte_llama


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    return make_byte_llama(tmp_path_factory.mktemp("bytelm") / "m", seed=0)


@pytest.fixture(scope="module")
def backend(lm_dir) -> HFBackend:
    torch.set_num_threads(2)
    return HFBackend.load(lm_dir, batch_size=3)  # small batches: several batches, padding in each


def plain_loglik(backend: HFBackend, context: str, continuation: str) -> float:
    """log P(continuation | context): tokenize context+continuation, one forward pass, sum the continuation's."""
    tok, model = backend.tokenizer, backend.model
    ids = tok(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
    if n_ctx == 0:
        ids, n_ctx = [tok.bos_token_id] + ids, 1
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return float(sum(logp[i - 1, ids[i]] for i in range(n_ctx, len(ids))))


def _write(root: Path, card: dict, items: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "card.yaml").write_text(yaml.safe_dump(card, allow_unicode=True))
    (root / "items.jsonl").write_text("\n".join(json.dumps(i, ensure_ascii=False) for i in items) + "\n")
    return root


QUESTIONS = [
    ("Zein da Euskal Herriko mendirik altuena?", ["Anie", "Aitzgorri", "Gorbeia eta beste asko"], 0),
    ("¿Qué se come en Navidad?", ["turrón", "ñoquis con salsa", "pan"], 1),
    ("Que é unha filloa?", ["un doce", "unha árbore moi grande", "un río"], 0),
    ("Què són els castells?", ["torres humanes", "cases", "muntanyes de pedra"], 0),
    ("What is tea?", ["a drink", "a very old car", "a dog"], 0),
    ("Zer da txakolina?", ["ardoa", "ogia", "gazta zahar ona"], 0),
    ("¿Dónde está Cádiz?", ["en Andalucía", "en Asturias", "en Aragón, cerca del río"], 0),
]


def _mc_items() -> list[dict]:
    return [{"id": f"q{k}", "split": "dev" if k < 5 else "fewshot", "question": q, "choices": c, "gold": g}
            for k, (q, c, g) in enumerate(QUESTIONS)]


def _expected_mc(lls: list[list[float]], items, conts) -> dict[str, float]:
    def argmax(xs):
        return max(range(len(xs)), key=lambda i: (xs[i], -i))

    n = len(items)
    probs = [[math.exp(x - max(lp)) / sum(math.exp(y - max(lp)) for y in lp) for x in lp] for lp in lls]
    return {"acc": sum(argmax(lp) == it.gold for lp, it in zip(lls, items)) / n,
            "acc_norm": sum(argmax([x / len(c) for x, c in zip(lp, cs)]) == it.gold
                            for lp, cs, it in zip(lls, conts, items)) / n,
            "acc_bytes": sum(argmax([x / len(c.encode()) for x, c in zip(lp, cs)]) == it.gold
                             for lp, cs, it in zip(lls, conts, items)) / n,
            "gold_prob": sum(p[it.gold] for p, it in zip(probs, items)) / n}


def test_loglikelihoods_equal_plain_forward_passes(backend):
    pairs = [("Kaixo", " mundua"), ("", "Hola"), ("¿Qué tal?", " Bien, ñandú."), ("a", "b"), ("a", "b"),
             ("Bon dia a tothom, com esteu?", " Molt bé"), ("x", " y z w v u t s r q p o n m")]
    requests = [backend.text.encode(c, x) for c, x in pairs]
    got = backend.loglikelihoods(requests)
    for (c, x), g in zip(pairs, got):
        assert g == pytest.approx(plain_loglik(backend, c, x), abs=1e-4)


def test_a_batch_token_cap_bounds_every_forward_and_changes_no_score(backend, monkeypatch):
    """The memory plan sizes logits for `max_batch_tokens` tokens a forward: the cap must hold (rows x longest row,
    padding included), and scores and generations must not change."""
    pairs = [("Kaixo", " mundua"), ("¿Qué tal?", " Bien, ñandú."), ("Bon dia a tothom, com esteu?", " Molt bé"),
             ("x", " y z"), ("a", "b"), ("Egun on", " denoi")]
    requests = [backend.text.encode(c, x) for c, x in pairs]
    prompts = [backend.text.encode_prompt(backend.text.chat_prompt(t)) for t in ("Kaixo!", "Escribe un poema largo.", "Hi")]
    plain = backend.loglikelihoods(requests), backend.generate(prompts, max_new_tokens=4)
    shapes = []
    forward = backend.model.forward
    monkeypatch.setattr(backend.model, "forward", lambda *a, **kw: shapes.append(tuple(kw["input_ids"].shape))
                        or forward(*a, **kw))
    longest = max(len(r.context) + len(r.continuation) for r in requests)
    monkeypatch.setattr(backend, "max_batch_tokens", longest + 2)  # one row of the longest, or a few short ones
    capped = backend.loglikelihoods(requests)
    assert capped == pytest.approx(plain[0], abs=1e-5)
    assert shapes and all(rows * width <= longest + 2 for rows, width in shapes) and len(shapes) > 2
    assert backend.generate(prompts, max_new_tokens=4) == plain[1]


@pytest.mark.parametrize("form,chat,few_shot", [("cloze", False, 0), ("cloze", False, 2), ("letter", True, 2),
                                                ("cloze", True, 1)])
def test_multiple_choice_metrics_equal_an_independent_computation(backend, tmp_path, form, chat, few_shot):
    prompt = "{question}\n{options}\nAnswer:" if form == "letter" else "Q: {question}\nA:"
    card = {"name": "mc", "language": "xx", "kind": "multiple_choice", "metric": "acc", "prompt": prompt,
            "form": form, "chat_template": chat, "few_shot": few_shot, "target_delimiter": " "}
    es = load_evalset(_write(tmp_path / "mc", card, _mc_items()))
    prepared = evaluation.prepare(backend, es, "dev", None, seed=0)
    got = evaluation.score(backend, [prepared])["mc"]

    items = es.select("dev")
    lls, conts = [], []
    for it in items:
        shots = es.shots(it, 0)
        if chat:
            msgs = []
            for s in shots:
                answer = "ABC"[s.gold] if form == "letter" else s.choices[s.gold]
                msgs += [{"role": "user", "content": s.prompt(es.card)}, {"role": "assistant", "content": answer}]
            msgs.append({"role": "user", "content": it.prompt(es.card)})
            context = backend.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            context = "\n\n".join([f"{s.prompt(es.card)} {s.choices[s.gold]}" for s in shots] + [it.prompt(es.card)])
        cs = ["A", "B", "C"] if form == "letter" else list(it.choices)
        conts.append(cs)
        lls.append([plain_loglik(backend, context, " " + c) for c in cs])
    expected = _expected_mc(lls, items, conts)
    assert got.n == len(items) == 5
    assert set(got.values) == set(expected)
    for k, v in expected.items():
        assert got.metric(k) == pytest.approx(v, abs=1e-6), k


def test_bits_per_byte_equals_an_independent_computation(backend, tmp_path):
    texts = ["Euskara da euskaldunon hizkuntza.", "El sol sale por el este cada mañana.", "Bo día, Galiza!"]
    card = {"name": "ppl", "language": "xx", "kind": "perplexity", "metric": "bits_per_byte"}
    es = load_evalset(_write(tmp_path / "ppl", card, [{"id": i, "split": "dev", "text": t}
                                                       for i, t in enumerate(texts)]))
    got = evaluation.score(backend, [evaluation.prepare(backend, es, "dev", None, 0)])["ppl"]
    nll = -sum(plain_loglik(backend, "", t) for t in texts)  # empty context: predicted from <s>
    n_bytes = sum(len(t.encode()) for t in texts)
    assert got.metric("bits_per_byte") == pytest.approx(nll / n_bytes / math.log(2), rel=1e-5)
    assert got.metric("byte_perplexity") == pytest.approx(math.exp(nll / n_bytes), rel=1e-5)
    assert got.metric("word_perplexity") == pytest.approx(math.exp(nll / sum(len(t.split()) for t in texts)), rel=1e-5)


def test_rolling_windows_cover_every_token_once_as_lm_eval_does():
    tokens = list(range(10, 33))  # 23 tokens, windows of 8
    windows = rolling_windows(tokens, prefix=1, max_len=8)
    assert [t for w in windows for t in w.continuation] == tokens
    assert windows[0].context == (1,) and len(windows[0].continuation) == 8
    assert windows[1].context == (tokens[7],) and len(windows[1].continuation) == 8
    last = windows[-1]  # 7 tokens left: the window takes 2 tokens of context to fill max_len inputs
    assert len(last.continuation) == 7 and len(last.context + last.continuation) - 1 == 8
    assert all(len(w.context + w.continuation) - 1 <= 8 for w in windows)
    assert rolling_windows([], 1, 8) == []


def _greedy_plain(backend: HFBackend, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    eos = set(backend.model.generation_config.eos_token_id)
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(backend.model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt in eos:
                break
            out.append(nxt)
            ids.append(nxt)
    return out


def test_greedy_generation_is_batched_correctly_with_a_token_cap(backend):
    prompts = [backend.text.encode_prompt(backend.text.chat_prompt(t)) for t in ("Kaixo!", "Escribe un poema largo.", "Hi")]
    for cap in (10, 3):  # equal to the plain greedy loop's first `cap` tokens: the cap holds
        got = backend.generate(prompts, max_new_tokens=cap)
        for p, text in zip(prompts, got):
            assert text == backend.tokenizer.decode(_greedy_plain(backend, list(p), cap), skip_special_tokens=True)


def test_stop_strings_cut_the_response(backend):
    prompt = backend.text.encode_prompt(backend.text.chat_prompt("Kaixo!"))
    full = backend.generate([prompt], max_new_tokens=12)[0]
    assert len(full) >= 4
    stop = full[2:4]
    cut = backend.generate([prompt], max_new_tokens=12, stop=[stop])[0]
    assert cut == full[:full.index(stop)]


def test_instruction_set_is_scored_from_generations(backend, tmp_path):
    card = {"name": "ins", "language": "es", "kind": "instruction", "metric": "prompt_acc", "prompt": "{prompt}",
            "chat_template": True, "max_new_tokens": 8}
    items = [{"id": 1, "split": "dev", "prompt": "Di hola.", "constraints": [{"type": "words", "max": 100}]},
             {"id": 2, "split": "dev", "prompt": "Di adiós.", "constraints": [{"type": "json"}, {"type": "no_commas"}]}]
    es = load_evalset(_write(tmp_path / "ins", card, items))
    prepared = evaluation.prepare(backend, es, "dev", None, 0)
    a = evaluation.score(backend, [prepared])["ins"]
    assert a == evaluation.score(backend, [prepared])["ins"]  # greedy: the same every time
    responses = backend.generate(prepared.prompts, 8)
    verdicts = [evaluation.verdict(r, c, "es") for r, c in zip(responses, prepared.constraints)]
    assert a.metric("prompt_acc") == sum(all(v.strict) for v in verdicts) / 2
    assert a.metric("inst_acc") == sum(sum(v.strict) for v in verdicts) / 3
    assert a.metric("prompt_acc") >= 0.5  # at most 8 tokens: the words constraint holds
    assert a.metric("lang_acc") == sum(v.language_ok for v in verdicts) / 2


def test_prepared_sets_need_no_tokenizer_per_candidate(backend, tmp_path, monkeypatch):
    card = {"name": "mc", "language": "xx", "kind": "multiple_choice", "metric": "gold_prob",
            "prompt": "Q: {question}\nA:", "chat_template": True}
    es = load_evalset(_write(tmp_path / "mc", card, _mc_items()))
    prepared = evaluation.prepare(backend, es, "dev", 3, seed=1)
    before = evaluation.score(backend, [prepared])

    def no_tokenizing(*a, **k):
        raise AssertionError("tokenized during scoring")

    for name in ("tokens", "encode_text", "encode", "encode_prompt", "chat"):
        monkeypatch.setattr(backend.text, name, no_tokenizing)
    assert evaluation.score(backend, [prepared]) == before


def test_a_chat_set_on_a_model_without_chat_template_is_a_user_error(backend, tmp_path, monkeypatch):
    from evomerge.errors import UserError

    card = {"name": "mc", "language": "xx", "kind": "multiple_choice", "metric": "acc", "prompt": "{question}",
            "chat_template": True}
    es = load_evalset(_write(tmp_path / "mc", card, _mc_items()))
    monkeypatch.setattr(backend.tokenizer, "chat_template", None)
    with pytest.raises(UserError, match="chat_template: false"):
        evaluation.prepare(backend, es, "dev", None, 0)


def test_eval_command_scores_a_model_dir_and_a_recipe(lm_dir, tmp_path, capsys):
    from evomerge.cli import main

    card = {"name": "mc", "language": "xx", "kind": "multiple_choice", "metric": "acc", "prompt": "Q: {question}\nA:"}
    es_dir = _write(tmp_path / "mc", card, _mc_items())
    assert main(["eval", str(lm_dir), "--eval-set", str(es_dir), "--json", "--batch-size", "4"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert set(direct["mc"]) == {"acc", "acc_norm", "acc_bytes", "gold_prob", "n"} and direct["mc"]["n"] == 5

    # a recipe: linear merge of the model with itself is the model itself
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "dtype": "float32",
                                      "models": [{"model": str(lm_dir), "parameters": {"weight": 1.0}},
                                                 {"model": str(lm_dir), "parameters": {"weight": 1.0}}]}))
    assert main(["eval", str(recipe), "--eval-set", str(es_dir), "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged["mc"] == pytest.approx(direct["mc"], abs=1e-5)
    assert main(["eval", str(lm_dir), "--eval-set", str(es_dir)]) == 0
    assert "gold_prob" in capsys.readouterr().out


def test_bf16_scoring_is_within_bf16_rounding_of_float32(miniature):
    """A candidate merged in place and scored in bfloat16 (the miniature's trained models, the shipped eval sets)
    against the same recipe merged and scored in float32. bfloat16 keeps 8 significant bits (a rounding moves a
    value by up to 2^-9, 0.2%, of itself); the miniature's logits reach about 20, so one rounding moves a logit by up
    to ~0.04 and a token's log-prob by about as much again through its four layers' rounded activations. Measured:
    0.02 nats per continuation token at worst; the bound, 0.1 per token, leaves 2.5x (tests/test_backend_vllm.py
    holds the vLLM engine in bfloat16 to the same bound), and is far below the gap between two candidates."""
    from evomerge.merge import ResidentMerge
    from evomerge.recipe import Recipe

    repo = Path(__file__).resolve().parent.parent
    sets = [load_evalset(repo / "eval_sets" / s) for s in ("mini_xb_facts", "mini_xa_chat")]

    def recipe(dtype: str, xb) -> Recipe:
        return Recipe.from_mergekit({"merge_method": "task_arithmetic", "base_model": str(miniature.base),
                                     "dtype": dtype,
                                     "models": [{"model": str(miniature.instruct), "parameters": {"weight": 1.0}},
                                                {"model": str(miniature.languages["xb"]),
                                                 "parameters": {"weight": xb}}]})

    lls, requests = {}, None
    for dtype in ("float32", "bfloat16"):
        hf = HFBackend.load(miniature.instruct, dtype=getattr(torch, dtype))
        merge = ResidentMerge(recipe(dtype, 0.5), hf.parameters())
        prepared = [evaluation.prepare(hf, es, "dev", 8, 0) for es in sets]
        requests = [r for p in prepared for r in p.requests]
        for xb in (0.5, [0.0, 1.5, 0.5, 2.0]):
            merge.apply(recipe(dtype, xb))
            lls[dtype, str(xb)] = hf.loglikelihoods(requests)
    assert hf.model.dtype == torch.bfloat16

    def per_token(xs, ys) -> float:
        return max(abs(x - y) / len(r.continuation) for x, y, r in zip(xs, ys, requests))

    for xb in ("0.5", "[0.0, 1.5, 0.5, 2.0]"):
        assert per_token(lls["bfloat16", xb], lls["float32", xb]) < 0.1
    assert per_token(lls["float32", "0.5"], lls["float32", "[0.0, 1.5, 0.5, 2.0]"]) > 0.3


def test_eval_per_item_writes_one_auditable_line_per_item(lm_dir, backend, tmp_path, capsys):
    """`evomerge eval --per-item`: every item's line holds what its score came from; the lines average to the
    printed metrics and their log-likelihoods are the backend's for the same prompts."""
    from evomerge.cli import main

    mc = _write(tmp_path / "mc", {"name": "mc", "language": "xx", "kind": "multiple_choice", "metric": "acc",
                                  "prompt": "{question}\n{options}\nAnswer:", "form": "letter"}, _mc_items())
    ins = _write(tmp_path / "ins", {"name": "ins", "language": "es", "kind": "instruction", "metric": "prompt_acc",
                                    "prompt": "{prompt}", "chat_template": True, "max_new_tokens": 8},
                 [{"id": 1, "split": "dev", "prompt": "Di hola.", "constraints": [{"type": "words", "max": 100}]},
                  {"id": 2, "split": "dev", "prompt": "Di adiós.",
                   "constraints": [{"type": "json"}, {"type": "no_commas"}]}])
    out = tmp_path / "items.jsonl"
    assert main(["eval", str(lm_dir), "--eval-set", str(mc), "--eval-set", str(ins), "--json", "--backend", "hf",
                 "--per-item", str(out)]) == 0
    scores = json.loads(capsys.readouterr().out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    choice = [x for x in lines if x["set"] == "mc"]
    inst = [x for x in lines if x["set"] == "ins"]
    assert [x["id"] for x in choice] == ["q0", "q1", "q2", "q3", "q4"] and [x["id"] for x in inst] == ["1", "2"]
    assert sum(x["correct"] for x in choice) / 5 == pytest.approx(scores["mc"]["acc"])
    assert sum(x["correct_norm"] for x in choice) / 5 == pytest.approx(scores["mc"]["acc_norm"])
    assert sum(x["gold_prob"] for x in choice) / 5 == pytest.approx(scores["mc"]["gold_prob"])
    for x in choice:
        assert x["choices"] == ["A", "B", "C"] and "\nC: " in x["prompt"] and x["prompt"].endswith("\nAnswer:")
        lls = [plain_loglik(backend, x["prompt"], " " + c) for c in x["choices"]]
        assert x["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        assert x["chosen"] == max(range(3), key=lambda i: (lls[i], -i)) and x["correct"] == (x["chosen"] == x["gold"])
    assert sum(x["correct"] for x in inst) / 2 == pytest.approx(scores["ins"]["prompt_acc"])
    assert [len(x["constraints"]) for x in inst] == [1, 2]
    assert inst[1]["constraints"][0]["type"] == "json" and isinstance(inst[1]["response"], str)
    assert all(x["correct"] == all(c["strict"] for c in x["constraints"]) for x in inst)
