"""The only module that opens weight files: sharded safetensors in, one tensor at a time; sharded safetensors out,
streamed.

Reading parses each shard's header once and reads a tensor with positioned reads straight into a fresh tensor, so
nothing stays mapped: a merge's resident memory is the tensors it holds, not the files it has touched (pages of a
memory-mapped file count in RSS until unmapped).

Writing streams too: the shard layout and headers are planned from the tensors' shapes before any data exists, then
every tensor is written (on a helper thread, while the next one is computed) as soon as it is computed, and dropped.
Peak memory does not depend on the shard size.

Pickle checkpoints (`*.bin`, `*.pt`) are refused unless the caller allows them: unpickling can run code. Allowed,
they are read with `torch.load(weights_only=True)` (tensors and plain containers only), one file at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from evomerge.atomic import replace_dir, temp_sibling, write_atomic, write_error
from evomerge.errors import UserError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# safetensors dtype codes <-> torch dtypes
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_ST_CODES = {v: k for k, v in _ST_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
DEFAULT_SHARD_BYTES = 2 * 1024**3
# Files that travel with a merged model. The tokenizer's come from the tokenizer source, the rest from the model
# whose config the merged model takes (the instruct model).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.json", "merges.txt")
MODEL_FILES = ("chat_template.jinja", "chat_template.json", "generation_config.json", "preprocessor_config.json",
               "processor_config.json")
SIDE_FILES = TOKENIZER_FILES + MODEL_FILES
_PICKLE_INDEX = "pytorch_model.bin.index.json"


def torch_dtype(name: str) -> torch.dtype:
    """`"float32"` -> torch.float32."""
    return _DTYPES[name]


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies: its file, and for safetensors its byte range, dtype and shape (from the header)."""

    file: Path
    dtype: torch.dtype | None = None
    shape: tuple[int, ...] | None = None
    start: int = 0  # absolute byte offset of the data in the file
    nbytes: int = 0


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Name -> entry for every tensor of one safetensors file (reads the header only)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than a header")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
        entries = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = _ST_DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
            numel = 1
            for s in shape:
                numel *= s
            if end - begin != numel * dtype.itemsize or 8 + n + end > size or begin < 0:
                raise ValueError(f"bad data offsets for {name}")
            entries[name] = TensorEntry(path, dtype, shape, 8 + n + begin, end - begin)
        return entries
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:  # JSONDecodeError is a ValueError
        raise UserError(str(path), f"unreadable safetensors file ({e})",
                        "the file is truncated or corrupt; rebuild or re-download it") from None


def _read_into(entry: TensorEntry, out: torch.Tensor) -> torch.Tensor:
    """Fill `out` (contiguous, the entry's dtype and shape) with the entry's bytes."""
    if entry.nbytes == 0:
        return out
    view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
    with open(entry.file, "rb", buffering=0) as f:
        f.seek(entry.start)
        done = 0
        while done < entry.nbytes:  # read() returns at most ~2 GiB per call
            got = f.readinto(view[done:])
            if not got:
                raise UserError(str(entry.file), "unexpected end of file", "the file is truncated; rebuild it")
            done += got
    return out


