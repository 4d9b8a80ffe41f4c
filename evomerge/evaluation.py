"""Eval sets tokenized once for a backend (`prepare`), then scored as often as the weights change (`score`).

`prepare` fixes everything a candidate's score depends on besides the weights: the items (a seeded subset of the
split), the few-shot examples, the prompt text (chat template, few-shot as multi-turn chat) and its token ids.
So all candidates scored on one prepared set see exactly the same requests.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping, Sequence, Union

from evomerge.backends.hf import HFBackend, Request
from evomerge.errors import UserError
from evomerge.evalsets import EvalSet, Item, load_evalset
from evomerge.scorers import (SetScores, Verdict, instruction_items, multiple_choice_items, multiple_choice_picks,
                              score_instructions, score_multiple_choice, score_perplexity)
from evomerge.verifiers import Constraint, check, check_loose


@dataclass(frozen=True)
class ChoiceSet:
    """A multiple-choice set's requests: item i owns requests[offsets[i]:offsets[i + 1]], one per choice."""

    name: str
    metric: str
    requests: tuple[Request, ...]
    offsets: tuple[int, ...]
    golds: tuple[int, ...]
    choices: tuple[tuple[str, ...], ...]  # the scored strings (choice texts or letters), for acc_norm / acc_bytes
    item_ids: tuple[str, ...] = ()  # for per-item records
    contexts: tuple[str, ...] = ()  # each item's text before the choices (few-shot, chat template, prompt)
    weights: tuple[float, ...] = ()  # each item's weight in the means; empty: all 1 (`item_weights`)


@dataclass(frozen=True)
class TextSet:
    """A perplexity set's rolling windows: text i owns requests[offsets[i]:offsets[i + 1]]."""

    name: str
    metric: str
    requests: tuple[Request, ...]
    offsets: tuple[int, ...]
    texts: tuple[str, ...]
    item_ids: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class GenerationSet:
    """An instruction set's prompts (token ids) and what each response must keep."""

    name: str
    metric: str
    prompts: tuple[tuple[int, ...], ...]
    constraints: tuple[tuple[Constraint, ...], ...]
    languages: tuple[str, ...]
    max_new_tokens: int
    stop: tuple[str, ...]
    item_ids: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ()  # each prompt's text
    weights: tuple[float, ...] = ()


PreparedSet = Union[ChoiceSet, TextSet, GenerationSet]


def context_text(backend: HFBackend, evalset: EvalSet, item: Item, seed: int = 0) -> str:
    """The text an item is scored or answered after: few-shot examples as earlier chat turns (or, without a chat
    template, as "prompt answer" blocks separated by blank lines, lm-eval's default), then the item's prompt."""
    card = evalset.card
    shots = evalset.shots(item, seed)
    if card.chat_template:
        messages = [{"role": "system", "content": card.system}] if card.system else []
        for s in shots:
            messages += [{"role": "user", "content": s.prompt(card)}, {"role": "assistant", "content": s.answer(card)}]
        messages.append({"role": "user", "content": item.prompt(card)})
        return backend.text.chat(messages)
    blocks = [card.system] if card.system else []
    blocks += [s.prompt(card) + card.target_delimiter + s.answer(card) for s in shots]
    blocks.append(item.prompt(card))
    return "\n\n".join(blocks)


def item_weights(items: Sequence[Item]) -> tuple[float, ...]:
    """The items' weights (a reduced set's anchors, reduce.py), or () when all are 1: the scorers' plain means."""
    return tuple(it.weight for it in items) if any(it.weight != 1 for it in items) else ()


