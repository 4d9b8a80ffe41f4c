"""The miniature world, tokenizer, model build and eval sets (two tiny-scale builds; ~15 s on two cores)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from evomerge.miniature import world as w
from evomerge.miniature.build import build_miniature, is_built, read_build
from evomerge.miniature.evalsets import SETS, TRADEOFF_SETS, b_vocabulary, write_eval_sets, write_tradeoff_sets
from evomerge.miniature.tokenizer import ASSISTANT, END, SPECIAL_TOKENS, UNK, USER, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
MODELS = ("base", "instruct", "lang-xb")


@pytest.fixture
def built(miniature) -> Path:  # noqa: ANN001 - conftest's session-wide small-scale build
    return miniature.root


def _scale(built: Path) -> float:
    return json.loads((built / "BUILD.json").read_text())["scale"]


# -- world -------------------------------------------------------------------------------------------------


def test_world_is_deterministic_and_split() -> None:
    world = w.make_world(0)
    assert world == w.make_world(0)
    assert world != w.make_world(1)
    names = [c.name for c in world.countries] + [c.capital for c in world.countries]
    assert len(names) == len(set(names))
    assert world.by_role("eval") and world.by_role("train")
    assert set(world.by_role("eval")).isdisjoint(world.by_role("train"))


def test_languages_have_disjoint_vocabularies() -> None:
    a_words = set(w.DICTIONARY) | {w.ARTICLE_A}
    b_words = set(w.DICTIONARY.values())
    assert len(b_words) == len(w.DICTIONARY)  # the dictionary is one-to-one
    assert a_words.isdisjoint(b_words)


def test_every_generated_word_is_in_the_vocabulary() -> None:
    world = w.make_world(0)
    vocab = set(w.vocabulary(world))
    rng = random.Random(0)
    docs = w.pretraining_docs(world, rng, 300) + w.language_docs(world, rng, 100, "xb")
    docs += [p.question + " " + p.answer for lang in w.LANGUAGES for p in w.qa_pairs(world, lang)]
    missing = {word for doc in docs for word in doc.split()} - vocab
    assert not missing
    # B text never contains an A word and vice versa (names and markers are shared).
    a_only = (set(w.DICTIONARY) | {w.ARTICLE_A})
    b_docs = w.language_docs(world, rng, 100, "xb")
    assert not {word for doc in b_docs for word in doc.split()} & a_only


# -- tokenizer ---------------------------------------------------------------------------------------------


def test_tokenizer_round_trips_and_chat_template(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    world = w.make_world(0)
    tokenizer = build_tokenizer(world)
    assert tokenizer.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == list(SPECIAL_TOKENS)
    doc = w.pretraining_docs(world, random.Random(1), 1)[0]
    ids = tokenizer(doc)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == doc  # word level: no special tokens added, words joined by spaces

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "what is the capital of " + world.countries[0].name + " ?"}]
    text = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tokens = loaded.convert_ids_to_tokens(loaded(text)["input_ids"])
    assert tokens[:2] == ["<bos>", USER] and tokens[-2:] == [END, ASSISTANT]
    assert tokens.count("<bos>") == 1
    chat = loaded.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    assert list(chat["input_ids"]) == loaded(text)["input_ids"]  # one <bos>, whichever way a caller tokenizes
    # The chat-role tokens never occur in pre-training text.
    assert not {USER, ASSISTANT, END} & set(w.vocabulary(world))


# -- build -------------------------------------------------------------------------------------------------


def test_build_writes_loadable_models(built: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert is_built(built)
    paths = read_build(built)
    assert paths.base == built / "base" and paths.instruct == built / "instruct"
    assert paths.languages == {"xb": built / "lang-xb"}
    manifest = json.loads((built / "BUILD.json").read_text())
    assert manifest["seed"] == 0 and 0 < manifest["scale"] < 1
    for name in MODELS:
        directory = built / name
        for file in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
            assert (directory / file).is_file(), f"{name}/{file}"
        model = AutoModelForCausalLM.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        config = model.config
        assert config.hidden_size // config.num_attention_heads == 64
        assert getattr(config, "head_dim", 64) == 64
        assert config.vocab_size == len(tokenizer) and not config.tie_word_embeddings
        assert next(model.parameters()).dtype == torch.float32
        assert tokenizer.chat_template
        end_id = tokenizer.convert_tokens_to_ids(END)
        assert end_id in model.generation_config.eos_token_id


def test_models_differ_from_base(built: Path) -> None:
    from safetensors.torch import load_file

    base = load_file(built / "base" / "model.safetensors")
    for name in ("instruct", "lang-xb"):
        other = load_file(built / name / "model.safetensors")
        assert other.keys() == base.keys()
        assert any(not other[k].equal(base[k]) for k in base), name


def test_build_is_reused_and_deterministic(built: Path, tmp_path: Path) -> None:
    stamp = (built / "BUILD.json").stat().st_mtime_ns
    build_miniature(built, seed=0, scale=_scale(built))  # same seed and scale: returns without rebuilding
    assert (built / "BUILD.json").stat().st_mtime_ns == stamp

    again = tmp_path / "again"
    build_miniature(again, seed=0, scale=_scale(built))
    for name in MODELS:
        first = (built / name / "model.safetensors").read_bytes()
        assert (again / name / "model.safetensors").read_bytes() == first, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary dirs left behind


def test_a_build_of_an_older_format_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    (stale / "base").mkdir(parents=True)
    (stale / "BUILD.json").write_text(json.dumps({"format": 0, "seed": 0, "scale": 0.01, "paths": {}}))
    assert not is_built(stale)
    build_miniature(stale, seed=0, scale=0.01)  # a stale cache: rebuilt, not refused
    assert is_built(stale) and json.loads((stale / "BUILD.json").read_text())["format"] > 0


def test_incomplete_or_foreign_dirs(tmp_path: Path) -> None:
    half = tmp_path / "half"
    (half / "base").mkdir(parents=True)
    assert not is_built(half)  # no BUILD.json: never taken as complete
    with pytest.raises(FileExistsError):
        build_miniature(half, seed=0, scale=0.01)  # not ours to delete
    (half / "BUILD.json").write_text("{not json")
    assert not is_built(half)


# -- eval sets ---------------------------------------------------------------------------------------------


def _read_set(directory: Path) -> tuple[dict, list[dict]]:
    card = yaml.safe_load((directory / "card.yaml").read_text())
    items = [json.loads(line) for line in (directory / "items.jsonl").read_text().splitlines()]
    return card, items


def test_eval_sets_are_well_formed(tmp_path: Path) -> None:
    world = w.make_world(0)
    tokenizer = build_tokenizer(world)
    countries = {c.name: c for c in world.countries}
    written = write_eval_sets(tmp_path, seed=0, n_dev=24, n_holdout=300)
    assert [p.name for p in written] == list(SETS)
    parsed = {p.name: _read_set(p) for p in written}
    for name, (card, items) in parsed.items():
        language = SETS[name]
        assert card == {
            "name": name, "language": language, "kind": "multiple_choice", "metric": "gold_prob",
            "chat_template": True, "prompt": "{question}", "target_delimiter": "", "few_shot": 0,
            "source": "generated by evomerge.miniature (seed 0)", "license": "CC0-1.0",
        }
        assert [i["split"] for i in items].count("dev") == 24
        assert [i["split"] for i in items].count("holdout") == 300
        assert len({i["id"] for i in items}) == len(items)
        split_of: dict[str, set[str]] = {}
        for item in items:
            assert item["id"].startswith(language + "-")
            assert set(item) == {"id", "split", "question", "choices", "gold"}
            assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
            assert 0 <= item["gold"] < 4
            country = next(word for word in item["question"].split() if word in countries)
            assert countries[country].role == "eval"  # the instruct model never trained on it
            split_of.setdefault(country, set()).add(item["split"])
            fact = next(f for f in w.FACTS if w.question(countries[country], f, language) == item["question"])
            assert item["choices"][item["gold"]] == w.answer(countries[country], fact, language)
            text = " ".join([card["prompt"].format(**item), *item["choices"]])
            assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text
            assert UNK not in text
        assert all(len(s) == 1 for s in split_of.values())  # no country straddles dev and holdout
    # The two sets are parallel: same gold positions, same splits.
    xb, xa = parsed["mini_xb_facts"][1], parsed["mini_xa_chat"][1]
    assert [(i["split"], i["gold"]) for i in xb] == [(i["split"], i["gold"]) for i in xa]


def test_tradeoff_sets_are_well_formed(tmp_path: Path) -> None:
    from evomerge.evalsets import load_evalset
    from evomerge.verifiers import check, vocabulary_share

    world = w.make_world(0)
    tokenizer = build_tokenizer(world)
    countries = {c.name: c for c in world.countries}
    written = write_tradeoff_sets(tmp_path, seed=0, n_dev=24, n_holdout=300)
    assert [p.name for p in written] == list(TRADEOFF_SETS)
    split_of: dict[str, set[str]] = {}
    for directory in written:
        es = load_evalset(directory)
        assert es.card.language == TRADEOFF_SETS[es.name]
        counts = {s: sum(it.split == s for it in es.items) for s in ("dev", "holdout")}
        per = 1 if es.card.kind == "instruction" else 2 / 3  # 3 questions or 2 paragraphs per country
        assert counts == {"dev": 24 * per, "holdout": 300 * per}
        for it in es.items:
            text = it.prompt(es.card)
            country = next(word for word in text.split() if word in countries)
            assert countries[country].role == "eval"
            split_of.setdefault(country, set()).add(it.split)
            assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text
            if es.card.kind == "instruction":
                # the reference keeps every constraint; the other language's answer breaks at least one
                assert all(check(c, it.reference) for c in it.constraints), it
                fact = next(f for f in w.FACTS if w.question(countries[country], f, es.card.language) == text)
                other = w.answer(countries[country], fact, "xa" if es.card.language == "xb" else "xb")
                assert not all(check(c, other) for c in it.constraints), (it, other)
    assert all(len(s) == 1 for s in split_of.values())  # no country straddles dev and holdout, in any set
    # the multiple-choice sets split the countries the same way
    for directory in write_eval_sets(tmp_path / "mc", seed=0):
        for it in load_evalset(directory).items:
            country = next(word for word in it.fields["question"].split() if word in countries)
            assert split_of[country] == {it.split}
    assert vocabulary_share("hiribu Tamsk da .", b_vocabulary()) == 1.0  # names count for neither side
    assert vocabulary_share("the capital is Tamsk .", b_vocabulary()) == 0.0
    assert vocabulary_share("ko hiribu is the", b_vocabulary()) == 0.5
    assert vocabulary_share("Tamsk .", b_vocabulary()) == 0.0


def test_committed_eval_sets_match_the_generator(tmp_path: Path) -> None:
    for directory in [*write_eval_sets(tmp_path, seed=0), *write_tradeoff_sets(tmp_path, seed=0)]:
        committed = REPO / "eval_sets" / directory.name
        for file in ("card.yaml", "items.jsonl"):
            assert (committed / file).read_text() == (directory / file).read_text(), f"{directory.name}/{file}"


def test_too_many_items_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="countries"):
        write_eval_sets(tmp_path, n_dev=24, n_holdout=310)


def test_two_process_pretraining_gives_the_weights_of_one_process() -> None:
    """parallel.py: two ranks (gloo on the loopback interface) and one process computing both slices in turn take
    the same steps bit for bit, so a build's weights do not depend on the machine's core count; the ranks listen on
    the loopback interface only."""
    import copy
    import os
    import threading
    import time

    import torch
    from listeners import is_loopback, listeners, process_tree
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge.miniature.build import MODEL_SHAPE
    from evomerge.miniature.parallel import Ranks, pretrain
    from evomerge.miniature.train import TrainConfig

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, **MODEL_SHAPE)).to(torch.float32)
    blocks = torch.randint(0, 50, (24, 16), generator=torch.Generator().manual_seed(1))
    config = TrainConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=1)
    later = TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, seed=2)  # a second run, as lang-xb's
    one, two = copy.deepcopy(model), copy.deepcopy(model)
    losses_one = pretrain(one, blocks, config)
    one_later = copy.deepcopy(one)
    losses_one_later = pretrain(one_later, blocks, later)
    seen: set[tuple[str, str]] = set()
    done = threading.Event()

    def sample() -> None:  # every listener the ranks open, sampled while they run
        while not done.is_set():
            seen.update(listeners(process_tree(os.getpid()) - {os.getpid()}))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with Ranks.start() as ranks:  # the build's two runs on the same two ranks
            losses_two = pretrain(two, blocks, config, ranks=ranks)
            two_later = copy.deepcopy(two)
            losses_two_later = pretrain(two_later, blocks, later, ranks=ranks)
            processes = ranks.processes
    finally:
        done.set()
        sampler.join()
    assert all(p.returncode == 0 for p in processes)  # told to stop, they exited cleanly
    assert seen and all(is_loopback(addr) for _, addr in seen), sorted(seen)
    assert losses_one == losses_two and len(losses_one) == 4
    assert losses_one_later == losses_two_later and len(losses_one_later) == 3
    for a, b in zip(one_later.state_dict().values(), two_later.state_dict().values()):
        assert torch.equal(a, b)
    moved = False
    for (name, a), b, start in zip(one.state_dict().items(), two.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b), name
        moved |= not torch.equal(a, start)
    assert moved


def test_a_failed_rank_stops_the_run_with_its_log() -> None:
    """A rank that dies (here: token ids beyond the vocabulary) stops the other one and the run, naming the rank
    and quoting its log, instead of leaving the other rank waiting for it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge.miniature.build import MODEL_SHAPE
    from evomerge.miniature.parallel import Ranks, pretrain
    from evomerge.miniature.train import TrainConfig

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, **MODEL_SHAPE)).to(torch.float32)
    blocks = torch.full((8, 16), 99)  # every id beyond the 50-token vocabulary
    with Ranks.start() as ranks:
        with pytest.raises(RuntimeError, match=r"(?s)rank \d exited with .*IndexError"):
            pretrain(model, blocks, TrainConfig(steps=2, batch_size=4, lr=1e-2, warmup_steps=1), ranks=ranks)
        processes = ranks.processes
    assert all(p.poll() is not None for p in processes)
