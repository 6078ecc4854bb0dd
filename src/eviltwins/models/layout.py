"""Memory layout for the detectors' hot loops: channels-last (NHWC) convolution weights on CPU.

On CPU, oneDNN convolutions, max-pooling and their backward passes run faster on NHWC tensors:
PyTorch's NCHW max-pool kernel took 5.4 ms for the small CNN's first pooling at 64 MNIST images,
its NHWC kernel 0.45 ms. With grey images the strides must be spelled out (see :func:`nhwc`);
with them, NeuralCleanse's step ran 77 ms in NHWC against 105 ms in NCHW, so NeuralCleanse and
ABS use it by default (auto). The arithmetic is the same: only the order of the reductions
inside a convolution changes, so outputs agree to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from eviltwins.base import OneOf

# The detectors' ``channels_last`` parameter (--channels-last / --no-channels-last): None =
# auto (the default: on for a CPU model with 2-D convolutions), True or False.
CHANNELS_LAST = OneOf(None, True, False)


def images_per_pass(device: torch.device, cpu_images: int) -> int:
    """How many images a detector's hot loop sends through the model at a time: ``cpu_images``
    on CPU, where a bounded pass keeps memory bounded and runs faster than one large batch,
    else unbounded (a GPU wants one large batch)."""
    return cpu_images if device.type == "cpu" else 1 << 30


#: Images a CPU forward/backward pass of a detector's optimisation (NeuralCleanse, ABS's
#: reverse engineering) holds at up to 32 x 32 pixels in float32, and as many more as a
#: narrower type fits in the same bytes (128 in bfloat16): the activations' bytes per pass
#: stay the same, under the allocator's reuse bound for a ResNet-18's widest maps
#: (:mod:`eviltwins.allocator`), while a batch-norm ResNet or VGG gets passes large enough to
#: amortise each layer's fixed cost.
CPU_PASS_IMAGES = 64
#: Images a CPU gradient-free forward of a detector holds (ABS's stimulation and REASR at up
#: to 32 x 32 pixels, fewer for larger images; STRIP's and SCALE-UP's forwards): no
#: activations are kept for a backward pass.
CPU_FORWARD_IMAGES = 128
#: The fewest images a CPU pass of a detector holds, whatever the image size.
MIN_PASS_IMAGES = 16


def pass_size(device: torch.device, pixels: int = 1024, dtype: torch.dtype | None = None) -> int:
    """Images per forward/backward pass of a detector's optimisation on inputs of ``pixels``
    pixels whose model runs in ``dtype`` (None: float32): on CPU :data:`CPU_PASS_IMAGES` x
    4 / the type's bytes at up to 32 x 32 (64 in float32, 128 in bfloat16), proportionally
    fewer for larger images (at least :data:`MIN_PASS_IMAGES`: 16 at 224 x 224), so that
    memory stays near that of a pass at 32 x 32; unbounded on a GPU."""
    images = CPU_PASS_IMAGES * 4 // (dtype or torch.float32).itemsize
    return images_per_pass(device, pixel_scaled(images, pixels, MIN_PASS_IMAGES))


def passes(rows: Tensor, n_images: int, per_pass: int) -> list[tuple[Tensor, slice]]:
    """The passes of one optimisation step over ``rows`` (labels or candidates, each with its
    own trigger) and their ``n_images`` images: (rows, image slice) pairs that cover every row
    with every image once, at most ``per_pass`` stamped images per pass: whole rows together
    while one row's images fit, else one row at a time in image chunks. The step's loss is a
    sum of per-row terms, so the passes' gradients add up to the one-pass gradient."""
    if n_images <= per_pass:
        per = per_pass // n_images
        return [(rows[k0 : k0 + per], slice(0, n_images)) for k0 in range(0, len(rows), per)]
    return [
        (rows[k : k + 1], slice(i0, min(n_images, i0 + per_pass)))
        for k in range(len(rows))
        for i0 in range(0, n_images, per_pass)
    ]


def pixel_scaled(images: int, pixels: int, floor: int = 1) -> int:
    """``images`` for inputs of up to 32 x 32 ``pixels``, proportionally fewer for larger
    ones, at least ``floor``: how many images a pass holds so that its activations stay near
    those of ``images`` images of 32 x 32."""
    return max(floor, images * 1024 // max(1024, pixels))


def nhwc(x: Tensor) -> Tensor:
    """``x`` (N, C, H, W) copied into channels-last strides ``(H*W*C, 1, W*C, C)``, spelled out
    also for C = 1: there ``x.contiguous(memory_format=torch.channels_last)`` keeps the NCHW
    strides (both layouts are "contiguous" when C = 1), PyTorch then reads the tensor as NCHW,
    and a convolution on it writes NCHW output, which every layer after it converts back and
    forth. Differentiable (the gradient reaches ``x``)."""
    n, c, h, w = x.shape
    out = torch.empty_strided(x.shape, (h * w * c, 1, w * c, c), dtype=x.dtype, device=x.device)
    return out.copy_(x)


def same_logits(out: Tensor, ref: Tensor, rtol: float) -> bool:
    """Whether ``out`` has ``ref``'s shape and lies within ``rtol`` of its scale (the largest
    absolute logit, at least 1): the check a model passes before a faster form of it is used."""
    if out.shape != ref.shape:
        return False
    scale = ref.abs().max().clamp_min(1.0)
    return bool(((out - ref).abs().max() <= rtol * scale).item())


def has_conv2d(model: nn.Module) -> bool:
    """Whether ``model`` holds a 2-D convolution (the layers NHWC speeds up)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def wants_channels_last(model: nn.Module, example: Tensor, mode: bool | None) -> bool:
    """``mode`` resolved: None (auto) means a 4-D input on CPU into a model with a Conv2d."""
    if mode is not None:
        return mode and example.ndim == 4
    return example.ndim == 4 and example.device.type == "cpu" and has_conv2d(model)


@contextlib.contextmanager
def channels_last(model: nn.Module, example: Tensor, mode: bool | None = None) -> Iterator[bool]:
    """For the block, hold ``model``'s 4-D parameters in channels-last layout when
    :func:`wants_channels_last` says so and the model runs the same in it; yields whether it
    is in use. The model must not be trained inside the block (the detectors run it frozen).

    The layout is checked first: the model runs ``example`` (a few inputs) in both layouts
    without gradients; a model that fails in channels-last (e.g. ``x.view(n, -1)`` on a
    feature map) or whose logits differ by more than 1e-4 of their scale keeps its layout.
    On exit the original parameter tensors are put back, so the caller's model is untouched.
    """
    if not wants_channels_last(model, example, mode):
        yield False
        return
    params = {id(p): p for p in model.parameters() if p.ndim == 4}.values()
    saved = [(p, p.data) for p in params]
    with torch.no_grad():
        ref = model(example)
        for p, data in saved:
            p.data = nhwc(data)
        try:
            same = same_logits(model(example), ref, 1e-4)
        except RuntimeError:
            same = False
    if not same:
        for p, data in saved:
            p.data = data
        yield False
        return
    try:
        yield True
    finally:
        for p, data in saved:
            p.data = data