def prepare(backend: HFBackend, evalset: EvalSet, split: str, max_items: int | None, seed: int) -> PreparedSet:
    """Select the items (same for every candidate under one seed) and tokenize them."""
    card = evalset.card
    items = evalset.select(split, max_items, seed)
    backend.text.warn_unknown(evalset.name, [it.text(card) for it in items])
    if card.kind == "multiple_choice":
        requests: list[Request] = []
        offsets, golds, choices, contexts = [0], [], [], []
        for item in items:
            context = context_text(backend, evalset, item, seed)
            contexts.append(context)
            conts = item.continuations(card)
            requests += [backend.text.encode(context, card.target_delimiter + c) for c in conts]
            offsets.append(len(requests))
            golds.append(item.gold)
            choices.append(conts)
        return ChoiceSet(evalset.name, card.metric, tuple(requests), tuple(offsets), tuple(golds), tuple(choices),
                         tuple(it.id for it in items), tuple(contexts), item_weights(items))
    if card.kind == "perplexity":
        requests, offsets, texts = [], [0], []
        for item in items:
            text = item.prompt(card)
            requests += backend.rolling_requests(text)
            offsets.append(len(requests))
            texts.append(text)
        return TextSet(evalset.name, card.metric, tuple(requests), tuple(offsets), tuple(texts),
                       tuple(it.id for it in items), item_weights(items))
    from evomerge.language_id import known_languages

    unknown = sorted({it.language for it in items} - known_languages())
    if unknown:
        raise UserError(evalset.path, f"the language identifier does not know {unknown[0]!r}",
                        "use an ISO 639-1 code such as eu, ca, gl, es, en")
    contexts = tuple(context_text(backend, evalset, item, seed) for item in items)
    prompts = tuple(backend.text.encode_prompt(c, card.max_new_tokens) for c in contexts)
    return GenerationSet(evalset.name, card.metric, prompts, tuple(it.constraints for it in items),
                         tuple(it.language for it in items), card.max_new_tokens, card.stop,
                         tuple(it.id for it in items), contexts, item_weights(items))


def verdict(response: str, constraints: Sequence[Constraint], language: str) -> Verdict:
    """Check one response against its constraints (strict and loose) and its expected language."""
    from evomerge.language_id import is_language

    return Verdict(tuple(check(c, response) for c in constraints),
                   tuple(check_loose(c, response) for c in constraints), is_language(response, language))


def _outputs(backend: HFBackend, p: PreparedSet) -> list:
    """What the model gives for one prepared set with the current weights: each request's log-likelihood, or
    each prompt's response."""
    if isinstance(p, GenerationSet):
        return backend.generate(p.prompts, p.max_new_tokens, p.stop)
    return backend.loglikelihoods(p.requests)


def _all_outputs(backend: HFBackend, prepared: Sequence[PreparedSet]) -> list[list]:
    """`_outputs` of every set, the instruction sets' prompts generated once for all of them (`generations`)."""
    gen = iter(generations(backend, [p for p in prepared if isinstance(p, GenerationSet)]))
    return [next(gen) if isinstance(p, GenerationSet) else _outputs(backend, p) for p in prepared]


def generations(backend: HFBackend, sets: Sequence[GenerationSet]) -> list[list[str]]:
    """Each set's responses, every distinct prompt generated once for all the sets that hold it (the miniature's
    fidelity and answers sets ask the same questions).

    A greedy answer is the same token by token whatever the budget and stop strings, so a prompt is generated
    with the largest budget of its sets and only the stop strings they all have (any one of those ends every
    set's answer); each set then takes its own budget of the tokens and cuts at its own stop strings, exactly
    what generating it alone gives."""
    need: dict[tuple[int, ...], tuple[int, frozenset[str]]] = {}
    for p in sets:
        for prompt in p.prompts:
            n, stops = need.get(prompt, (0, None))
            need[prompt] = (max(n, p.max_new_tokens), frozenset(p.stop) if stops is None else stops & set(p.stop))
    calls: dict[tuple[int, tuple[str, ...]], list[tuple[int, ...]]] = {}
    for prompt, (n, stops) in need.items():
        calls.setdefault((n, tuple(sorted(stops))), []).append(prompt)
    ids: dict[tuple[int, ...], list[int]] = {}
    for (n, stop), prompts in calls.items():
        ids.update(zip(prompts, backend.generate_ids(prompts, n, stop)))
    return [[backend.text.answer(ids[q][:p.max_new_tokens], p.stop) for q in p.prompts] for p in sets]


