"""Spherical linear interpolation (mergekit's `slerp`) between the base model (t = 0) and one other model (t = 1).

Each tensor is one flattened vector; the angle between the two depends on no coefficient, so `prepare` computes
their normalized dot product once, and `combine` only turns `t` into two coefficients and writes
coef_base * base + coef_other * other. Nearly collinear pairs (|dot| > 0.9995) fall back to linear interpolation.
Arithmetic follows mergekit 0.1.5 (float32, or float64 for float64 inputs; chunks of 2^20 elements).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from evomerge.recipe import TensorCoefficients

_CHUNK = 1024 * 1024  # mergekit's _CHUNK_ELEMENTS (one tensor per batch)
_DOT_THRESHOLD = 0.9995
_EPS = 1e-8


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def prepare(base: torch.Tensor | None, inputs: Sequence[torch.Tensor], *, consume: bool = False,
            coeffs: TensorCoefficients | None = None) -> list[torch.Tensor]:
    """[other, dot] with dot the [1, 1] cosine between the flattened base and other."""
    if base is None or len(inputs) != 1:
        raise ValueError("slerp needs a base tensor and exactly one other")
    other = inputs[0]
    dtype = _compute_dtype(base.dtype)
    a, b = base.reshape(1, -1), other.reshape(1, -1)  # [1, numel]
    if not a.shape[1]:
        return [other, torch.ones((1, 1), dtype=dtype, device=base.device)]
    norms_a, norms_b = [], []
    for start in range(0, a.shape[1], _CHUNK):
        norms_a.append(torch.linalg.vector_norm(a[:, start:start + _CHUNK].to(dtype), dim=1, keepdim=True))
        norms_b.append(torch.linalg.vector_norm(b[:, start:start + _CHUNK].to(dtype), dim=1, keepdim=True))
    norm_a = torch.linalg.vector_norm(torch.stack(norms_a), dim=0)
    norm_b = torch.linalg.vector_norm(torch.stack(norms_b), dim=0)
    norm_a = torch.where(norm_a > _EPS, norm_a, 1)
    norm_b = torch.where(norm_b > _EPS, norm_b, 1)
    dots = []
    for start in range(0, a.shape[1], _CHUNK):
        x = a[:, start:start + _CHUNK].to(dtype) / norm_a
        y = b[:, start:start + _CHUNK].to(dtype) / norm_b
        dots.append((x * y).sum(dim=1, keepdim=True))
    return [other, torch.stack(dots).sum(dim=0).clamp(-1, 1)]


def combine(base: torch.Tensor | None, prepared: Sequence[torch.Tensor], coeffs: TensorCoefficients,
            out: torch.Tensor) -> torch.Tensor:
    """out = sin((1-t) theta) / sin(theta) * base + sin(t theta) / sin(theta) * other."""
    if base is None:
        raise ValueError("slerp needs a base tensor")
    other, dot = prepared
    dtype = dot.dtype
    t = torch.tensor([[float(coeffs.shared["t"])]], dtype=dtype, device=dot.device)
    linear = dot.abs() > _DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef_b = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
    a, b, res = base.reshape(1, -1), other.reshape(1, -1), out.view(1, -1)  # [1, numel]
    for start in range(0, a.shape[1], _CHUNK):
        x = a[:, start:start + _CHUNK].to(dtype)
        y = b[:, start:start + _CHUNK].to(dtype)
        res[:, start:start + _CHUNK] = coef_a * x + coef_b * y
    return out
