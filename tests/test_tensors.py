"""Weight files: our safetensors reader and streaming writer against the safetensors library and transformers;
corrupt files; pickle checkpoints refused, or loaded weights-only when allowed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from evomerge.errors import UserError
from evomerge.tensors import (ModelFiles, TensorSpec, plan_shards, read_safetensors_header, tokenizer_vocab,
                              write_model_dir)


def _sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.f32": torch.randn(5, 7, generator=g), "b.bf16": torch.randn(3, 4, generator=g).bfloat16(),
            "c.f16": torch.randn(9, generator=g).half(), "d.i64": torch.arange(6).view(2, 3),
            "e.bool": torch.tensor([True, False, True]), "f.scalar": torch.tensor(2.5),
            "g.empty": torch.zeros(0, 4), "h.f64": torch.randn(2, 2, generator=g, dtype=torch.float64)}


def _model_dir(path: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int = 1 << 30) -> Path:
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    side = path.parent / "side"
    side.mkdir(exist_ok=True)
    (side / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1}},
                                                     "added_tokens": [{"id": 2, "content": "<x>"}]}))
    return write_model_dir(path, specs, iter(tensors.items()), config={"num_hidden_layers": 1},
                           side_files_from=side, max_shard_bytes=max_shard_bytes)


def test_reader_equals_safetensors_library(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = _sample()
    save_file(tensors, str(tmp_path / "x.safetensors"))
    header = read_safetensors_header(tmp_path / "x.safetensors")
    assert set(header) == set(tensors)
    (tmp_path / "m").mkdir()
    save_file(tensors, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "config.json").write_text("{}")
    files = ModelFiles.open(tmp_path / "m")
    ref = load_file(str(tmp_path / "x.safetensors"))
    for name, t in ref.items():
        got = files.get(name)
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), name
        assert files.shape(name) == tuple(t.shape)
    assert files.get("a.f32", torch.bfloat16).dtype == torch.bfloat16


def test_writer_streams_shards_that_the_library_and_transformers_read(tmp_path):
    from safetensors.torch import load_file

    tensors = _sample()
    out = _model_dir(tmp_path / "out", tensors, max_shard_bytes=64)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                                      for t in tensors.values())
    for shard in shards:
        for name, t in load_file(str(out / shard)).items():
            assert index["weight_map"][name] == shard and torch.equal(t, tensors[name])
    files = ModelFiles.open(out)
    assert files.names() == list(tensors)
    assert all(torch.equal(files.get(n), t) for n, t in tensors.items())
    assert tokenizer_vocab(out) == {"a": 0, "b": 1, "<x>": 2}
    assert not list(tmp_path.glob(".out.partial-*"))


def test_shard_plan():
    specs = [TensorSpec(f"t{i}", (n,), torch.float32) for i, n in enumerate([10, 10, 30, 5, 100])]
    assert [[s.name for s in shard] for shard in plan_shards(specs, 160)] == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert plan_shards([], 80) == [[]]


def test_merged_model_loads_in_transformers(tmp_path, llama_trio):
    from transformers import AutoModelForCausalLM

    src = ModelFiles.open(llama_trio["eu"])
    specs = [TensorSpec(n, src.shape(n), torch.float32) for n in src.names()]
    out = write_model_dir(tmp_path / "copy", specs, ((n, src.get(n)) for n in src.names()), config=src.config,
                          side_files_from=src.path, max_shard_bytes=200_000)
    assert (out / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert all(torch.equal(p, src.get(n)) for n, p in model.state_dict().items())


def test_a_failed_write_leaves_nothing(tmp_path):
    tensors = _sample()
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    wrong = [(n, t.float() if n == "d.i64" else t) for n, t in tensors.items()]
    with pytest.raises(RuntimeError, match="does not match"):
        write_model_dir(tmp_path / "out", specs, iter(wrong), config={}, side_files_from=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_corrupt_safetensors_is_a_user_error(tmp_path, damage):
    out = _model_dir(tmp_path / "m", _sample())
    f = out / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(raw[:-10] if damage == "truncated" else raw[:8] + b"{not json" + raw[17:])
    with pytest.raises(UserError, match="unreadable safetensors"):
        ModelFiles.open(out)


def _pickle_dir(path: Path, state: object) -> Path:
    path.mkdir()
    (path / "config.json").write_text('{"num_hidden_layers": 1}')
    torch.save(state, path / "pytorch_model.bin")
    return path


def test_pickle_is_refused_unless_allowed(tmp_path):
    state = {"w": torch.randn(3, 3), "b": torch.arange(3)}
    d = _pickle_dir(tmp_path / "p", state)
    with pytest.raises(UserError, match="allow-pickle"):
        ModelFiles.open(d)
    files = ModelFiles.open(d, allow_pickle=True)
    assert files.pickle and files.names() == ["w", "b"] and files.shape("w") == (3, 3)
    assert torch.equal(files.get("w"), state["w"]) and torch.equal(files.get("b"), state["b"])


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.marker),))


def test_allowed_pickle_is_loaded_weights_only(tmp_path):
    _Payload.marker = str(tmp_path / "pwned")
    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text('{"num_hidden_layers": 1}')
    with open(d / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"w": _Payload()}, fh)
    with pytest.raises(UserError, match="weights-only"):
        ModelFiles.open(d, allow_pickle=True)
    assert not (tmp_path / "pwned").exists()
