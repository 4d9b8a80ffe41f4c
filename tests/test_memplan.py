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


QWEN3_8B = dict(model_type="qwen3", hidden_size=4096, num_hidden_layers=36, vocab_size=151936, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, intermediate_size=12288, max_position_embeddings=40960,
                tie_word_embeddings=False)
LLAMA31_70B = dict(LLAMA31_8B, hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                   intermediate_size=28672)
GB = 10**9  # cards are sold in GB: an "80 GB" H100, a "141 GB" H200


def _plan(**kw):
    args = dict(backend="vllm", size=model_size(LLAMA31_8B, "bfloat16"),
                source_copies=resident_copies("task_arithmetic", 2, "bfloat16"), device="cuda",
                device_bytes=80 * GB, host_bytes=1000 * GiB, method="task_arithmetic", n_inputs=2)
    args.update(kw)
    return plan_memory(args.pop("backend"), args.pop("size"), args.pop("source_copies"), **args)


def test_published_parameter_counts():
    assert model_size(QWEN3_8B, "bfloat16").numel == 8_190_735_360
    assert model_size(LLAMA31_70B, "bfloat16").numel == 70_553_706_496


def _per_candidate(vocab: int, hidden: int, inter: int, tp: int = 1) -> dict[str, int]:
    """The items every plan has, worked out by hand: logits of 4096 tokens (bf16, then float32 and its float32
    log-softmax: 2 + 4 + 4 bytes), one layer's activations for 4096 tokens (residual, q/k/v/o: 4 x hidden; MLP
    gate, up, product: 3 x inter / tp; bf16), the CUDA context (1 GiB, + 0.5 GiB of NCCL with tensor parallelism)."""
    return {"logits": 4096 * vocab * 10, "activations": 4096 * (4 * hidden + 3 * inter // tp) * 2,
            "CUDA context": GiB + (GiB // 2 if tp > 1 else 0)}


def test_llama31_8b_three_sources_on_h200_keeps_sources_on_the_gpu():
    """Task arithmetic, base + instruct + one language: 3 model-sized sources."""
    plan = _plan(device_bytes=141 * GB)
    model = 8_030_261_248 * 2  # bf16
    embed = 128256 * 4096
    layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336 + 2 * 4096  # q, o; k, v; MLP; 2 norms
    expected = {"engine weights": model,
                "sources": 3 * model,  # base + 2 task vectors
                "stream buffers": (2 * embed + 4096 + 2 * layer) * 2,  # embeddings, head, final norm + 2 layers
                "merge scratch": embed * (2 * 2 + 4),  # bf16 sum and spare + a float32 accumulator
                "preparation": 3 * embed * 2,  # at start: the embedding's base, instruct and language tensors
                **_per_candidate(128256, 4096, 14336),
                "allocator margin": int(141 * GB * 0.05)}
    assert expected["stream buffers"] == 2_973_802_496  # ~3 GB, as issue 13 says
    assert expected["merge scratch"] == 4_202_692_608  # ~4 GB on the embedding
    items = dict(plan.items)
    kv = items.pop("KV cache")
    assert items == expected
    assert plan.fits and plan.sources_on == "device" and plan.tensor_parallel == 1
    assert kv == 141 * GB - sum(expected.values()) == 52_565_748_608  # what vLLM gets: all that is left
    assert plan.total == 141 * GB


def test_llama31_8b_three_sources_on_h100_moves_sources_to_host_memory():
    """The old plan kept these sources on an 80 GB card with 10% headroom and would have run out of memory."""
    plan = _plan(device_bytes=80 * GB)
    model = 8_030_261_248 * 2
    on_gpu = model + 3 * model + 2_973_802_496 + 4_202_692_608 + 3 * 128256 * 4096 * 2 + \
        sum(_per_candidate(128256, 4096, 14336).values())
    assert on_gpu + int(80 * GB * 0.05) > 80 * GB  # sources on the GPU do not fit once everything is counted
    expected = {"engine weights": model, **_per_candidate(128256, 4096, 14336),
                "allocator margin": 4 * GB}
    items = dict(plan.items)
    kv = items.pop("KV cache")
    assert items == expected and kv == 80 * GB - sum(expected.values()) == 53_125_830_656
    assert plan.fits and plan.sources_on == "host"
    assert dict(plan.host_items) == {"sources": 3 * model, "stream buffers": 2_973_802_496}
    assert "pinned" in plan.describe()
    short = _plan(device_bytes=80 * GB, host_bytes=40 * GiB)  # nor can the host hold them
    assert not short.fits and "host memory" in short.reason and "host RAM" in short.hint


def test_qwen3_8b_on_h100_and_h200():
    size = model_size(QWEN3_8B, "bfloat16")
    model = 8_190_735_360 * 2
    embed = 151936 * 4096
    big = _plan(size=size, device_bytes=141 * GB)
    layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 12288 + 2 * 4096 + 2 * 128  # + q_norm, k_norm
    expected = {"engine weights": model, "sources": 3 * model, "stream buffers": (2 * embed + 4096 + 2 * layer) * 2,
                "merge scratch": embed * 8, "preparation": 3 * embed * 2, **_per_candidate(151936, 4096, 12288),
                "allocator margin": int(141 * GB * 0.05)}
    items = dict(big.items)
    assert items.pop("KV cache") == 141 * GB - sum(expected.values()) and items == expected and big.sources_on == "device"
    small = _plan(size=size, device_bytes=80 * GB)
    assert small.fits and small.sources_on == "host"
    assert small.kv_cache_bytes == 80 * GB - model - sum(_per_candidate(151936, 4096, 12288).values()) - 4 * GB


def test_llama31_70b_on_eight_gpus_takes_tensor_parallel_ranks_with_sharded_sources():
    size = model_size(LLAMA31_70B, "bfloat16")
    model = 70_553_706_496 * 2
    # 8 x 80 GB, one worker: 2 ranks cannot hold the 70.6 GB shard + scoring; 4 can, sources in host memory
    plan = _plan(size=size, max_tensor_parallel=8, host_bytes=2048 * GiB)
    assert plan.fits and plan.tensor_parallel == 4 and plan.sources_on == "host"
    expected = {"engine weights": model // 4, **_per_candidate(128256, 8192, 28672, tp=4), "allocator margin": 4 * GB}
    items = dict(plan.items)
    assert items.pop("KV cache") == 80 * GB - sum(expected.values()) and items == expected
    embed, layer = 128256 * 8192, 8192 * 8192 * 2 + 8192 * 1024 * 2 + 3 * 8192 * 28672 + 2 * 8192
    stream = (2 * embed + 8192 + 2 * layer) * 2 + embed // 4 * 2  # whole-shaped, + a slice for column splits
    assert dict(plan.host_items) == {"sources": 3 * model, "stream buffers": 4 * stream}  # all 4 ranks' slices
    # 8 x 141 GB with 8 ranks: each rank's slices of the sources fit next to its shard of the engine
    eight = _plan(size=size, device_bytes=141 * GB, tensor_parallel=8)
    assert eight.fits and eight.sources_on == "device" and eight.sources_bytes == -(-3 * model // 8)
    # one 80 GB GPU per worker: refused, with the tensor-parallel size that would fit
    one = _plan(size=size, tensor_parallel=1, host_bytes=256 * GiB)
    assert not one.fits and "--tensor-parallel 16" in one.hint and "engine weights" in one.reason
    err = str(one.refusal())
    assert err.startswith("memory plan: does not fit") and "\n" not in err


def test_a_long_context_that_does_not_fit_suggests_a_shorter_max_model_len():
    size = model_size(LLAMA31_8B, "bfloat16")
    plan = _plan(size=size, device_bytes=40 * GB, host_bytes=512 * GiB, max_model_len=131072, tensor_parallel=1)
    assert not plan.fits and "KV cache" in plan.reason and "max_model_len" in plan.hint


def test_cpu_plans_share_the_ram_between_workers():
    plan = _plan(device="cpu", device_bytes=0, host_bytes=24 * GiB, workers=2)
    assert not plan.fits and "fewer --workers" in plan.hint and "sources" in plan.reason
    tiny = model_size(dict(LLAMA31_8B, hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
                           num_key_value_heads=1, intermediate_size=256, vocab_size=128), "float32")
    ok = _plan(size=tiny, device="cpu", device_bytes=0, host_bytes=24 * GiB, workers=2, max_model_len=256)
    assert ok.fits and ok.kv_cache_bytes == GiB and ok.device_bytes == 12 * GiB
    hf = _plan(backend="hf", size=tiny, device="cpu", device_bytes=0, host_bytes=24 * GiB)
    assert hf.fits and hf.kv_cache_bytes == 0 and "stream buffers" not in dict(hf.items) and "KV cache" not in hf.describe()


def test_hf_backend_on_a_small_gpu_says_to_use_vllm():
    plan = _plan(backend="hf", device_bytes=40 * GB)
    assert not plan.fits and "--backend vllm" in plan.hint


def test_scratch_per_element_follows_the_kernels():
    from evomerge.memplan import scratch_bytes

    assert scratch_bytes("task_arithmetic", 2, "float32") == 0  # fused into the output
    assert scratch_bytes("task_arithmetic", 2, "bfloat16") == 8
    assert scratch_bytes("ties", 2, "bfloat16") == 7 * 2 + 4 + 12
    assert scratch_bytes("slerp", 1, "bfloat16") == 0