@dataclass
class ModelFiles:
    """A Hugging Face model directory opened lazily: config plus an index of tensor name -> where it lies."""

    path: Path
    config: dict[str, Any]
    index: dict[str, TensorEntry]
    pickle: bool = False

    @classmethod
    def open(cls, path: str | os.PathLike[str], allow_pickle: bool = False) -> "ModelFiles":
        """Read config.json and every shard's header; no tensor is loaded. Pickle checkpoints are refused unless
        `allow_pickle` (then loaded weights-only)."""
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
            try:
                weight_map = json.loads(index_file.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(str(index_file), "malformed index (no weight_map)", "restore the file") from None
            index: dict[str, TensorEntry] = {}
            for fname in dict.fromkeys(weight_map.values()):
                if not (p / fname).is_file():
                    raise UserError(str(p / fname), "shard named in the index is missing", "re-download the model")
                headers = read_safetensors_header(p / fname)
                index.update({n: e for n, e in headers.items() if weight_map.get(n) == fname})
            missing = sorted(set(weight_map) - set(index))
            if missing:
                raise UserError(str(index_file), f"tensor {missing[0]} is not in its shard", "re-download the model")
            index = {n: index[n] for n in weight_map}  # the index's order
            return cls(p, config, index)
        if (p / "model.safetensors").is_file():
            return cls(p, config, read_safetensors_header(p / "model.safetensors"))
        pickles = sorted(p.glob("*.bin")) + sorted(p.glob("*.pt"))
        if not pickles:
            raise UserError(str(p), "no safetensors weights", "expected model.safetensors or an index")
        if not allow_pickle:
            raise UserError(str(p), "only pickle checkpoints (*.bin/*.pt) found",
                            "pickle files can run code when loaded; convert the model to safetensors, "
                            "or pass --allow-pickle to load them weights-only")
        return cls(p, config, _pickle_index(p, pickles), pickle=True)

    def names(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.index)

    def has(self, name: str) -> bool:
        """Whether the model stores a tensor of this name."""
        return name in self.index

    def _entry(self, name: str) -> TensorEntry:
        if name not in self.index:
            raise UserError(str(self.path), f"tensor {name} missing", "the models must share one architecture")
        return self.index[name]

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Load one tensor (a fresh tensor the caller owns), optionally cast."""
        entry = self._entry(name)
        if self.pickle:
            t = _load_pickle(entry.file)[name].clone()
        else:
            assert entry.dtype is not None and entry.shape is not None
            t = _read_into(entry, torch.empty(entry.shape, dtype=entry.dtype))
        return t.to(dtype) if dtype is not None and t.dtype != dtype else t

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape (from the header; a pickle file is loaded for it)."""
        entry = self._entry(name)
        if entry.shape is not None:
            return entry.shape
        return tuple(_load_pickle(entry.file)[name].shape)


# --- pickle checkpoints (only when allowed) ------------------------------------------------------------------------
_pickle_cache: dict[Path, dict[str, torch.Tensor]] = {}


def _load_pickle(file: Path) -> dict[str, torch.Tensor]:
    """One pickle shard, loaded weights-only and memory-mapped; only the last one used stays cached."""
    if file not in _pickle_cache:
        _pickle_cache.clear()
        try:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # the legacy (non-zip) format cannot be memory-mapped
                    raise
                state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ... for unsafe content
            raise UserError(str(file), f"cannot load weights-only ({type(e).__name__})",
                            "the file holds more than tensors; convert it to safetensors in a trusted environment"
                            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(str(file), "not a flat state dict of tensors", "convert it to safetensors")
        _pickle_cache[file] = state
    return _pickle_cache[file]


def _pickle_index(p: Path, pickles: Sequence[Path]) -> dict[str, TensorEntry]:
    index_file = p / _PICKLE_INDEX
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text())["weight_map"]
        return {n: TensorEntry(p / f) for n, f in weight_map.items()}
    index: dict[str, TensorEntry] = {}
    for file in pickles:
        index.update({n: TensorEntry(file) for n in _load_pickle(file)})
    _pickle_cache.clear()
    return index


# --- writing -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: name, shape, dtype (known before its data exists)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:
            n *= s
        return n


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Split tensors, in order, into shards of at most `max_shard_bytes` (a bigger tensor gets a shard alone)."""
    shards: list[list[TensorSpec]] = []
    size = 0
    for spec in specs:
        if not shards or (shards[-1] and size + spec.nbytes > max_shard_bytes):
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards or [[]]


def _header(specs: Sequence[TensorSpec]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": _ST_CODES[s.dtype], "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # data starts 8-byte aligned, as the safetensors library writes it
    return struct.pack("<Q", len(raw)) + raw


def _write_tensor(f: Any, t: torch.Tensor) -> None:
    if t.numel():
        f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def write_model_dir(out_dir: Path, specs: Sequence[TensorSpec], tensors: Iterable[tuple[str, torch.Tensor]], *,
                    config: dict[str, Any], side_files_from: Path, tokenizer_from: Path | None = None,
                    max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write a complete HF model directory atomically: tensors (streamed, in `specs` order) as sharded safetensors,
    config.json, tokenizer files (from `tokenizer_from`, default `side_files_from`) and the other side files.

    Everything goes to a temporary sibling first and is renamed into place at the end, so an interrupted write
    never leaves a directory that looks complete.
    """
    out_dir = Path(out_dir)
    try:
        tmp = temp_sibling(out_dir)
    except OSError as e:
        raise write_error(out_dir, e) from None
    try:
        shards = plan_shards(specs, max_shard_bytes)
        n = len(shards)
        fnames = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        stream = iter(tensors)
        # One write in flight on a helper thread while the next tensor is computed (file writes release the GIL):
        # one more tensor in memory, and the write time hidden behind the reads and the arithmetic.
        with ThreadPoolExecutor(1, thread_name_prefix="evomerge-write") as io:
            pending: Future[None] | None = None
            for fname, shard in zip(fnames, shards):
                with open(tmp / fname, "wb") as f:
                    f.write(_header(shard))
                    for spec in shard:
                        name, t = next(stream)
                        if name != spec.name or tuple(t.shape) != spec.shape or t.dtype != spec.dtype:
                            raise RuntimeError(f"tensor {name} {tuple(t.shape)} {t.dtype} does not match the "
                                               f"planned {spec.name} {spec.shape} {spec.dtype}")
                        t = t.detach().to("cpu").contiguous()
                        if pending is not None:
                            pending.result()
                        pending = io.submit(_write_tensor, f, t)
                        del t
                    if pending is not None:
                        pending.result()
                        pending = None
                    f.flush()
                    os.fsync(f.fileno())
        if next(stream, None) is not None:
            raise RuntimeError("more tensors than planned")
        if n > 1:
            index = {"metadata": {"total_size": sum(s.nbytes for s in specs)},
                     "weight_map": {s.name: fname for fname, shard in zip(fnames, shards) for s in shard}}
            write_atomic(tmp / "model.safetensors.index.json", json.dumps(index, indent=2))
        write_atomic(tmp / "config.json", json.dumps(config, indent=2))
        for fname in SIDE_FILES:
            src = Path((tokenizer_from or side_files_from) if fname in TOKENIZER_FILES else side_files_from) / fname
            if src.is_file():
                shutil.copy2(src, tmp / fname)
                _fsync_file(tmp / fname)
        replace_dir(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(out_dir, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def iter_tensors(files: ModelFiles, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a model, one at a time."""
    for name in files.names():
        yield name, files.get(name, dtype)


def tokenizer_vocab(model_dir: Path) -> dict[str, int] | None:
    """Token -> id from a model's tokenizer.json (model vocabulary plus added tokens), or None without one."""
    file = Path(model_dir) / "tokenizer.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError:
        raise UserError(str(file), "malformed JSON", "restore the file") from None
    model_vocab = (data.get("model") or {}).get("vocab")
    vocab: dict[str, int] = {}
    if isinstance(model_vocab, dict):
        vocab.update({str(k): int(v) for k, v in model_vocab.items()})
    elif isinstance(model_vocab, list):  # Unigram: [[piece, score], ...]
        vocab.update({str(item[0]): i for i, item in enumerate(model_vocab)})
    for tok in data.get("added_tokens") or []:
        vocab[str(tok["content"])] = int(tok["id"])
    return vocab
