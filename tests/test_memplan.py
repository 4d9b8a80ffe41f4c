"""The memory plan: model sizes from config.json, what a resident merge keeps, and where the sources go."""

from __future__ import annotations

import pytest

from evomerge.memplan import GiB, model_size, plan_memory, resident_copies

LLAMA31_8B = dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, vocab_size=128256,
                  num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                  max_position_embeddings=131072, tie_word_embeddings=False)


def test_model_size_counts_every_parameter_of_a_real_checkpoint(llama_trio):
    from evomerge.tensors import ModelFiles

    files = ModelFiles.open(llama_trio["base"])
    numel = 0
    for name in files.names():
        n = 1
        for d in files.shape(name):
            n *= d
        numel += n
    size = model_size(files.config, "float32")
    assert size.numel == numel
    assert size.bytes == 4 * numel
    assert size.kv_bytes_per_token == 2 * 4 * 1 * 64 * 4  # K and V x layers x kv heads x head_dim x bytes


def test_model_size_of_llama31_8b():
    size = model_size(LLAMA31_8B, "bfloat16")
    assert size.numel == 8_030_261_248  # the published parameter count
    assert size.kv_bytes_per_token == 128 * 1024
    assert model_size({**LLAMA31_8B, "tie_word_embeddings": True}, "bfloat16").numel == 8_030_261_248 - 128256 * 4096


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
                                    "della", "slerp"])
def test_resident_copies_is_what_a_resident_merge_keeps(method, llama_trio):
    """Bytes of the base and every prepared tensor a ResidentMerge keeps (DARE: with its kept draws), over the
    bytes of one model: the plan's `resident_copies`."""
    import math

    from evomerge.merge import ResidentMerge
    from evomerge.recipe import PER_MODEL_DEFAULTS, Recipe

    inputs = ["eu"] if method == "slerp" else ["instruct", "eu"]
    per_model = {k: v for k, v in {"weight": 0.5, "density": 0.5}.items() if k in PER_MODEL_DEFAULTS[method]}
    recipe = Recipe.from_mergekit({
        "merge_method": method, "dtype": "float32",
        **({} if method == "linear" else {"base_model": str(llama_trio["base"])}),
        "parameters": {"t": 0.5} if method == "slerp" else {"random_seed": 3} if method.startswith("dare") else {},
        "models": [{"model": str(llama_trio[k]), "parameters": per_model} for k in inputs]})
    merge = ResidentMerge(recipe, None)
    kept = sum(t.numel() * t.element_size() for base, prepared in merge._prepared.values()
               for t in ([base] if base is not None else []) + list(prepared))
    one = sum(4 * math.prod(shape) for shape in merge._shapes.values())
    assert kept / one == pytest.approx(resident_copies(method, len(inputs), "float32"), rel=1e-3)


def _plan(**kw):
    args = dict(backend="vllm", size=model_size(LLAMA31_8B, "bfloat16"),
                source_copies=resident_copies("task_arithmetic", 2, "bfloat16"), device="cuda",
                device_bytes=80 * GiB, host_bytes=1000 * GiB)
    args.update(kw)
    return plan_memory(args.pop("backend"), args.pop("size"), args.pop("source_copies"), **args)


def test_sources_stay_on_the_gpu_when_they_fit_next_to_the_engine():
    plan = _plan(device_bytes=80 * GiB)  # an H100: 15 GiB of weights + 45 GiB of sources, merged ones streamed
    assert plan.fits and plan.sources_on == "device" and plan.tensor_parallel == 1 and plan.merged_bytes == 0
    assert plan.engine_bytes == model_size(LLAMA31_8B, "bfloat16").bytes
    used = plan.engine_bytes + plan.sources_bytes + plan.kv_cache_bytes
    assert used == plan.device_bytes  # the KV cache takes the rest
    assert _plan(device_bytes=141 * GiB, kv_cache_bytes=8 * GiB).kv_cache_bytes == 8 * GiB


def test_sources_go_to_host_memory_when_the_gpu_is_too_small():
    four = resident_copies("task_arithmetic", 5, "bfloat16")  # instruct + 4 languages: 90 GiB of sources
    plan = _plan(device_bytes=80 * GiB, source_copies=four)  # an H100
    assert plan.fits and plan.sources_on == "host" and plan.merged_bytes == plan.engine_bytes  # pinned, once
    assert plan.kv_cache_bytes == plan.device_bytes - plan.engine_bytes
    assert "pinned host memory" in plan.describe()
    short = _plan(device_bytes=80 * GiB, host_bytes=40 * GiB, source_copies=four)  # nor can the host hold them
    assert not short.fits and "host memory" in short.reason


def test_a_model_larger_than_one_gpu_takes_tensor_parallel_ranks():
    seventy = dict(LLAMA31_8B, hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                   intermediate_size=28672)
    size = model_size(seventy, "bfloat16")
    assert 70e9 < size.numel < 71e9
    plan = _plan(size=size, max_tensor_parallel=8, host_bytes=4000 * GiB)
    assert plan.fits and plan.tensor_parallel == 2 and plan.sources_on == "host"
    assert plan.engine_bytes == size.bytes // 2
    assert plan.sources_bytes == int(size.bytes * 3)  # every rank keeps the full sources
    one_gpu = _plan(size=size, max_tensor_parallel=1)
    assert not one_gpu.fits and "tensor parallel" in one_gpu.reason


def test_cpu_plans_share_the_ram_between_workers():
    plan = _plan(device="cpu", device_bytes=0, host_bytes=24 * GiB, workers=2)
    assert not plan.fits and "fewer workers" in plan.reason
    tiny = model_size(dict(LLAMA31_8B, hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
                           num_key_value_heads=1, intermediate_size=256, vocab_size=128), "float32")
    ok = _plan(size=tiny, device="cpu", device_bytes=0, host_bytes=24 * GiB, workers=2, max_model_len=256)
    assert ok.fits and ok.kv_cache_bytes == GiB and ok.device_bytes == int(12 * GiB * 0.9)
    hf = _plan(backend="hf", size=tiny, device="cpu", device_bytes=0, host_bytes=24 * GiB)
    assert hf.fits and hf.kv_cache_bytes == 0 and hf.merged_bytes == 0 and "KV cache" not in hf.describe()


def test_hf_backend_on_a_small_gpu_says_to_use_vllm():
    plan = _plan(backend="hf", device_bytes=40 * GiB)
    assert not plan.fits and "--backend vllm" in plan.reason
