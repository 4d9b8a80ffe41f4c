"""The text side of scoring, shared by both backends: text -> token ids (with lm-eval-harness 0.4's rules), the
chat template, the context/continuation split, and a generated answer's ids -> text (EOS, stop strings).

The rules are lm-eval-harness 0.4.13's (`HFLM.tok_encode`, `TemplateLM._encode_pair`, `TemplateLM.loglikelihood`
and the left truncation in `HFLM._loglikelihood_tokens`), so that a score here is the score lm-eval reports:

- A text is encoded with the tokenizer's own special tokens (a Llama-3, Mistral or Gemma tokenizer prepends its
  beginning-of-sequence token), except when the text already starts with that token's string (a chat template that
  writes `{{ bos_token }}`): then nothing is added, so BOS is never there twice.
- A context's trailing whitespace moves to the start of its continuation ("Answer: " + "B" is scored as
  "Answer:" + " B"); the pair is encoded whole and the context's own encoding is split off by its length.
- An empty context is the prefix token (BOS, else EOS) alone.
- Context + continuation longer than the model's length keeps its last `max_len + 1` tokens (left truncation); a
  generation prompt keeps its last `max_len - max_new_tokens`.

Only a tokenizer is needed (no model): the HF backend and the vLLM backend each hold one `Text`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Request:
    """Score `continuation` after `context` (token ids)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


