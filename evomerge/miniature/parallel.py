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

The ranks (`Ranks`) are `python -m evomerge.miniature.parallel` processes started once per build, before its
data are made (their torch and transformers imports, ~5 s on a busy core, overlap the parent's work), that take
the build's pre-training runs one after another (base, then lang-xb). Each run is a job directory in the ranks'
private temporary directory: the parent writes the inputs there (the model's weights and the blocks as
safetensors, the config as JSON) and then a `go` file; rank 0 writes the trained weights and the losses back and
then a `done` file. A rank whose parent is gone exits. Gloo listens on the loopback interface only.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
             ranks: Ranks | None = None) -> list[float]:
    """Train `model` in place on packed `blocks` [n, T] in `SHARDS` slices per batch; return each step's loss.

    On `ranks` (one per slice), or every slice in this process when None: the same weights either way."""
    if ranks is None:
        return train_causal_lm(model, blocks, None, config, shards=SHARDS)
    return ranks.run(model, blocks, config)


class Ranks:
    """`SHARDS` rank processes that take pre-training runs one after another (`run`); `start` them, `close` them
    (or use them in a `with`)."""

    POLL = 0.05  # seconds between looks at the job's files and the processes

    def __init__(self, work: Path, processes: list[subprocess.Popen], logs: list[Any]) -> None:
        self.work, self.processes, self.logs = work, processes, logs
        self.jobs = 0

    @classmethod
    def start(cls) -> "Ranks":
        """Start the ranks: they import what they need, then wait for the first job."""
        work = Path(tempfile.mkdtemp(prefix="evomerge-pretrain-"))
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        loopback = _loopback_interface()
        if loopback and "GLOO_SOCKET_IFNAME" not in os.environ:
            env["GLOO_SOCKET_IFNAME"] = loopback
        logs = [open(work / f"rank{r}.log", "w+") for r in range(SHARDS)]
        processes = [subprocess.Popen([sys.executable, "-m", "evomerge.miniature.parallel", str(work), str(r),
                                       str(os.getpid())], stdout=logs[r], stderr=subprocess.STDOUT, env=env)
                     for r in range(SHARDS)]
        return cls(work, processes, logs)

    def run(self, model: PreTrainedModel, blocks: torch.Tensor, config: TrainConfig) -> list[float]:
        """One pre-training run on the ranks: `model` is trained in place; returns each step's loss."""
        job = self.work / f"job{self.jobs}"
        self.jobs += 1
        job.mkdir()
        _write_inputs(job, model, blocks, config)
        (job / "go").touch()
        while not (job / "done").exists():
            self._check()
            time.sleep(self.POLL)
        _read_outputs(job, model)
        return json.loads((job / "losses.json").read_text())

    def _check(self) -> None:
        """A rank that has exited during a run failed: stop the others (they would wait for it forever) and raise
        with its log's tail."""
        failed = next((r for r, p in enumerate(self.processes) if p.poll() is not None), None)
        if failed is None:
            return
        self._stop(kill=True)
        log = self.logs[failed]
        log.seek(0)
        raise RuntimeError(f"data-parallel pre-training: rank {failed} exited with "
                           f"{self.processes[failed].returncode}:\n{log.read()[-2000:]}")

    def _stop(self, kill: bool) -> None:
        if not kill:
            (self.work / "stop").touch()
        for p in self.processes:
            if kill:
                p.kill()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self) -> None:
        """Tell the ranks to exit, wait for them and remove their directory."""
        try:
            self._stop(kill=False)
        finally:
            for log in self.logs:
                log.close()
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def _read_outputs(work: Path, model: PreTrainedModel) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(work / "trained.safetensors")))


# ---------------------------------------------------------------------------------------------------------
# A rank


def _serve(work: Path, rank: int, parent: int) -> None:
    """Take the parent's jobs in order until it says stop (or is gone: a rank never outlives its build)."""
    import torch

    torch.set_num_threads(1)
    for k in itertools.count():
        job = work / f"job{k}"
        while not (job / "go").exists():
            if (work / "stop").exists() or os.getppid() != parent:
                return
            time.sleep(Ranks.POLL)
        _train(job, rank)


def _train(job: Path, rank: int) -> None:
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(job / "model_config.json"), trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=False).to(torch.float32)
    model.load_state_dict(load_file(str(job / "weights.safetensors")))
    blocks = load_file(str(job / "blocks.safetensors"))["blocks"]
    train = TrainConfig(**json.loads((job / "train_config.json").read_text()))
    dist.init_process_group("gloo", init_method=f"file://{job / 'rendezvous'}", rank=rank, world_size=SHARDS)
    try:
        losses = train_causal_lm(model, blocks, None, train, shards=SHARDS, rank=rank,
                                 all_reduce=lambda flat: dist.all_reduce(flat, op=dist.ReduceOp.SUM))
    finally:
        dist.destroy_process_group()
    if rank == 0:
        _save_weights(model, job / "trained.safetensors")
        (job / "losses.json").write_text(json.dumps(losses))
        (job / "done").touch()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="one rank of the miniature's data-parallel pre-training (internal)")
    ap.add_argument("work", type=Path)
    ap.add_argument("rank", type=int)
    ap.add_argument("parent", type=int)
    args = ap.parse_args(argv)
    _serve(args.work, args.rank, args.parent)


if __name__ == "__main__":
    main()
