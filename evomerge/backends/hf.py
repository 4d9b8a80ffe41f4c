"""Hugging Face transformers backend on CPU or GPU: batched continuation log-likelihoods, rolling log-likelihoods of
whole texts, greedy generation with stop strings. Text -> token ids and back is `self.text` (evomerge/text.py, the
same rules as the vLLM backend's).

Everything takes token ids that the caller prepared once (evaluation.prepare); the per-candidate path only runs
the model. The weights may be rewritten in place between calls (worker.py merges into `parameters()`).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
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


@dataclass
class Usage:
    """What the model computed since the counts were last reset: forwards, input tokens (cached ones not
    counted; in generation the prompt's tokens and each new token fed back) and the padded cells of the scoring
    inputs (rows x width)."""

    forwards: int = 0
    tokens: int = 0
    padded: int = 0


# A worker's forward on a CPU: at most this many rows and rows x longest row tokens. A forward's fixed cost (Python
# and per-layer dispatch) outweighs a small model's arithmetic, so more rows per forward pay: on the miniature a
# 300-item holdout point took 2.43 s at 32 rows and 1.58 s at 128, every item's score the same. The token cap keeps
# a large model's logits (tokens x vocabulary) bounded. On a GPU the memory plan sets the cap.
CPU_BATCH_ROWS = 128
CPU_BATCH_TOKENS = 8192


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
        self.share_context = True  # a context followed by several continuations is computed once (`_shared`)
        self.usage = Usage()
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

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
        With `share_context`, a context that several different continuations follow (a multiple-choice item's
        choices) is computed once and its continuations on top of its cached keys and values (`_shared`); the
        other rows go through `_rows` as whole sequences. Both give the same log-likelihoods (within float
        rounding: tests/test_shared_context.py).
        """
        for r in requests:
            if not r.context or not r.continuation:
                raise ValueError("a request needs a non-empty context and continuation")
        rows_of: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
        for r in requests:
            rows_of.setdefault(r.context, set()).add(r.continuation[:-1])
        shared = {c for c, rows in rows_of.items() if len(rows) > 1} if self.share_context else set()
        out = [0.0] * len(requests)
        split = ([i for i, r in enumerate(requests) if r.context in shared],
                 [i for i, r in enumerate(requests) if r.context not in shared])
        for part, score in zip(split, (self._shared, self._rows)):
            if part:
                for i, v in zip(part, score([requests[i] for i in part])):
                    out[i] = v
        return out

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor | int, **kwargs):
        """One model forward on padded rows, counted in `usage`; logits of positions `keep` (a range, or the last
        `keep` positions) -> [rows, kept, vocab], and the model's output (its cache when one was asked for)."""
        self.usage.forwards += 1
        self.usage.tokens += int(mask.sum())
        self.usage.padded += mask.numel()
        if self._keep:
            kwargs["logits_to_keep"] = keep
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        logits = out.logits
        if not self._keep:
            logits = logits[:, -keep:] if isinstance(keep, int) else logits[:, keep]
        return logits, out

    def _rows(self, requests: Sequence[Request]) -> list[float]:
        """Each distinct context + continuation as one row (minus its last token), right-padded, batched longest
        first (less padding, and the first batch shows at once whether memory suffices); only the positions that
        predict continuation tokens go through the output head and the log-softmax."""
        rows: dict[tuple[int, ...], int] = {}
        row_of = [rows.setdefault((r.context + r.continuation)[:-1], len(rows)) for r in requests]
        inputs = list(rows)
        members: list[list[int]] = [[] for _ in inputs]
        for i, row in enumerate(row_of):
            members[row].append(i)
        order = sorted(range(len(inputs)), key=lambda k: -len(inputs[k]))
        out = [0.0] * len(requests)
        for batch in self._batches(order, [len(x) for x in inputs]):
            ids, mask = pad_batch([inputs[k] for k in batch], self._pad)
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
            logits, _ = self._forward(ids, mask, torch.arange(lo, hi, device=self.device))
            # logits: [batch, hi - lo, vocab]
            for i, v in zip(reqs, self._sums(logits, b_idx, [p - lo for p in p_idx], target, owner, len(reqs))):
                out[i] = v
        return out

    def _shared(self, requests: Sequence[Request]) -> list[float]:
        """Contexts computed once, their continuations on top of the cached keys and values.

        A batch of contexts is left-padded (every context ends at the last column, whose logits predict each
        continuation's first token) with explicit positions, as `generate` does, and returns its cache. Each
        distinct continuation minus its last token is then a row on its context's cache rows (selected per row),
        right-padded, at positions that continue its context's. Token cap: a context batch counts rows x (longest
        context + its longest continuation), a continuation batch rows x (context width + longest row).
        """
        contexts: dict[tuple[int, ...], int] = {}
        for r in requests:
            contexts.setdefault(r.context, len(contexts))
        ctx_list = list(contexts)
        suffixes: list[dict[tuple[int, ...], int]] = [{} for _ in ctx_list]  # per context: its rows to run
        for r in requests:
            if len(r.continuation) > 1:
                rows = suffixes[contexts[r.context]]
                rows.setdefault(r.continuation[:-1], len(rows))
        longest = [max((len(s) for s in rows), default=0) for rows in suffixes]
        order = sorted(range(len(ctx_list)), key=lambda g: -(len(ctx_list[g]) + longest[g]))
        by_ctx: list[list[int]] = [[] for _ in ctx_list]
        for i, r in enumerate(requests):
            by_ctx[contexts[r.context]].append(i)
        out = [0.0] * len(requests)
        for batch in self._batches(order, [len(c) + m for c, m in zip(ctx_list, longest)]):
            ids, mask = pad_batch([ctx_list[g] for g in batch], self._pad, left=True)
            width = ids.shape[1]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            first_logits, fwd = self._forward(ids, mask, 1, position_ids=positions.to(self.device), use_cache=True)
            cache = fwd.past_key_values
            # each request's first token, from its context's last column: first_logits [batch, 1, vocab]
            reqs = [i for g in batch for i in by_ctx[g]]
            col = {g: b for b, g in enumerate(batch)}
            firsts = self._sums(first_logits, [col[contexts[requests[i].context]] for i in reqs], [0] * len(reqs),
                                [requests[i].continuation[0] for i in reqs], list(range(len(reqs))), len(reqs))
            for i, v in zip(reqs, firsts):
                out[i] = v
            # the continuations' other tokens: rows of (context column, suffix)
            rows = [(b, s) for b, g in enumerate(batch) for s in suffixes[g]]
            rows.sort(key=lambda row: -len(row[1]))
            for chunk in self._batches(list(range(len(rows))), [width + len(s) for _, s in rows]):
                self._continue(requests, [rows[k] for k in chunk], batch, by_ctx, suffixes, cache, mask, out)
            del cache, fwd
        return out

    def _continue(self, requests, rows, batch, by_ctx, suffixes, cache, ctx_mask, out) -> None:
        """Run suffix rows [(context column, suffix)] on the contexts' cached keys and values and add each
        request's log-probabilities of its continuation's tokens after the first to `out`."""
        cols = torch.tensor([b for b, _ in rows], device=self.device)
        ids, mask = pad_batch([s for _, s in rows], self._pad)
        lengths = ctx_mask.sum(-1)[cols.cpu()]
        positions = lengths[:, None] + torch.arange(ids.shape[1])[None, :]
        sub = _select_rows(cache, cols)  # the contexts' keys and values, one copy per row: [rows, heads, width, dim]
        self.usage.tokens -= int(ctx_mask[cols.cpu()].sum())  # cached, not computed again (the mask covers both)
        logits, _ = self._forward(ids, torch.cat([ctx_mask[cols.cpu()], mask], 1), ids.shape[1],
                                  position_ids=positions.to(self.device), past_key_values=sub, use_cache=True)
        del sub
        b_idx, p_idx, target, owner, reqs = [], [], [], [], []
        for k, (b, s) in enumerate(rows):
            for i in by_ctx[batch[b]]:
                cont = requests[i].continuation
                if cont[:-1] == s:
                    b_idx += [k] * (len(cont) - 1)
                    p_idx += range(len(cont) - 1)  # suffix position j predicts cont[j + 1]
                    target += cont[1:]
                    owner += [len(reqs)] * (len(cont) - 1)
                    reqs.append(i)
        for i, v in zip(reqs, self._sums(logits, b_idx, p_idx, target, owner, len(reqs))):
            out[i] += v

    def _sums(self, logits: torch.Tensor, b_idx, p_idx, target, owner, n: int) -> list[float]:
        """Per owner, the sum of log-probabilities of `target` tokens at (row, kept position) of `logits`
        [rows, kept, vocab]: the log-softmax in float32 over the picked positions only, summed in float64."""
        dev = self.device
        picked = logits[torch.tensor(b_idx, device=dev), torch.tensor(p_idx, device=dev)]  # [n_targets, vocab]
        logp = torch.log_softmax(picked.float(), dim=-1)
        tok_lp = logp.gather(1, torch.tensor(target, device=dev)[:, None]).squeeze(1)
        sums = torch.zeros(n, dtype=torch.float64, device=dev)
        sums.index_add_(0, torch.tensor(owner, device=dev), tok_lp.double())
        return sums.tolist()

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

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        """Greedy continuations of prompts (token ids): at most max_new_tokens, ended by an end-of-sequence token
        or cut before the first stop string."""
        return [self.text.answer(ids, stop) for ids in self.generate_ids(prompts, max_new_tokens, stop)]

    @torch.inference_mode()
    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     stop: Sequence[str] = ()) -> list[list[int]]:
        """The generated token ids of greedy continuations (at most max_new_tokens; a row stops once it holds a
        stop string or an end-of-sequence token, and may be padded after it): `self.text.answer` makes the text.
        Batched longest first with left padding."""
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
        out: list[list[int]] = [[] for _ in prompts]
        for batch in self._batches(order, [len(p) + max_new_tokens for p in prompts]):
            width = len(prompts[batch[0]])
            ids, mask = pad_batch([list(prompts[i]) for i in batch], pad, left=True)
            criteria = StoppingCriteriaList([StopStrings(width)]) if stop else None
            gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=config, stopping_criteria=criteria)
            for b, i in enumerate(batch):
                out[i] = gen[b, width:].tolist()
            self.usage.forwards += gen.shape[1] - width  # one forward per new token (the prompt's in the first)
            self.usage.tokens += int(mask.sum()) + len(batch) * max(0, gen.shape[1] - width - 1)
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


def _select_rows(cache, rows: torch.Tensor):
    """A copy of a model's key/value cache holding batch rows `rows` (in that order, repeats allowed); the cache
    given is left as it was (each layer's tensors are replaced in the copy, never written in place)."""
    sub = copy.copy(cache)
    sub.layers = [copy.copy(layer) for layer in cache.layers]
    sub.batch_select_indices(rows)
    return sub
