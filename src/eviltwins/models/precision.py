"""Arithmetic precision of the detectors' hot loops: float32, or bfloat16 autocast where the
hardware multiplies bfloat16 matrices natively.

Processors with AMX or AVX512-BF16 (oneDNN) and most CUDA GPUs multiply bfloat16 matrices
several times faster than float32 ones (measured on the results page, "Scans at the paper's
scale"). The
optimised variables (masks, patterns), the losses and the optimiser stay in float32; only the
model's convolutions and matrix products run in bfloat16, with 8 bits of mantissa, so logits
differ from float32 ones by about 1% of their scale. This is an approximation, not a rewrite:
the detectors use it only when asked (``precision="bf16"``, or ``"auto"`` on such hardware),
after checking on a few inputs that the model predicts the same classes and its logits lie
within :data:`BF16_RTOL` of their scale; the report records which precision ran.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from eviltwins.base import OneOf
from eviltwins.models.layout import same_logits

#: The detectors' ``precision`` parameter: float32 (the default), bfloat16 autocast, or auto
#: (bfloat16 where the device multiplies it natively, else float32).
PRECISIONS = OneOf("fp32", "bf16", "auto")

#: Largest difference between bfloat16 and float32 logits, as a share of their scale, for the
#: bfloat16 path to be used.
BF16_RTOL = 0.05


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CUDA GPU that supports it,
    or a CPU with AMX or AVX512-BF16 (oneDNN's bfloat16 path)."""
    try:
        if device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        if device.type == "cpu":
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    return False


def wants_bf16(device: torch.device, precision: str) -> bool:
    """``precision`` resolved for ``device``: "bf16", or "auto" on native bfloat16 hardware."""
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """:func:`torch.autocast` to ``dtype`` on ``device``; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def checked_precision(model: nn.Module, example: Tensor, precision: str = "fp32") -> str:
    """The precision a hot loop runs ``model`` in: "bf16" when :func:`wants_bf16` says so and
    ``model`` on ``example`` under bfloat16 autocast predicts the float32 classes with logits
    within :data:`BF16_RTOL` of their scale, else "fp32". The caller wraps its forward passes
    in :func:`autocast` with :func:`dtype_of` the result; the model is not changed."""
    if not wants_bf16(example.device, precision):
        return "fp32"
    with torch.no_grad():
        ref = model(example).float()
        try:
            with autocast(example.device, torch.bfloat16):
                out = model(example).float()
            ok = same_logits(out, ref, BF16_RTOL) and torch.equal(out.argmax(-1), ref.argmax(-1))
        except RuntimeError:
            ok = False
    return "bf16" if ok else "fp32"


def dtype_of(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision: bfloat16 for "bf16", None for "fp32"."""
    return torch.bfloat16 if precision == "bf16" else None


__all__ = [
    "BF16_RTOL",
    "PRECISIONS",
    "autocast",
    "checked_precision",
    "dtype_of",
    "native_bf16",
    "wants_bf16",
]