class Text:
    """A tokenizer with the scoring rules around it: `eos_ids` end a generated answer, `max_len` is the longest
    input a forward takes (context + continuation minus the last token, as lm-eval counts it)."""

    def __init__(self, tokenizer, eos_ids: Iterable[int] = (), max_len: int = 2048) -> None:
        if max_len < 1:
            raise ValueError("max_len must be positive")
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None
                                             else frozenset())
        self.max_len = max_len

    @property
    def prefix_id(self) -> int:
        """The token an empty context stands for, and a rolling window's first context: BOS, else EOS
        (lm-eval's `prefix_token_id`)."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    # ---- text -> token ids ------------------------------------------------------------------------------------

    def tokens(self, text: str) -> list[int]:
        """Token ids of a text with no special tokens added (a piece of a longer text)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        """A whole input's token ids as lm-eval encodes it: the tokenizer's special tokens added (BOS for most
        tokenizers that have one), unless the text already starts with the prefix token's string (a chat template
        wrote it)."""
        starts_with_bos = text.startswith(self.tokenizer.decode([self.prefix_id]))
        return list(self.tokenizer(text, add_special_tokens=not starts_with_bos)["input_ids"])

    def encode(self, context: str, continuation: str) -> Request:
        """The request that scores `continuation` after `context`, split as lm-eval splits it: trailing whitespace
        of the context moved into the continuation, the whole text encoded and the context's encoding cut off by
        its length, an empty context replaced by the prefix token, then left truncation to `max_len`."""
        stripped = context.rstrip()
        continuation = context[len(stripped):] + continuation
        context = stripped
        if context:
            whole, ctx = self.encode_text(context + continuation), self.encode_text(context)
            ctx_ids, cont_ids = ctx, whole[len(ctx):]  # lm-eval's split (not whole[:len(ctx)])
        else:
            ctx_ids, cont_ids = [], self.tokens(continuation)
        if not ctx_ids:  # the first token needs something to be predicted from
            if cont_ids and cont_ids[0] == self.prefix_id:  # lm-eval: a continuation that starts with it keeps it
                ctx_ids, cont_ids = cont_ids[:1], cont_ids[1:]
            else:
                ctx_ids = [self.prefix_id]
        if len(cont_ids) > self.max_len:
            from evomerge.errors import UserError

            raise UserError(repr(continuation[:40]), f"a continuation of {len(cont_ids)} tokens is longer than the "
                            f"model's {self.max_len}", "shorten the choice (or score with a longer max length)")
        seq = (ctx_ids + cont_ids)[-(self.max_len + 1):]  # left truncation, as lm-eval's _loglikelihood_tokens
        return Request(tuple(seq[:len(seq) - len(cont_ids)]), tuple(cont_ids))

    def encode_prompt(self, text: str, max_new_tokens: int = 0) -> tuple[int, ...]:
        """A generation prompt's token ids, encoded like a context (the prefix token when the text is empty), its
        last `max_len - max_new_tokens` tokens when longer (lm-eval's left truncation in `generate_until`), so
        that prompt and answer fit the model (an answer as long as the model's length leaves the prompt its last
        `max_len`: a prompt is never cut to nothing)."""
        ids = self.encode_text(text) if text else [self.prefix_id]
        keep = self.max_len - max_new_tokens if max_new_tokens < self.max_len else self.max_len
        return tuple(ids[-keep:])

    def unknown_share(self, text: str) -> float:
        """The share of a text's tokens that are the tokenizer's unknown token (0.0 without one: byte-level
        tokenizers have no unknown token)."""
        unk = self.tokenizer.unk_token_id
        ids = self.tokens(text) if unk is not None else []
        return sum(t == unk for t in ids) / len(ids) if ids else 0.0

    def warn_unknown(self, name: str, texts: Sequence[str], share: float = 0.5) -> None:
        """Warn (once per set and tokenizer: Python's warning registry drops repeats) when most of a set's texts
        are mostly unknown tokens: the model cannot read them (wrong script or language for its tokenizer), so its
        scores on them measure nothing."""
        texts = list(texts)
        bad = sum(self.unknown_share(t) > share for t in texts)
        if texts and bad > len(texts) / 2:
            import warnings

            tok = getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__
            warnings.warn(f"eval set {name}: {bad} of {len(texts)} items are mostly unknown tokens "
                          f"({self.tokenizer.unk_token!r}) for the tokenizer of {tok}: its scores on them measure "
                          "nothing (check the set's language and script against the model's)", UserWarning,
                          stacklevel=2)

    # ---- chat template ----------------------------------------------------------------------------------------

    def chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Messages (role, content) through the model's chat template, ending with the assistant's prompt."""
        if not getattr(self.tokenizer, "chat_template", None):
            from evomerge.errors import UserError

            raise UserError("chat_template", "this model's tokenizer has no chat template",
                            "set chat_template: false in the eval set's card, or score an instruct model")
        return self.tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                                  add_generation_prompt=True)

    def chat_prompt(self, user_text: str) -> str:
        """One user turn wrapped in the model's chat template, ending with the assistant's generation prompt."""
        return self.chat([{"role": "user", "content": user_text}])

    # ---- generated ids -> answer ------------------------------------------------------------------------------

    def tail_has_stop(self, ids: Sequence[int], stop: Sequence[str]) -> bool:
        """Whether the last tokens of a growing answer already hold a stop string (decodes only the tail)."""
        tail = max((len(s) for s in stop), default=0) + 8
        text = self.tokenizer.decode(list(ids[-tail:]), skip_special_tokens=True)
        return any(s in text for s in stop)

    def answer(self, ids: Sequence[int], stop: Sequence[str] = ()) -> str:
        """A generated answer's text: its ids up to the first end-of-sequence token, decoded with special tokens
        skipped, cut before the first stop string."""
        ids = list(ids)
        cut = next((j for j, t in enumerate(ids) if t in self.eos_ids), len(ids))
        return cut_at_stop(self.tokenizer.decode(ids[:cut], skip_special_tokens=True), stop)


def model_max_len(config, tokenizer=None, default: int = 2048) -> int:
    """A model's longest input as lm-eval resolves it (`resolve_max_length`): the config's n_positions,
    max_position_embeddings or n_ctx (its text_config's first), else the tokenizer's model_max_length when set,
    else `default`."""
    for cfg in (getattr(config, "text_config", None), config):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**12:  # transformers' "unset" is a huge number
        return value
    return default


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cuts = [text.find(s) for s in stop if s in text]
    return text[:min(cuts)] if cuts else text