def _per_item(p: ChoiceSet | TextSet, lls: Sequence[float]) -> list[list[float]]:
    return [list(lls[a:b]) for a, b in zip(p.offsets[:-1], p.offsets[1:])]


def _scored(p: PreparedSet, outputs: list) -> tuple[SetScores, dict[str, list[float]], list]:
    """(scores, each item's values of the metrics that are means over items, per-item outputs: choice
    log-likelihoods, text log-likelihoods or verdicts) from the model's outputs. The scores are means weighted
    by the items' weights (all 1 but in a reduced set); the per-item values are unweighted."""
    weights = p.weights or None
    if isinstance(p, ChoiceSet):
        per_item = _per_item(p, outputs)
        return (score_multiple_choice(per_item, p.golds, p.choices, weights),
                multiple_choice_items(per_item, p.golds), per_item)
    if isinstance(p, TextSet):
        totals = [sum(x) for x in _per_item(p, outputs)]
        return score_perplexity(totals, p.texts, weights), {}, totals
    verdicts = [verdict(r, c, lang) for r, c, lang in zip(outputs, p.constraints, p.languages)]
    return score_instructions(verdicts, weights), instruction_items(verdicts), verdicts


def score_set(backend: HFBackend, p: PreparedSet) -> SetScores:
    """Score one prepared set with the backend's current weights."""
    return _scored(p, _outputs(backend, p))[0]


def score_set_items(backend: HFBackend, p: PreparedSet) -> tuple[SetScores, dict[str, list[float]]]:
    """`score_set` plus each item's value of the metrics that are means over items (none for perplexity sets,
    whose metrics are corpus ratios): what a paired bootstrap of two models on the same items needs."""
    scores, items, _ = _scored(p, _outputs(backend, p))
    return scores, items


def score_set_records(backend: HFBackend, p: PreparedSet) -> tuple[SetScores, list[dict]]:
    """`score_set` plus one JSON-ready record per item, to audit a score (`evomerge eval --per-item`): its id and
    the text it was scored after; for multiple choice each scored string's log-likelihood, the choice acc and
    acc_norm pick, gold and gold_prob; for instructions the response and each constraint's strict and loose
    verdict; for perplexity the text's log-likelihood (nats) and bytes."""
    return _records(p, _outputs(backend, p))


def _records(p: PreparedSet, outputs: list) -> tuple[SetScores, list[dict]]:
    scores, values, per_item = _scored(p, outputs)
    records: list[dict] = []
    if isinstance(p, ChoiceSet):
        picks = multiple_choice_picks(per_item, p.choices)
        for k, (lls, gold) in enumerate(zip(per_item, p.golds)):
            chosen, chosen_norm = picks[k]
            records.append({"set": p.name, "id": _at(p.item_ids, k), "prompt": _at(p.contexts, k),
                            "choices": list(p.choices[k]), "loglikelihoods": lls, "gold": gold, "chosen": chosen,
                            "chosen_norm": chosen_norm, "correct": chosen == gold, "correct_norm": chosen_norm == gold,
                            "gold_prob": values["gold_prob"][k]})
    elif isinstance(p, TextSet):
        for k, (text, ll) in enumerate(zip(p.texts, per_item)):
            records.append({"set": p.name, "id": _at(p.item_ids, k), "text": text, "loglikelihood": ll,
                            "bytes": len(text.encode("utf-8"))})
    else:
        for k, (response, v) in enumerate(zip(outputs, per_item)):
            records.append({"set": p.name, "id": _at(p.item_ids, k), "prompt": _at(p.contexts, k),
                            "response": response, "language": p.languages[k], "language_ok": v.language_ok,
                            "constraints": [{**c.to_json(), "strict": s, "loose": lo}
                                            for c, s, lo in zip(p.constraints[k], v.strict, v.loose)],
                            "correct": all(v.strict), "correct_loose": all(v.loose)})
    return scores, records


