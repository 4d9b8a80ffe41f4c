"""Data-parallel pre-training for the miniature's build: two local processes, one core each, the same weights.

The 120-country world needs 1000 base steps, most of a fresh quickstart's time on one core. Its pre-training is
therefore cut into `SHARDS` slices per batch (train.py `train_causal_lm(shards=...)`), and the slices are computed
by that many processes at once when the machine has that many idle cores: each rank computes its slice's gradient,
one all-reduce per step sums them (torch.distributed's gloo, on the loopback interface), and every rank takes the
same optimizer step. Otherwise one process computes the slices in turn. Both give the same weights bit for bit
(train.py says why; `tests/test_miniature.py` checks it), so a build does not depend on the machine's size or load.
Measured on two cores: 1000 base steps in 141 s against ~173-207 s in one process (a half batch costs a little
more than half a batch, and the all-reduce of the 2.8 MB gradient ~10 ms a step; summing it through shared memory
instead saved ~5 ms a step, not worth its code).

Each rank is a fresh `python -m evomerge.miniature.parallel` process that reads its inputs from a private
temporary directory (the model's weights and the blocks as safetensors, the config as JSON) and rank 0 writes the
trained weights back there. Gloo listens on the loopback interface only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from evomerge.miniature.train import TrainConfig, train_causal_lm

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

SHARDS = 2  # slices per batch: fixed, so the weights never depend on how many processes computed them
# Fewer steps than this run in one process: starting the ranks (torch and transformers imported in each, a few
# seconds) costs more than they save at ~0.08 s a step (the tests' scale-0.1 builds).
MIN_PARALLEL_STEPS = 200


def default_processes(config: TrainConfig) -> int:
    """SHARDS (one rank per slice) for a run of at least MIN_PARALLEL_STEPS when this process may use that many
    cores, about that many are idle right now, and torch has gloo; else 1.

    On a busy machine (the test suite's two workers) the ranks would only take cores from other work and add their
    all-reduce, so one process computes the slices there: the weights are the same.
    """
    import torch.distributed as dist

    from evomerge.pool import local_cores

    if config.steps < MIN_PARALLEL_STEPS or local_cores() < SHARDS or idle_cores() < SHARDS - 0.5:
        return 1
    return SHARDS if dist.is_available() and dist.is_gloo_available() else 1


def idle_cores(window: float = 0.3) -> float:
    """How many of the machine's cores were idle over the next `window` seconds (Linux's /proc/stat; elsewhere the
    core count minus the one-minute load average)."""
    import time

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    cores = os.cpu_count() or 1
    try:
        idle0, total0 = sample()
        time.sleep(window)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        try:
            return max(0.0, cores - os.getloadavg()[0])
        except (AttributeError, OSError):
            return float(cores)
    return cores * (idle1 - idle0) / max(1, total1 - total0)


def pretrain(model: PreTrainedModel, blocks: torch.Tensor, config: TrainConfig, *,
             processes: int | None = None) -> list[float]:
    """Train `model` in place on packed `blocks` [n, T] in `SHARDS` slices per batch; return each step's loss.

    `processes`: SHARDS (one rank per slice) or 1 (every slice in this process); `default_processes` if None.
    """
    if processes is None:
        processes = default_processes(config)
    if processes == 1:
        return train_causal_lm(model, blocks, None, config, shards=SHARDS)
    if processes != SHARDS:
        raise ValueError(f"processes must be 1 or {SHARDS}, got {processes}")
    with tempfile.TemporaryDirectory(prefix="evomerge-pretrain-") as tmp:
        work = Path(tmp)
        _write_inputs(work, model, blocks, config)
        _run_ranks(work)
        _read_outputs(work, model)
        return json.loads((work / "losses.json").read_text())


# ---------------------------------------------------------------------------------------------------------
# The parent's side


def _save_weights(model: PreTrainedModel, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _write_inputs(work: Path, model: PreTrainedModel, blocks: torch.Tensor, config: TrainConfig) -> None:
    from safetensors.torch import save_file

    _save_weights(model, work / "weights.safetensors")
    save_file({"blocks": blocks.contiguous()}, str(work / "blocks.safetensors"))
    (work / "model_config.json").write_text(model.config.to_json_string())
    (work / "train_config.json").write_text(json.dumps(dataclasses.asdict(config)))


def _loopback_interface() -> str | None:
    """The loopback interface's name ("lo" on Linux, "lo0" on macOS), for gloo's GLOO_SOCKET_IFNAME."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in names if n.startswith("lo")), None)


def _run_ranks(work: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    loopback = _loopback_interface()
    if loopback and "GLOO_SOCKET_IFNAME" not in os.environ:
        env["GLOO_SOCKET_IFNAME"] = loopback
    logs = [open(work / f"rank{r}.log", "w+") for r in range(SHARDS)]
    try:
        ranks = [subprocess.Popen([sys.executable, "-m", "evomerge.miniature.parallel", str(work), str(r)],
                                  stdout=logs[r], stderr=subprocess.STDOUT, env=env) for r in range(SHARDS)]
        failed = _wait(ranks)
        if failed is not None:
            logs[failed].seek(0)
            tail = logs[failed].read()[-2000:]
            raise RuntimeError(f"data-parallel pre-training: rank {failed} exited with "
                               f"{ranks[failed].returncode}:\n{tail}")
    finally:
        for log in logs:
            log.close()


def _wait(ranks: list[subprocess.Popen]) -> int | None:
    """Wait for every rank; when one fails, stop the others (they would wait for it forever) and return it."""
    import time

    while True:
        codes = [r.poll() for r in ranks]
        failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
        if failed is not None:
            for r in ranks:
                if r.poll() is None:
                    r.kill()
                    r.wait()
            return failed
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.2)


def _read_outputs(work: Path, model: PreTrainedModel) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(work / "trained.safetensors")))


# ---------------------------------------------------------------------------------------------------------
# A rank


def _rank(work: Path, rank: int) -> None:
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(1)
    config = AutoConfig.from_pretrained(str(work / "model_config.json"), trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=False).to(torch.float32)
    model.load_state_dict(load_file(str(work / "weights.safetensors")))
    blocks = load_file(str(work / "blocks.safetensors"))["blocks"]
    train = TrainConfig(**json.loads((work / "train_config.json").read_text()))
    dist.init_process_group("gloo", init_method=f"file://{work / 'rendezvous'}", rank=rank, world_size=SHARDS)
    try:
        losses = train_causal_lm(model, blocks, None, train, shards=SHARDS, rank=rank,
                                 all_reduce=lambda flat: dist.all_reduce(flat, op=dist.ReduceOp.SUM))
    finally:
        dist.destroy_process_group()
    if rank == 0:
        _save_weights(model, work / "trained.safetensors")
        (work / "losses.json").write_text(json.dumps(losses))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="one rank of the miniature's data-parallel pre-training (internal)")
    ap.add_argument("work", type=Path)
    ap.add_argument("rank", type=int)
    args = ap.parse_args(argv)
    _rank(args.work, args.rank)


if __name__ == "__main__":
    main()
