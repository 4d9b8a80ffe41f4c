"""Hugging Face transformers backend: batched continuation log-likelihoods on CPU or GPU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch


@dataclass(frozen=True)
class Request:
    """Score `continuation` after `context` (token ids)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


class HFBackend:
    """A causal LM and its tokenizer; the model's parameters may be rewritten in place between calls."""

    def __init__(self, model: "torch.nn.Module", tokenizer, batch_size: int = 32) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> "HFBackend":
        """Load a model directory (safetensors only, no remote code)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=False).to(device)
        model.eval()
        return cls(model, tok)

    def parameters(self) -> dict[str, torch.Tensor]:
        """The live weights by checkpoint name (for in-place merges)."""
        return {name: p.data for name, p in self.model.named_parameters()}

    def encode(self, context: str, continuation: str) -> Request:
        """Tokenize the way lm-eval-harness does: encode the whole text and split off the context's tokens, so
        tokens that merge across the boundary belong to the continuation."""
        tok = self.tokenizer
        whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        cut = len(ctx)
        while cut > 0 and whole[:cut] != ctx[:cut]:
            cut -= 1
        ctx_ids, cont_ids = whole[:cut], whole[cut:]
        if not ctx_ids:  # the first token needs something to be predicted from
            bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            ctx_ids = [bos]
        return Request(tuple(ctx_ids), tuple(cont_ids))

    def chat_prompt(self, user_text: str) -> str:
        """One user turn wrapped in the model's chat template, ending with the assistant's generation prompt."""
        return self.tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                                  add_generation_prompt=True)

    @torch.inference_mode()
    def loglikelihoods(self, requests: Sequence[Request]) -> list[float]:
        """Sum of log-probabilities of each continuation given its context. Batches are formed longest first
        (less padding); padding is on the right, so positions and attention need no adjustment."""
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i].context) + len(requests[i].continuation)))
        out = [0.0] * len(requests)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            seqs = [list(requests[i].context + requests[i].continuation)[:-1] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, :len(s)] = torch.tensor(s)
                mask[row, :len(s)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)  # [batch, width, vocab]
            for row, i in enumerate(idx):
                req = requests[i]
                first = len(req.context) - 1  # position whose output predicts the first continuation token
                target = torch.tensor(req.continuation, device=self.device)
                pos = torch.arange(first, first + len(target), device=self.device)
                out[i] = float(logp[row, pos, target].sum())
        return out