def _at(values: Sequence[str], k: int) -> str | None:
    return values[k] if k < len(values) else None


# each prepared kind's fields that hold one entry per item (`part` cuts them; requests go by `offsets`)
_PER_ITEM = {ChoiceSet: ("golds", "choices", "item_ids", "contexts", "weights"),
             TextSet: ("texts", "item_ids", "weights"),
             GenerationSet: ("prompts", "constraints", "languages", "item_ids", "contexts", "weights")}


def n_items(p: PreparedSet) -> int:
    """How many items a prepared set holds."""
    return len(p.prompts) if isinstance(p, GenerationSet) else len(p.offsets) - 1


def part(p: PreparedSet, lo: int, hi: int) -> PreparedSet:
    """Items [lo, hi) of a prepared set, as a prepared set of their own (the same requests, not re-tokenized)."""
    return take(p, range(lo, hi))


def take(p: PreparedSet, indices: Sequence[int]) -> PreparedSet:
    """The items at `indices` (in that order) of a prepared set, as a prepared set of their own."""
    cut = {f: tuple(getattr(p, f)[i] for i in indices) if getattr(p, f) else () for f in _PER_ITEM[type(p)]}
    if isinstance(p, GenerationSet):
        return replace(p, **cut)
    requests, offsets = [], [0]
    for i in indices:
        requests += p.requests[p.offsets[i]:p.offsets[i + 1]]
        offsets.append(len(requests))
    return replace(p, requests=tuple(requests), offsets=tuple(offsets), **cut)


def score_batches(backend: HFBackend, prepared: Sequence[PreparedSet],
                  batches: int) -> Iterator[tuple[int, dict[str, SetScores], dict[str, dict[str, list[float]]]]]:
    """Score the sets in `batches` batches, each a slice of every set (racing.py): after each batch that scored
    something, (items scored so far in all, each set's scores so far, each set's per-item values so far). Lazy:
    a batch is scored only when the next value is asked for. Run to the end it gives `score`'s scores (each
    item is computed as it is there; generation prompts shared between sets are shared within a batch)."""
    from evomerge.racing import batch_ends

    ends = [batch_ends(n_items(p), batches) for p in prepared]
    outputs: list[list] = [[] for _ in prepared]
    done = [0] * len(prepared)
    scored: list = [None] * len(prepared)  # each set's (scores, per-item values) so far
    for b in range(batches):
        todo = [k for k, p in enumerate(prepared) if ends[k][b] > done[k]]
        if not todo:
            continue
        fresh = _all_outputs(backend, [part(prepared[k], done[k], ends[k][b]) for k in todo])
        for k, out in zip(todo, fresh):  # only the sets this batch added to are scored again
            outputs[k] += out
            done[k] = ends[k][b]
            scored[k] = _scored(part(prepared[k], 0, done[k]), outputs[k])[:2]
        names = [p.name for p in prepared]
        yield sum(done), {n: s[0] for n, s in zip(names, scored)}, {n: s[1] for n, s in zip(names, scored)}


def score(backend: HFBackend, prepared: Sequence[PreparedSet],
          records: list[dict] | None = None) -> dict[str, SetScores]:
    """Score every prepared set with the backend's current weights, each distinct generation prompt generated
    once (`generations`); with a `records` list, each item's record (`score_set_records`) is appended to it."""
    outputs = _all_outputs(backend, prepared)
    if records is None:
        return {p.name: _scored(p, o)[0] for p, o in zip(prepared, outputs)}
    out = {}
    for p, o in zip(prepared, outputs):
        out[p.name], rows = _records(p, o)
        records += rows
    return out


