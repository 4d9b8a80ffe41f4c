"""The only module that opens weight files: lazy, memory-mapped safetensors in; sharded safetensors out.

Pickle checkpoints (`*.bin`, `*.pt`) are refused: loading them can execute code.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from evomerge.errors import UserError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files that travel with a merged model (tokenizer, chat template, generation defaults).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
              "chat_template.jinja", "chat_template.json", "generation_config.json", "vocab.json", "merges.txt")


def torch_dtype(name: str) -> torch.dtype:
    """`"float32"` -> torch.float32."""
    return _DTYPES[name]


@dataclass
class ModelFiles:
    """A Hugging Face model directory opened lazily: config plus an index of tensor name -> shard file."""

    path: Path
    config: dict[str, Any]
    index: dict[str, Path]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "ModelFiles":
        """Read config.json and the shard index; no tensor is loaded."""
        from evomerge.hub import local_model_dir

        p = local_model_dir(str(path))
        if not p.is_dir():
            raise UserError(str(p), "model directory not found", "check the path, or build/download the model first")
        cfg_file = p / "config.json"
        if not cfg_file.is_file():
            raise UserError(str(p), "no config.json", "point at a Hugging Face model directory")
        try:
            config = json.loads(cfg_file.read_text())
        except json.JSONDecodeError:
            raise UserError(str(cfg_file), "malformed JSON", "restore the file") from None
        index_file = p / "model.safetensors.index.json"
        if index_file.is_file():
            weight_map = json.loads(index_file.read_text())["weight_map"]
            index = {name: p / fname for name, fname in weight_map.items()}
        elif (p / "model.safetensors").is_file():
            from safetensors import safe_open

            try:
                with safe_open(str(p / "model.safetensors"), framework="pt") as f:
                    index = {name: p / "model.safetensors" for name in f.keys()}
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise UserError(str(p / "model.safetensors"), f"unreadable safetensors file ({e})",
                                "the file is truncated or corrupt; rebuild or re-download it") from None
        elif any(p.glob("*.bin")) or any(p.glob("*.pt")):
            raise UserError(str(p), "only pickle checkpoints (*.bin/*.pt) found",
                            "pickle files can run code when loaded; convert the model to safetensors")
        else:
            raise UserError(str(p), "no safetensors weights", "expected model.safetensors or an index")
        return cls(p, config, index)

    def names(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.index)

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Load one tensor (memory-mapped read), optionally cast."""
        from safetensors import safe_open

        if name not in self.index:
            raise UserError(str(self.path), f"tensor {name} missing", "the models must share one architecture")
        with safe_open(str(self.index[name]), framework="pt") as f:
            t = f.get_tensor(name)
        return t.to(dtype) if dtype is not None and t.dtype != dtype else t

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, read from the header only."""
        from safetensors import safe_open

        with safe_open(str(self.index[name]), framework="pt") as f:
            return tuple(f.get_slice(name).get_shape())


def write_model_dir(out_dir: Path, tensors: Iterable[tuple[str, torch.Tensor]], *, config: dict[str, Any],
                    side_files_from: Path, max_shard_bytes: int = 2 * 1024**3) -> Path:
    """Write a complete HF model directory atomically: tensors as sharded safetensors, config, tokenizer files.

    Everything goes to a temporary sibling first and is renamed into place at the end, so an interrupted write
    never leaves a directory that looks complete.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Stream: a shard is written as soon as it is full, so peak memory is one shard, not the model.
    shard: dict[str, torch.Tensor] = {}
    files: list[tuple[str, list[str]]] = []
    size = 0

    def flush() -> None:
        fname = f"shard-{len(files):05d}.safetensors"
        save_file(shard, str(tmp / fname), metadata={"format": "pt"})
        files.append((fname, list(shard)))

    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > max_shard_bytes:
            flush()
            shard, size = {}, 0
        shard[name] = t.contiguous()
        size += nbytes
    if shard or not files:
        flush()
    weight_map: dict[str, str] = {}
    for i, (fname, names) in enumerate(files):
        final = "model.safetensors" if len(files) == 1 else f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        os.replace(tmp / fname, tmp / final)
        weight_map.update({name: final for name in names})
    if len(files) > 1:
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for fname in SIDE_FILES:
        src = Path(side_files_from) / fname
        if src.is_file():
            shutil.copy2(src, tmp / fname)
    for f in tmp.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


def iter_tensors(files: ModelFiles, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a model, one at a time."""
    for name in files.names():
        yield name, files.get(name, dtype)
