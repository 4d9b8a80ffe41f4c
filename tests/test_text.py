"""evomerge/text.py: lm-eval-harness 0.4's tokenization rules on the tiny byte tokenizer (one token per byte, so
every expected id list is written out by hand), with and without a tokenizer that prepends BOS."""

from __future__ import annotations

import pytest

from evomerge.errors import UserError
from evomerge.text import Request, Text, model_max_len

from tiny_lm import make_tokenizer


@pytest.fixture(scope="module", params=[False, True], ids=["no-bos", "bos"])
def text(request) -> Text:
    return Text(make_tokenizer(bos=request.param), eos_ids=[], max_len=64)


def ids(text: Text, s: str) -> tuple[int, ...]:
    return tuple(text.tokens(s))


def bos(text: Text) -> tuple[int, ...]:
    """What the tokenizer itself prepends to a whole text."""
    return (text.prefix_id,) if text.tokenizer("a")["input_ids"][0] == text.prefix_id else ()


def test_bos_is_prepended_only_when_the_tokenizer_adds_one(text):
    r = text.encode("Q: hi\nA:", " yes")
    assert r == Request(bos(text) + ids(text, "Q: hi\nA:"), ids(text, " yes"))
    assert text.encode_prompt("Hi") == bos(text) + ids(text, "Hi")


def test_a_chat_template_that_writes_bos_gets_it_once(text):
    prompt = text.chat_prompt("hi")
    assert prompt.startswith("<s>")
    r = text.encode(prompt, " A")
    assert r.context.count(text.tokenizer.bos_token_id) == 1 and r.context[0] == text.tokenizer.bos_token_id
    assert text.encode_prompt(prompt).count(text.tokenizer.bos_token_id) == 1


def test_trailing_whitespace_of_the_context_moves_into_the_continuation(text):
    assert text.encode("Answer: ", "B") == text.encode("Answer:", " B")
    assert text.encode("Answer:\n\n", "B").continuation == ids(text, "\n\nB")


def test_an_empty_context_is_the_prefix_token(text):
    assert text.encode("", "Hola") == Request((text.prefix_id,), ids(text, "Hola"))


def test_context_and_continuation_are_left_truncated_to_the_model_length():
    short = Text(make_tokenizer(bos=True), max_len=5)
    r = short.encode("abcdefgh", " xy")
    assert r == Request(ids(short, "fgh"), ids(short, " xy"))  # 3 + 3 = max_len + 1 tokens: BOS and "abcde" cut
    with pytest.raises(UserError, match="longer than the model's 5"):
        short.encode("a", " abcdefgh")
    assert short.encode_prompt("abcdefgh", max_new_tokens=2) == ids(short, "fgh")  # prompt + answer fit max_len


def test_answer_stops_at_eos_and_before_the_first_stop_string():
    tok = make_tokenizer()
    end = tok.convert_tokens_to_ids("<|end|>")
    t = Text(tok, eos_ids=[end])
    gen = list(t.tokens("Bai.\nEz")) + [end] + list(t.tokens("more"))
    assert t.answer(gen) == "Bai.\nEz"
    assert t.answer(gen, stop=["\n", "."]) == "Bai"
    assert t.tail_has_stop(t.tokens("one two\n"), ["\n"]) and not t.tail_has_stop(t.tokens("one"), ["\n"])


def test_model_max_len_follows_lm_eval():
    from transformers import LlamaConfig

    assert model_max_len(LlamaConfig(max_position_embeddings=777)) == 777

    class Bare:  # no length in the config: the tokenizer's, else the default
        pass

    class Tok:
        model_max_length = 300

    assert model_max_len(Bare(), Tok()) == 300
    assert model_max_len(Bare(), None) == 2048
