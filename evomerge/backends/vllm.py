"""vLLM backend: one engine per worker, candidates swapped into it in place; prompt log-probs and batched greedy
generation with the same interface as `backends/hf.py`.

How a candidate reaches the running engine (no engine restart, no private attribute of vLLM):

    VLLMBackend (the Ray worker)                   vLLM's worker: the same process with one rank, else one
                                                   process per tensor-parallel rank
    ----------------------------                   -------------------------------------------------------
    VLLMBackend.start(template)
      LLM(worker_extension_cls=MergeExtension) ->  MergeExtension is mixed into vLLM's worker class
      collective_rpc("evomerge_init", template) -> ResidentMerge: sources prepared once (deltas resident)
    backend.apply(recipe)
      collective_rpc("evomerge_apply", recipe) ->  ResidentMerge.merged(recipe): the merged tensors one by one
                                                   (the kernels of merge_to_disk), streamed into
                                                   Worker.reload_weights(iterator): vLLM's public in-place
                                                   reload (shards, fuses qkv, repacks)
      llm.reset_prefix_cache()                     (cached prefixes hold the previous weights' keys and values)

Tensor parallelism: every rank builds the full merged tensors and `reload_weights` keeps that rank's shard, so
each rank holds the full sources (memory plan: `memplan.plan_memory`, `tensor_parallel`). Simple and exact, at
`tp` times the source memory of a sharded merge.

The text side (tokenization, chat template, lm-eval-style context/continuation split) is the Hugging Face
backend's own code, so both backends score identical token ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from evomerge.backends.hf import HFBackend, Request, rolling_windows

EXTENSION = "evomerge.backends.vllm.MergeExtension"


class MergeExtension:
    """Methods mixed into vLLM's worker (`worker_extension_cls`), called through `LLM.collective_rpc`.

    They run next to the model runner, in the worker process of each rank. Names start with `evomerge_` so they
    cannot clash with the worker's own attributes (vLLM refuses an extension that shadows one).
    """

    def evomerge_init(self, recipe: Mapping[str, Any], sources_on: str = "device") -> None:
        """Prepare the sources of `recipe` (its models and method) once.

        sources_on: "device" keeps the prepared sources on this rank's device and streams each candidate's merged
        tensors into `reload_weights` one by one; "host" keeps the sources and one set of merged tensors in host
        memory (pinned when there is a GPU) and `reload_weights` copies them over tensor by tensor.
        """
        import torch

        from evomerge.merge import ResidentMerge, plan_merge
        from evomerge.recipe import Recipe
        from evomerge.tensors import torch_dtype

        template = Recipe.from_mergekit(dict(recipe))
        if sources_on == "device":
            # merged tensors are made one at a time and handed to reload_weights as they come (no model copy)
            self.evomerge_resident = ResidentMerge(template, None, self.device)
            self.evomerge_merged = None
            return
        # Host: the merged tensors vLLM copies from, pinned once (pinning per candidate would cost more than the
        # merge) and rewritten by every candidate. reload_weights holds on to a layer's tensors until the layer
        # is complete, so they must not alias.
        pin = torch.cuda.is_available()
        dtype = torch_dtype(template.dtype)
        merged = {t.name: torch.empty(t.shape, dtype=dtype, pin_memory=pin) for t in plan_merge(template).tensors}
        self.evomerge_resident = ResidentMerge(template, merged, "cpu")
        self.evomerge_merged = merged

    def evomerge_apply(self, recipe: Mapping[str, Any]) -> None:
        """Merge `recipe` into the running model."""
        import torch

        from evomerge.recipe import Recipe

        candidate = Recipe.from_mergekit(dict(recipe))
        if self.evomerge_merged is None:
            weights = self.evomerge_resident.merged(candidate)
        else:
            self.evomerge_resident.apply(candidate)
            weights = iter(self.evomerge_merged.items())
        with torch.inference_mode():
            # Worker.reload_weights: vLLM's public in-place reload, in checkpoint format (names, unfused, unsharded)
            self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)


class VLLMBackend:
    """A running vLLM engine and the tokenizer of its model; `apply` swaps a candidate's weights in place."""

    # The text side is the Hugging Face backend's, verbatim: same token ids, same context/continuation split.
    tokens = HFBackend.tokens
    encode = HFBackend.encode
    encode_prompt = HFBackend.encode_prompt
    chat = HFBackend.chat
    chat_prompt = HFBackend.chat_prompt
    _bos = HFBackend._bos

    def __init__(self, llm, tokenizer, eos_ids: set[int], max_model_len: int, merging: bool) -> None:
        self.llm, self.tokenizer, self.eos_ids = llm, tokenizer, eos_ids
        self.max_model_len, self.merging = max_model_len, merging

    @classmethod
    def load(cls, path: str | Path, dtype: str = "float32", kv_cache_bytes: int | None = 1 << 30,
             tensor_parallel: int = 1, max_model_len: int | None = None, merging: bool = False,
             seed: int = 0) -> "VLLMBackend":
        """Start an engine on a model directory (safetensors only, no remote code).

        kv_cache_bytes: the memory plan's KV cache budget (None: vLLM's own default, most of the device; on CPU
        most of the machine's RAM). max_model_len: longest prompt + answer (default: the model's, at most 4096).
        merging: install the MergeExtension so that `apply` can swap weights in.
        """
        import os

        # One engine per worker: with one rank the engine core and model runner live in this process (a start in
        # seconds instead of two spawned processes and a minute on 2 CPU cores, and no `__main__` guard needed).
        # On CPU, leave thread placement to the worker (vLLM would pin every engine of the machine to the same
        # cores). vLLM logs to stdout at INFO by default: warnings only, on stderr (stdout may be JSON). Each of
        # these can be overridden from the environment.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0" if tensor_parallel == 1 else "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from transformers import AutoTokenizer, GenerationConfig
        from vllm import LLM

        from evomerge.hub import local_model_dir

        path = str(local_model_dir(str(path)))
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        eos = None
        if (Path(path) / "generation_config.json").is_file():
            eos = GenerationConfig.from_pretrained(path).eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        max_model_len = max_model_len or _default_max_len(path)
        llm = LLM(model=path, dtype=dtype, tensor_parallel_size=tensor_parallel, seed=seed,
                  max_model_len=max_model_len, kv_cache_memory_bytes=kv_cache_bytes,
                  enforce_eager=True, trust_remote_code=False, load_format="safetensors",
                  worker_extension_cls=EXTENSION if merging else "")
        return cls(llm, tokenizer, eos_ids, max_model_len, merging)

    @classmethod
    def start(cls, template, kv_cache_bytes: int = 1 << 30, sources_on: str = "device", tensor_parallel: int = 1,
              max_model_len: int | None = None, seed: int = 0) -> "VLLMBackend":
        """An engine on the template recipe's first input (its config, tokenizer and chat template) with that
        recipe's sources resident in every worker, ready for `apply`."""
        backend = cls.load(template.inputs[0].model, template.dtype, kv_cache_bytes, tensor_parallel,
                           max_model_len, merging=True, seed=seed)
        backend.llm.collective_rpc("evomerge_init", args=(template.to_mergekit(), sources_on))
        return backend

    def apply(self, recipe) -> None:
        """Swap `recipe`'s merged weights into the running engine (same models and method as the template)."""
        if not self.merging:
            raise RuntimeError("this engine was started without the merge extension (use VLLMBackend.start)")
        self.llm.collective_rpc("evomerge_apply", args=(recipe.to_mergekit(),))
        self.llm.reset_prefix_cache()

    def rolling_requests(self, text: str, max_len: int | None = None) -> list[Request]:
        """A whole text as disjoint windows whose log-likelihoods sum to the text's (for bits per byte)."""
        return rolling_windows(self.tokens(text), self._bos, max_len or min(self.max_model_len, 2048))

    # ---- the model (per candidate) ----------------------------------------------------------------------------

    def loglikelihoods(self, requests: Sequence[Request]) -> list[float]:
        """Sum of log-probabilities of each continuation given its context, from vLLM's prompt log-probs.

        Each distinct context + continuation is one prompt (prompt log-probs never read the prefix cache, so
        every prompt is computed in full with the current weights); `prompt_logprobs=0` returns the log-prob of
        each prompt token itself, under the raw logits.
        """
        from vllm import SamplingParams

        index: dict[tuple[int, ...], int] = {}
        for r in requests:
            if not r.context or not r.continuation:
                raise ValueError("a request needs a non-empty context and continuation")
            index.setdefault(r.context + r.continuation, len(index))
        prompts = [{"prompt_token_ids": list(seq)} for seq in index]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        logprobs = [o.prompt_logprobs for o in outputs]  # per prompt: [None, {token: Logprob}, ...]
        out = []
        for r in requests:
            seq = r.context + r.continuation
            lp = logprobs[index[seq]]
            out.append(sum(float(lp[i][seq[i]].logprob) for i in range(len(r.context), len(seq))))
        return out

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        """Greedy continuations of prompts (token ids), ended by an end-of-sequence token or cut before the first
        stop string; decoded like the Hugging Face backend (our tokenizer, special tokens skipped)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop=list(stop) or None,
                                include_stop_str_in_output=True)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        texts = []
        for o in outputs:
            ids = list(o.outputs[0].token_ids)
            cut = next((j for j, t in enumerate(ids) if t in self.eos_ids), len(ids))
            text = self.tokenizer.decode(ids[:cut], skip_special_tokens=True)
            cuts = [text.find(s) for s in stop if s in text]
            texts.append(text[:min(cuts)] if cuts else text)
        return texts


def _default_max_len(path: str) -> int:
    import json

    cfg = json.loads((Path(path) / "config.json").read_text())
    return min(int(cfg.get("max_position_embeddings") or 4096), 4096)