def score_model_dir(model_dir: str, eval_sets: Sequence[str], split: str = "dev", max_items: int | None = None,
                    seed: int = 0, device: str = "cpu", dtype: str = "float32", batch_size: int = 32,
                    records: list[dict] | None = None) -> dict[str, SetScores]:
    """Score a model directory on eval sets (what `evomerge eval` runs), the same way a worker scores; with a
    `records` list, one record per item is appended to it (`score_set_records`)."""
    import torch

    sets = [load_evalset(p) for p in eval_sets]  # validate before the (slow) model load
    backend = HFBackend.load(model_dir, dtype=getattr(torch, dtype), device=device, batch_size=batch_size)
    prepared = [prepare(backend, es, split, max_items, seed) for es in sets]
    return score(backend, prepared, records)


def score_target(target: str | Path, eval_sets: Sequence[str], split: str = "dev", max_items: int | None = None,
                 seed: int = 0, device: str = "cpu", dtype: str = "float32", batch_size: int = 32,
                 backend: str = "hf", records: list[dict] | None = None) -> dict[str, SetScores]:
    """`evomerge eval`: score a model directory or a mergekit recipe YAML with backend `backend` (auto, hf or
    vllm; said on stderr unless hf was asked for). The Hugging Face backend merges a recipe into a temporary
    directory first; vLLM scores a directory as it is and merges a recipe in memory inside its engine. With a
    `records` list, one record per item is appended to it (`score_set_records`)."""
    sets = [load_evalset(p) for p in eval_sets]  # bad input fails here, before anything is started
    target = Path(target)
    if not target.is_dir() and (target.suffix not in (".yaml", ".yml") or not target.is_file()):
        raise UserError(str(target), "not a model directory or a recipe YAML", "pass a model dir or recipe.yaml")
    if backend != "hf":
        import sys

        from evomerge.backends.select import choose_backend, probe

        machine = probe()
        choice = choose_backend(backend, machine)
        print(choice, file=sys.stderr)
        if choice.name == "vllm":
            engine = _vllm_engine(target, dtype, machine)
            return score(engine, [prepare(engine, es, split, max_items, seed) for es in sets], records)
    if target.is_dir():
        return score_model_dir(str(target), eval_sets, split, max_items, seed, device, dtype, batch_size, records)
    from evomerge.merge import merge_to_disk
    from evomerge.recipe import load_recipe_yaml

    recipe = load_recipe_yaml(target)
    with tempfile.TemporaryDirectory(prefix="evomerge-eval-") as tmp:
        merge_to_disk(recipe, Path(tmp) / "model")
        return score_model_dir(str(Path(tmp) / "model"), eval_sets, split, max_items, seed, device, dtype,
                               batch_size, records)


def _vllm_engine(target: Path, dtype: str, machine):
    """A vLLM engine on a model directory, or on a recipe's template with the recipe merged in (no temporary
    model directory), sized by the memory plan of one worker."""
    from evomerge.backends.select import BackendChoice, plan_worker, start_backend
    from evomerge.backends.vllm import VLLMBackend
    from evomerge.hub import local_model_dir, model_config
    from evomerge.memplan import GiB
    from evomerge.recipe import load_recipe_yaml

    if target.is_dir():
        return VLLMBackend.load(target, dtype, kv_cache_bytes=None if machine.gpus else GiB)
    recipe = load_recipe_yaml(target)
    plan = plan_worker(BackendChoice("vllm", "eval"), recipe,
                       model_config(str(local_model_dir(recipe.inputs[0].model)), False), machine, 1)
    if not plan.fits:
        raise plan.refusal()
    engine, apply = start_backend("vllm", recipe, plan)
    apply(recipe)
    return engine


def format_scores(scores: Mapping[str, SetScores]) -> str:
    """A plain table: one line per eval set, every metric."""
    width = max((len(n) for n in scores), default=0)
    return "\n".join(f"{name:{width}s}  " + "  ".join(f"{k} {v:.4f}" for k, v in s.values.items()) + f"  n {s.n}"
                     for name, s in scores.items())
