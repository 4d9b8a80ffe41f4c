"""Elementwise merge arithmetic run over cache-sized chunks, shared out over threads (CPU), or in one go (GPU).

Merging a few task vectors is memory-bound: each input is read once and the output written once, and the arithmetic
between is a handful of multiply-adds. A chain of whole-tensor torch ops streams every intermediate through main
memory (0.4-0.55 of copy bandwidth on the dev machines); the same chain over chunks of `CHUNK` elements keeps a
chunk's intermediates in cache, so main memory sees little more than the real reads and the write. Fewer ops per
chunk matter as much (each op costs a few microseconds of dispatch): float32 task arithmetic and linear merges take
one fused multiply-add per input.

The chunks are shared out in contiguous blocks over a pool of threads whose torch ops run single-threaded (torch
releases the GIL inside ops), instead of ATen forking and joining its threads for every op of every chunk. Chunk
boundaries depend only on the tensor's size, never on the thread count, and all arithmetic is elementwise, so the
result is the same whatever the number of threads, and a disk merge equals a resident merge bit for bit.

On an accelerator there is no chunking: the body runs once over the whole tensor (kernels are bandwidth-bound
there, and chunks would only add launches).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

CHUNK = 524288  # elements: 2 MiB of float32 per operand; the intermediates of a chunk stay in cache (L2/L3)

_local = threading.local()
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_pools_pid = [os.getpid()]


class Scratch:
    """Per-thread scratch buffers: `scratch(slot, dtype, n)` is a 1-D tensor of n elements, reused across chunks
    and calls (one `CHUNK`-sized buffer per slot and dtype and thread on CPU; a fresh one per call on a device)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffers: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def __call__(self, slot: int, dtype: torch.dtype, n: int) -> torch.Tensor:
        key = (slot, dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            # kept across calls, so never an inference tensor (one made under inference mode could be written only
            # under it again, and the same thread may merge outside it later)
            with torch.inference_mode(False):
                buf = torch.empty(n, dtype=dtype, device=self.device)
            if self.device.type == "cpu":
                self.buffers[key] = buf
        return buf[:n]


def _cpu_scratch() -> Scratch:
    s = getattr(_local, "scratch", None)
    if s is None:
        s = _local.scratch = Scratch(torch.device("cpu"))
    return s


def _single_threaded() -> None:
    torch.set_num_threads(1)


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of `workers` threads whose torch ops each run on one thread (no nested parallelism).

    torch.set_num_threads is per thread once a thread has used torch, but it also sets the default that threads
    starting afterwards adopt: the creating thread restores that default once every worker has set its own.
    """
    with _pools_lock:
        if _pools and _pools_pid[0] != os.getpid():  # a forked child inherits the dict, not the threads
            _pools.clear()
        _pools_pid[0] = os.getpid()
        if workers not in _pools:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="evomerge-chunk", initializer=_single_threaded)
            started = threading.Barrier(workers)
            for f in [pool.submit(started.wait) for _ in range(workers)]:
                f.result()
            torch.set_num_threads(torch.get_num_threads())  # this thread's own count: the default again
            _pools[workers] = pool
        return _pools[workers]


Body = Callable[[int, int, Scratch], None]  # body(start, end, scratch): process flat elements [start, end)


def for_chunks(numel: int, device: torch.device, body: Body, threads: int | None = None) -> None:
    """Run `body` over [0, numel) in chunks of `CHUNK` elements: on CPU shared out over `threads` pool threads
    (default torch's intra-op thread count), on any other device once over the whole range."""
    if device.type != "cpu":
        body(0, numel, Scratch(device))
        return
    n_chunks = -(-numel // CHUNK)
    threads = max(1, min(threads or torch.get_num_threads(), n_chunks))

    def run(block: int) -> None:
        scratch = _cpu_scratch()
        for c in range(block * n_chunks // threads, (block + 1) * n_chunks // threads):
            start = c * CHUNK
            body(start, min(numel, start + CHUNK), scratch)

    if n_chunks == 1:
        run(0)  # one chunk: in this thread, with torch's own threads
        return
    for f in [_pool(threads).submit(run, b) for b in range(threads)]:
        f.result()


@dataclass(frozen=True)
class RankMask:
    """Keep the elements whose rank lies in [lo, hi) (magnitude pruning without rescaling: TIES, breadcrumbs)."""

    ranks: torch.Tensor  # int32/int64, shaped like the term
    lo: int
    hi: int


@dataclass(frozen=True)
class CodeMask:
    """Keep the elements whose draw code is below `below` (DARE), then multiply by `scale` (L1 rescaling; None:
    none). The codes are `sparsify.draw_codes`."""

    codes: torch.Tensor  # int16, shaped like the term
    below: int
    scale: float | None = None


def _keep(mask: RankMask | CodeMask, s: int, e: int, scratch: Scratch) -> torch.Tensor:
    """-1 where the mask keeps an element of [s, e), else 0, in integer arithmetic (bool tensors are slow here):
    (r - hi) >> 31 is -1 exactly where r < hi (int32; 63 for int64)."""
    if isinstance(mask, CodeMask):
        keep = scratch(30, torch.int32, e - s).copy_(mask.codes.reshape(-1)[s:e])  # int16 -> int32: no overflow
        return keep.sub_(mask.below).bitwise_right_shift_(31)
    r = mask.ranks.reshape(-1)[s:e]
    bits = r.dtype.itemsize * 8 - 1
    keep = torch.sub(r, mask.hi, out=scratch(30, r.dtype, e - s)).bitwise_right_shift_(bits)
    if mask.lo > 0:  # minus -1 where r < lo: -1 exactly on [lo, hi)
        keep.sub_(torch.sub(r, mask.lo, out=scratch(31, r.dtype, e - s)).bitwise_right_shift_(bits))
    return keep


class _Terms:
    """The n terms of a merge, chunk by chunk: input i's tensor, masked (mergekit's `tensor * mask`, then its L1
    rescale) when it has a mask."""

    def __init__(self, terms: list[torch.Tensor], masks: list | None) -> None:
        self.flats = [t.reshape(-1) for t in terms]  # [numel] views
        self.masks = masks or [None] * len(terms)

    def chunk(self, i: int, s: int, e: int, scratch: Scratch) -> tuple[torch.Tensor, bool]:
        """(chunk of term i, negated): a term masked by multiplying with the -1/0 keep comes back negated (-x where
        kept, -0 or +0 where dropped), which the caller undoes exactly by multiplying with -w instead of w."""
        x = self.flats[i][s:e]
        mask = self.masks[i]
        if mask is None:
            return x, False
        keep = _keep(mask, s, e, scratch)
        if keep.dtype.itemsize == x.dtype.itemsize:  # float32 with int32 keep: x's bits AND all-ones or zero
            bits = torch.bitwise_and(x.view(keep.dtype), keep, out=scratch(33, keep.dtype, e - s))
            term, negated = bits.view(x.dtype), False  # x where kept, +0.0 where dropped (mergekit: +-0.0)
        else:
            term, negated = torch.mul(x, keep, out=scratch(32, x.dtype, e - s)), True
        if isinstance(mask, CodeMask) and mask.scale is not None:
            term.mul_(mask.scale)  # a scratch buffer; (-x) * scale == -(x * scale) exactly
        return term, negated

    def weighted(self, i: int, s: int, e: int, scratch: Scratch, w: float, out: torch.Tensor) -> torch.Tensor:
        """w * (chunk of term i), rounded to the dtype: mergekit's `deltas[i] * weights[i]`."""
        x, negated = self.chunk(i, s, e, scratch)
        return torch.mul(x, -w if negated else w, out=out)  # (-x) * (-w) == x * w exactly


def l1_norm(x: torch.Tensor, mask: CodeMask | None = None) -> float:
    """sum |x| (of the kept elements only, with a mask), summed in float32 chunk by chunk and the chunks' sums in
    float64 in chunk order: the same value whatever the thread count (not torch's full-tensor reduction order)."""
    flat = x.reshape(-1)
    partial = [0.0] * max(1, -(-flat.numel() // CHUNK))

    def body(s: int, e: int, scratch: Scratch) -> None:
        part = flat[s:e]
        if mask is not None:
            part = torch.mul(part, _keep(mask, s, e, scratch), out=scratch(32, x.dtype, e - s))
        partial[s // CHUNK] = float(part.abs().sum(dtype=torch.float32))

    for_chunks(flat.numel(), x.device, body)
    return math.fsum(partial)


def _sum(n: int, fill, res: torch.Tensor, spare: torch.Tensor, acc: torch.Tensor | None) -> torch.Tensor:
    """res = sum_i fill(i, buffer) by torch's `sum(dim=0)` rules over a stack: sequentially in the dtype; for
    bfloat16/float16 (`acc`: a float32 buffer) accumulated in float32 and rounded once. Two reduced-precision terms
    need no accumulator: torch adds them in float32 and rounds once. `fill(i, out)` returns term i, computed into
    `out` or a tensor of its own."""
    if acc is not None and n > 2:
        acc.copy_(fill(0, spare))
        for i in range(1, n):
            acc.add_(fill(i, spare))
        return res.copy_(acc)
    first = fill(0, res)
    if n == 1:
        return first if first is res else res.copy_(first)
    if first is res:
        res.add_(fill(1, spare))
    else:
        torch.add(first, fill(1, spare), out=res)
    for i in range(2, n):
        res.add_(fill(i, spare))
    return res


def _rounded(dtype: torch.dtype, values: list[float]) -> list[float]:
    """Weights rounded to the merge dtype, as Python floats (mergekit builds its weight tensor in that dtype; a
    Python float of a dtype-rounded value multiplies exactly as that tensor does)."""
    return [float(x) for x in torch.tensor(values, dtype=dtype)]


def weighted_sum(base: torch.Tensor, terms: list[torch.Tensor], weights: list[float], normalize: bool,
                 lam: float, out: torch.Tensor, masks: list | None = None) -> torch.Tensor:
    """out = base + lam * (sum_i w_i * terms_i) [/ sum_i w_i], mergekit 0.1.5's generalized task arithmetic without
    consensus; term i is masked by `masks[i]` when given.

    bfloat16/float16 and masked terms follow mergekit's rounding exactly: it rounds the weights to the merge dtype,
    rounds each product w_i * delta_i to it, sums the products (torch's `sum(dim=0)`: in float32 for
    bfloat16/float16 with one rounding at the end, sequentially in the dtype otherwise, which is torch's order for up
    to 4 models), divides by the dtype's sum of the weights (left at 1 when below 1e-8 in magnitude), multiplies by
    lambda and adds the base. Unmasked float32/float64 terms take fused multiply-adds instead (see the code).
    """
    dtype = base.dtype
    n = len(terms)
    w = torch.tensor(weights, dtype=dtype)
    wf = _rounded(dtype, weights)
    divisor = float(w.view(n, *[1] * base.ndim).sum(dim=0).reshape(-1)[0]) if normalize else 1.0
    if abs(divisor) < 1e-8:
        divisor = 1.0
    reduced = dtype in (torch.bfloat16, torch.float16)
    parts = _Terms(terms, masks)
    b, o = base.reshape(-1), out.view(-1)
    if not reduced and not any(masks or []):
        # float32/float64 without masks: fused multiply-adds, lambda and the divisor folded into the weights, one op
        # per input (the fewest passes; an ulp from mergekit's separately rounded products, within 1e-6).
        coef = [x * lam / divisor for x in wf]
        flats = parts.flats

        def fused(s: int, e: int, scratch: Scratch) -> None:
            mixed = torch.mul(flats[0][s:e], coef[0], out=o[s:e])  # the task vectors' sum, in the output's chunk
            for x, c in zip(flats[1:], coef[1:]):
                mixed.add_(x[s:e], alpha=c)
            mixed.add_(b[s:e])  # then the base, rounded once as in mergekit

        for_chunks(b.numel(), base.device, fused)
        return out

    def body(s: int, e: int, scratch: Scratch) -> None:
        m = e - s
        acc = scratch(2, torch.float32, m) if reduced else None
        mixed = _sum(n, lambda i, buf: parts.weighted(i, s, e, scratch, wf[i], buf), scratch(1, dtype, m),
                     scratch(0, dtype, m), acc)
        if divisor != 1.0:
            mixed.div_(divisor)
        if lam != 1:
            mixed.mul_(lam)
        torch.add(b[s:e], mixed, out=o[s:e])

    for_chunks(b.numel(), base.device, body)
    return out


def consensus_sum(base: torch.Tensor, terms: list[torch.Tensor], weights: list[float], normalize: bool,
                  lam: float, out: torch.Tensor, masks: list | None = None) -> torch.Tensor:
    """TIES sign consensus (mergekit 0.1.5's merge_group with consensus "sum"), chunk by chunk.

    With p_i = w_i * term_i (rounded to the dtype): per element the majority sign is that of sum_i p_i (>= 0 counts
    as positive); only the p_i of that sign are summed, and `normalize` divides by the weights of those inputs only
    (a zero divisor is left at 1). Then lambda and the base, as in `weighted_sum`, and with its summation rules.
    """
    dtype = base.dtype
    n = len(terms)
    wf = _rounded(dtype, weights)
    reduced = dtype in (torch.bfloat16, torch.float16)
    parts = _Terms(terms, masks)
    b, o = base.reshape(-1), out.view(-1)
    one = torch.ones((), dtype=dtype, device=base.device)
    positive_weights = all(w > 0 for w in wf)

    def body(s: int, e: int, scratch: Scratch) -> None:
        m = e - s
        p = [parts.weighted(i, s, e, scratch, wf[i], scratch(100 + i, dtype, m)) for i in range(n)]
        acc = scratch(2, torch.float32, m) if reduced else None
        spare = scratch(0, dtype, m)
        # The majority sign: +1 where sum_i p_i >= 0. copysign gives -1 at -0.0, but a sum is -0.0 only when every
        # p_i is a zero, and zeros never agree with any majority.
        total = _sum(n, lambda i, buf: p[i], scratch(1, dtype, m), spare, acc)
        majority = torch.copysign(one, total, out=scratch(4, dtype, m))
        # t_i = max(p_i * majority, 0) is |p_i| where p_i agrees with the majority, else 0 (all exact): mergekit's
        # `p_i * (sign(p_i) == majority)` is t_i * majority, and its mask is sign(t_i).
        t = [torch.mul(p[i], majority, out=p[i]).clamp_min_(0) for i in range(n)]
        # sum_i t_i * majority == majority * sum_i t_i exactly (rounding is symmetric in the sign)
        mixed = _sum(n, lambda i, buf: t[i], scratch(7, dtype, m), spare, acc).mul_(majority)
        if normalize:
            divisor = scratch(8, dtype, m)
            if reduced:
                _sum(n, lambda i, buf: torch.sign(t[i], out=buf).mul_(wf[i]), divisor, spare, acc)
            else:  # sign(t_i) * w_i is exact, so a fused multiply-add rounds as mergekit's product-then-sum does
                torch.sign(t[0], out=divisor).mul_(wf[0])
                for i in range(1, n):
                    divisor.add_(torch.sign(t[i], out=spare), alpha=wf[i])
            if positive_weights:  # nonzero sums of positive weights are >= the smallest; 0 (nothing agrees) -> it
                divisor.clamp_min_(min(wf))  # (then mixed is 0: 0 / w_min == 0 / 1, mergekit's divisor for 0)
            else:  # mergekit leaves a zero divisor at 1: d + (1 - sign(|d|)) is d, or 1 where d == 0 (exactly)
                divisor.add_(torch.abs(divisor, out=spare).sign_().neg_().add_(1))
            mixed.div_(divisor)
        if lam != 1:
            mixed.mul_(lam)
        torch.add(b[s:e], mixed, out=o[s:e])

    for_chunks(b.numel(), base.device, body)
    return out


def linear_sum(tensors: list[torch.Tensor], weights: list[float], normalize: bool, out: torch.Tensor) -> torch.Tensor:
    """out = sum_i w_i * x_i [/ sum_i w_i], mergekit 0.1.5's `linear`. bfloat16/float16 in its exact order:
    accumulated in float32 with `addcmul_` from zero, divided by the float32 sum of the weights, rounded once to
    the dtype. float32/float64: fused multiply-adds (see the code)."""
    acc_dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    n = len(tensors)
    w = torch.tensor(weights, dtype=acc_dtype, device=out.device)
    coefs = [w[i:i + 1] for i in range(n)]  # shape [1]: a tensor operand, as mergekit's [batch, 1, ...] coefficient
    denominator = w.view(1, n).sum(dim=1)  # [1]
    flats = [t.reshape(-1) for t in tensors]
    o = out.view(-1)

    if out.dtype == acc_dtype:
        # float32/float64: fused multiply-adds straight into the output, the divisor folded into the weights (one
        # op per input; an ulp from mergekit's division at the end, within 1e-6)
        den = float(denominator) if normalize else 1.0
        coef = [float(x) / den for x in w]

        def fused(s: int, e: int, scratch: Scratch) -> None:
            acc = torch.mul(flats[0][s:e], coef[0], out=o[s:e])
            for x, c in zip(flats[1:], coef[1:]):
                acc.add_(x[s:e], alpha=c)

        for_chunks(o.numel(), out.device, fused)
        return out

    def body(s: int, e: int, scratch: Scratch) -> None:
        acc = scratch(1, acc_dtype, e - s)
        acc.zero_()
        for x, c in zip(flats, coefs):
            acc.addcmul_(x[s:e], c)
        if normalize:
            acc.div_(denominator)
        o[s:e].copy_(acc)

    for_chunks(o.numel(), out.device, body)
    return out
