"""Hugging Face transformers backend on CPU or GPU: batched continuation log-likelihoods, rolling log-likelihoods of
whole texts, greedy generation with stop strings. Text -> token ids and back is `self.text` (evomerge/text.py, the
same rules as the vLLM backend's).

Everything takes token ids that the caller prepared once (evaluation.prepare); the per-candidate path only runs
the model. The weights may be rewritten in place between calls (worker.py merges into `parameters()`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Sequence

import torch

from evomerge.text import Request, Text, model_max_len  # noqa: F401  (Request: re-exported for callers)


def rolling_windows(tokens: Sequence[int], prefix: int, max_len: int) -> list[Request]:
    """Disjoint windows covering `tokens` as lm-eval-harness's `loglikelihood_rolling` makes them (context_len 1):
    the first window predicts up to max_len tokens from `prefix`, each later one predicts the next max_len tokens
    from the one token before them (the last window takes more context when it is short)."""
    if max_len < 1:
        raise ValueError("max_len must be positive")
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_len, len(tokens))
    out = [Request((prefix,), tuple(tokens[:first]))]  # input: prefix + tokens[:first - 1]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, max_len)
        end = predicted + n
        inputs = tokens[max(0, end - max_len - 1): end - 1]
        context = inputs[: len(inputs) - (n - 1)]
        out.append(Request(tuple(context), tuple(tokens[end - n: end])))
        predicted = end
    return out


class HFBackend:
    """A causal LM and its tokenizer; the model's parameters may be rewritten in place between calls."""

    def __init__(self, model: "torch.nn.Module", tokenizer, batch_size: int = 32,
                 max_batch_tokens: int | None = None) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_batch_tokens = max_batch_tokens  # rows x longest row of one forward, at most (the memory plan's)
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
        self.text = Text(tokenizer, eos if isinstance(eos, list) else [eos] if eos is not None else [],
                         model_max_len(model.config, tokenizer))
        self._keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
             batch_size: int = 32, max_batch_tokens: int | None = None) -> "HFBackend":
        """Load a model directory (safetensors only, no remote code). A forward takes at most `batch_size` rows
        and, when given, at most `max_batch_tokens` tokens (rows x the longest row, padding included)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=False).to(device)
        model.eval()
        return cls(model, tok, batch_size, max_batch_tokens)

    def parameters(self) -> dict[str, torch.Tensor]:
        """The live weights by checkpoint name (for in-place merges)."""
        return {name: p.data for name, p in self.model.named_parameters()}

    def rolling_requests(self, text: str, max_len: int | None = None) -> list[Request]:
        """A whole text as disjoint windows whose log-likelihoods sum to the text's (for bits per byte)."""
        return rolling_windows(self.text.tokens(text), self.text.prefix_id, max_len or min(self.text.max_len, 2048))

    # ---- the model (per candidate) ----------------------------------------------------------------------------

    @torch.inference_mode()
    def loglikelihoods(self, requests: Sequence[Request]) -> list[float]:
        """Sum of log-probabilities of each continuation given its context.

        Requests with the same input tokens share one row (letter-form choices after one prompt cost one row).
        Rows are batched longest first (less padding, and the first batch shows at once whether memory suffices);
        padding is on the right, so positions and attention need no adjustment. Only the positions that predict
        continuation tokens go through the output head and the log-softmax.
        """
        rows: dict[tuple[int, ...], int] = {}
        row_of = []
        for r in requests:
            if not r.context or not r.continuation:
                raise ValueError("a request needs a non-empty context and continuation")
            seq = (r.context + r.continuation)[:-1]
            row_of.append(rows.setdefault(seq, len(rows)))
        inputs = list(rows)
        members: list[list[int]] = [[] for _ in inputs]
        for i, row in enumerate(row_of):
            members[row].append(i)
        order = sorted(range(len(inputs)), key=lambda k: -len(inputs[k]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = [0.0] * len(requests)
        for batch in self._batches(order, [len(x) for x in inputs]):
            ids, mask = pad_batch([inputs[k] for k in batch], pad)
            # which (row, position) predicts which target token, for every request of the batch
            b_idx, p_idx, target, owner, reqs = [], [], [], [], []
            for b, k in enumerate(batch):
                for i in members[k]:
                    r = requests[i]
                    first = len(r.context) - 1  # position whose output predicts the first continuation token
                    n = len(r.continuation)
                    b_idx += [b] * n
                    p_idx += range(first, first + n)
                    target += r.continuation
                    owner += [len(reqs)] * n
                    reqs.append(i)
            lo, hi = min(p_idx), max(p_idx) + 1
            kwargs = {"logits_to_keep": torch.arange(lo, hi, device=self.device)} if self._keep else {}
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs).logits
            if not self._keep:
                logits = logits[:, lo:hi]
            # logits: [batch, hi - lo, vocab]; picked: [n_targets, vocab]
            picked = logits[torch.tensor(b_idx, device=self.device), torch.tensor(p_idx, device=self.device) - lo]
            logp = torch.log_softmax(picked.float(), dim=-1)
            tok_lp = logp.gather(1, torch.tensor(target, device=self.device)[:, None]).squeeze(1)
            sums = torch.zeros(len(reqs), dtype=torch.float64, device=self.device)
            sums.index_add_(0, torch.tensor(owner, device=self.device), tok_lp.double())
            for i, v in zip(reqs, sums.tolist()):
                out[i] = v
        return out

    def _batches(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        """Rows in `order` (longest first) cut into batches of at most `batch_size` rows and, with a token cap, at
        most `max_batch_tokens` tokens (rows x the first, longest row; a row longer than the cap goes alone)."""
        batches: list[list[int]] = []
        for k in order:
            last = batches[-1] if batches else None
            if last is None or len(last) >= self.batch_size or (
                    self.max_batch_tokens is not None and (len(last) + 1) * lengths[last[0]] > self.max_batch_tokens):
                batches.append([k])
            else:
                last.append(k)
        return batches

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        """Greedy continuations of prompts (token ids): at most max_new_tokens, ended by an end-of-sequence token
        or cut before the first stop string. Batched longest first with left padding."""
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        text, eos_ids = self.text, self.text.eos_ids
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (
            min(eos_ids) if eos_ids else 0)
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=sorted(eos_ids) or None, pad_token_id=pad)

        class StopStrings(StoppingCriteria):
            def __init__(self, width: int) -> None:
                self.width = width

            def __call__(self, input_ids, scores, **kwargs):  # -> bool per row
                new = input_ids[:, self.width:].tolist()
                return torch.tensor([text.tail_has_stop(row, stop) for row in new], device=input_ids.device)

        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out = [""] * len(prompts)
        for batch in self._batches(order, [len(p) + max_new_tokens for p in prompts]):
            width = len(prompts[batch[0]])
            ids, mask = pad_batch([list(prompts[i]) for i in batch], pad, left=True)
            criteria = StoppingCriteriaList([StopStrings(width)]) if stop else None
            gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=config, stopping_criteria=criteria)
            for b, i in enumerate(batch):
                out[i] = text.answer(gen[b, width:].tolist(), stop)
        return out


def pad_batch(seqs, pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows -> (ids, attention mask), padded to the longest row: on the right for scoring (positions need
    no shift), on the left for generation (every row ends where generation starts)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[b, cols] = torch.tensor(list(seq), dtype=torch.long)
        mask[b, cols] = 1
    return ids, mask
