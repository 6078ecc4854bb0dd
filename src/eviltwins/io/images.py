"""PNG figures of images (stamped examples, reversed triggers), drawn with matplotlib's object
API (a :class:`~matplotlib.figure.Figure` on its own Agg canvas): no pyplot, no global backend
or figure state, no display needed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from eviltwins.training import predict
from eviltwins.triggers import Trigger


def new_figure(nrows: int, ncols: int, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure on its own Agg canvas (no pyplot state) and its ``nrows x ncols`` axes."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def show_image(ax: Any, img: Tensor) -> None:
    """Draw one CHW image in [0, 1] on ``ax`` (gray for one channel), without ticks."""
    a = img.detach().cpu().clamp(0, 1)
    if a.shape[0] == 1:
        ax.imshow(a[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(a.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_examples_png(
    model: nn.Module,
    x: Tensor,
    trigger: Trigger,
    target: int,
    path: str | os.PathLike[str],
    classes: Sequence[str] = (),
    n: int = 8,
) -> None:
    """Clean images (top row) vs stamped images (bottom row), each titled with the model's
    prediction; stamped predictions equal to ``target`` are drawn in red."""
    x = x[:n].cpu()
    stamped = trigger.stamp(x)
    p_clean = predict(model, x).argmax(1)
    p_stamp = predict(model, stamped).argmax(1)

    def name(i: int) -> str:
        return classes[i] if classes else str(i)

    fig, axes = new_figure(2, len(x), (1.5 * len(x), 3.8))
    for i in range(len(x)):
        show_image(axes[0, i], x[i])
        axes[0, i].set_title(f"pred {name(int(p_clean[i]))}", fontsize=8)
        show_image(axes[1, i], stamped[i])
        hit = int(p_stamp[i]) == target
        axes[1, i].set_title(
            f"pred {name(int(p_stamp[i]))}", fontsize=8, color="red" if hit else "black"
        )
    axes[0, 0].set_ylabel("clean", fontsize=9)
    axes[1, 0].set_ylabel("stamped", fontsize=9)
    fig.suptitle(f"trigger -> target {name(target)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def save_image_grid(
    images: Tensor,
    path: str | os.PathLike[str],
    titles: Sequence[str] = (),
    ncols: int = 10,
    suptitle: str = "",
) -> None:
    """A grid of (N, C, H, W) images in [0, 1] with optional titles."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = new_figure(nrows, ncols, (1.3 * ncols, 1.45 * nrows))
    for i, ax in enumerate(axes.flat):
        if i < n:
            show_image(ax, images[i])
            if i < len(titles):
                ax.set_title(titles[i], fontsize=7)
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


__all__ = ["save_examples_png", "save_image_grid"]
