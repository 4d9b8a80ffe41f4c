"""A word-level Hugging Face tokenizer over a miniature world's vocabulary, with a chat template.

Token ids: the special tokens first, in `SPECIAL_TOKENS` order, then the world's words sorted. The chat-role
tokens never appear in pre-training, so only the instruct fine-tune gives them meaning (as in real models,
where the base has never seen the chat markup).

Beginning of sequence: the tokenizer adds no special tokens by itself; the chat template starts with
`<bos>`. So `tokenizer(apply_chat_template(..., tokenize=False))`, `apply_chat_template(..., tokenize=True)` and
vLLM's chat path all give the same ids with exactly one `<bos>`. Pre-training sequences were packed
"<bos> doc <eos> <bos> doc <eos> ..." and cut into blocks, so the models also know text with no `<bos>`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evomerge.miniature.world import World, vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, USER, ASSISTANT, END)

# Turns are "<|user|> ... <|end|>" and "<|assistant|> ... <|end|>"; the generation prompt is "<|assistant|>".
# Spaces between markers and words do not matter to a word-level tokenizer; they keep decoded text readable.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|> ' + message['content'] + ' <|end|> ' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|> ' + message['content'] + ' <|end|> ' }}"
    "{% else %}{{ raise_exception('only user and assistant roles are supported') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tokenizer(world: World) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` for `world`: WordLevel model, whitespace pre-tokenizer, chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = vocabulary(world)
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # World texts separate every word and punctuation mark by spaces, so splitting on whitespace alone is
    # exact; Whitespace (which also splits at punctuation) agrees on every text the world produces.
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT, END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    return tokenizer
