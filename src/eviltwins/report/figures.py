"""The paper's figures, a registry: each figure is registered by name (the names a sweep spec's
``figures`` list takes), says whether the sweep's rows support it and renders itself into a PNG
with matplotlib's object API (a :class:`~matplotlib.figure.Figure` on its own Agg canvas: no
pyplot, no global backend or figure state; matplotlib is imported only when drawing).

- ``fig10``: efficacy heat map over size x transparency (paper Fig. 10);
- ``fig11``: stamped samples per attack and size (Fig. 11);
- ``fig12`` / ``fig13``: ASR vs size (one panel per transparency) / vs transparency (Fig. 12-13);
- ``fig14``: the detectors that declare it in their ``report_metric`` vs size (Fig. 14);
- ``fig15``: the input filters that declare it (STRIP vs the NC+STRIP ensemble, Fig. 15);
- ``abs``: ABS's REASR vs size (Appendix C);
- ``population-roc`` / ``population-scores``: with clean and backdoored models, each model
  inspector's ROC curve and histograms of its largest anomaly over the models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eviltwins.report.cells import Shown
from eviltwins.report.table import Row, attacked, datasets, mean_std, num, panels, series


@dataclass(frozen=True)
class FigureInput:
    """What a figure draws from: the finished rows, the detectors the report shows, the run
    folder (for the cells' example files) and each dataset's class names."""

    rows: Sequence[Row]
    shown: Sequence[Shown] = ()
    run_dir: Path | None = None
    classes: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def attacked(self) -> list[Row]:
        return attacked(self.rows)

    @property
    def clean_rows(self) -> list[Row]:
        return [r for r in self.rows if r["attack_name"] == "none"]

    def showing(self, figure: str) -> list[Shown]:
        """The shown detectors whose ``report_metric`` names ``figure``."""
        return [s for s in self.shown if figure in s.metric.figures]


@dataclass(frozen=True)
class PaperFigure:
    """A registered figure: ``file`` it writes, ``supports`` (whether the rows can show it) and
    ``draw`` (writes the PNG; None where there is nothing to draw after all)."""

    name: str
    file: str
    draw: Callable[[FigureInput, Path], Path | None]
    supports: Callable[[FigureInput], bool] = lambda data: True

    def render(self, data: FigureInput, out: Path) -> Path | None:
        """Write the figure into folder ``out`` if the rows support it; its path, or None."""
        return self.draw(data, out / self.file) if self.supports(data) else None


FIGURES: dict[str, PaperFigure] = {}


def figure(
    name: str, file: str, supports: Callable[[FigureInput], bool] = lambda data: True
) -> Callable[[Callable[[FigureInput, Path], Path | None]], PaperFigure]:
    """Register the decorated drawing function as the figure ``name``."""

    def deco(draw: Callable[[FigureInput, Path], Path | None]) -> PaperFigure:
        if name in FIGURES:
            raise RuntimeError(f"figure {name!r} is registered twice")
        FIGURES[name] = PaperFigure(name, file, draw, supports)
        return FIGURES[name]

    return deco


# --- drawing -----------------------------------------------------------------------------------
def _figure(nrows: int, ncols: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    from eviltwins.io.images import new_figure  # matplotlib is loaded only when drawing

    return new_figure(nrows, ncols, figsize)


def _save(fig: Any, path: Path, title: str, fontsize: int = 11) -> Path:
    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _style(label: str) -> dict[str, Any]:
    star = label.endswith("*")
    return {"marker": "o" if star else "s", "linestyle": "-" if star else "--"}


def seed_note(rows: Sequence[Row]) -> str:
    """`` (mean ± std over 3 seeds)`` for a title when the rows hold several seeds."""
    n = len({r.get("seed") for r in rows})
    return f" (mean ± std over {n} seeds)" if n > 1 else ""


def line_figure(
    rows: Sequence[Row],
    path: Path,
    *,
    x: str,
    panel_key: str,
    metrics: Sequence[tuple[str, str, float | None]],
    title: str,
    group: Callable[[Row], str] = lambda r: r["attack"],
    ylim: tuple[float, float] | None = None,
    clean_rows: Sequence[Row] = (),
) -> Path | None:
    """Rows: (dataset, model) x metric; columns: values of ``panel_key``; a line per group:
    its mean over seeds with error bars and a band of one standard deviation (the spread over
    seeds). ``metrics`` are (column, axis label, threshold
    line or None); ``clean_rows`` draw the clean model's mean over seeds as a dotted line."""
    blocks = datasets(rows)
    cols = panels(rows, panel_key) if panel_key else [None]
    if not blocks or not any(num(r.get(m)) == num(r.get(m)) for r in rows for m, _, _ in metrics):
        return None
    nr, nc = len(blocks) * len(metrics), len(cols)
    fig, axes = _figure(nr, nc, (3.6 * nc, 2.9 * nr))
    for bi, (ds, model) in enumerate(blocks):
        for mi, (col, ylabel, thr) in enumerate(metrics):
            for pi, pv in enumerate(cols):
                ax = axes[bi * len(metrics) + mi, pi]
                sel = [
                    r
                    for r in rows
                    if r["dataset"] == ds
                    and r["model"] == model
                    and (panel_key is None or r.get(panel_key) == pv)
                ]
                ticks: set[float] = set()
                for g, (xs, ms, ss) in sorted(series(sel, x, col, group).items()):
                    bars = ax.errorbar(xs, ms, yerr=ss, label=g, capsize=2, **_style(g))
                    if any(v > 0 for v in ss):
                        low = [m - v for m, v in zip(ms, ss, strict=True)]
                        high = [m + v for m, v in zip(ms, ss, strict=True)]
                        ax.fill_between(xs, low, high, alpha=0.15, color=bars[0].get_color())
                    ticks.update(xs)
                if 0 < len(ticks) <= 10:
                    ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
                clean, _ = mean_std(
                    [
                        num(cr.get(col))
                        for cr in clean_rows
                        if (cr["dataset"], cr["model"]) == (ds, model)
                    ]
                )
                if not math.isnan(clean):
                    ax.axhline(clean, color="grey", linestyle=":", label="clean model")
                if thr is not None:
                    ax.axhline(thr, color="red", linewidth=0.8, linestyle="-.", label="threshold")
                if ylim:
                    ax.set_ylim(*ylim)
                ax.set_xlabel(x)
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
                head = f"{ds} / {model}"
                if panel_key:
                    head += f", {panel_key} {pv:g}"
                ax.set_title(head, fontsize=9)
                ax.legend(fontsize=7)
    return _save(fig, path, title + seed_note(rows))


# --- the paper's figures -----------------------------------------------------------------------
@figure("fig10", "fig10_efficacy.png")
def fig10_efficacy(data: FigureInput, path: Path) -> Path | None:
    """Efficacy over size x transparency, one heat map per (dataset, attack) (paper Fig. 10)."""
    rows = data.attacked
    sizes, trs = panels(rows, "size"), panels(rows, "transparency")
    if len(sizes) < 2 or len(trs) < 2:
        return None
    blocks = [(b, a) for b in datasets(rows) for a in sorted({r["attack"] for r in rows})]
    nc = min(4, len(blocks))
    nr = -(-len(blocks) // nc)
    fig, axes = _figure(nr, nc, (3.8 * nc, 3.2 * nr))
    for ax in axes.flat[len(blocks) :]:
        ax.axis("off")
    for ax, ((ds, model), atk) in zip(axes.flat, blocks, strict=False):
        grid = np.full((len(trs), len(sizes)), np.nan)
        spread = np.zeros_like(grid)
        for i, tr in enumerate(trs):
            for j, s in enumerate(sizes):
                vals = [
                    num(r["efficacy"])
                    for r in rows
                    if (r["dataset"], r["model"], r["attack"]) == (ds, model, atk)
                    and r["size"] == s
                    and r["transparency"] == tr
                ]
                grid[i, j], spread[i, j] = mean_std(vals)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        for i in range(len(trs)):
            for j in range(len(sizes)):
                if not math.isnan(grid[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.2f}"
                        + (f"\n±{spread[i, j]:.2f}" if spread[i, j] > 0 else ""),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if grid[i, j] < 0.6 else "black",
                    )
        ax.set_xticks(range(len(sizes)), [f"{s:g}" for s in sizes])
        ax.set_yticks(range(len(trs)), [f"{t:g}" for t in trs])
        ax.set_xlabel("trigger size")
        ax.set_ylabel("transparency")
        ax.set_title(f"{atk} on {ds}/{model}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    title = "Attack efficacy over trigger size and transparency (Fig. 10)"
    return _save(fig, path, title + seed_note(rows))


@figure("fig11", "fig11_triggers.png")
def fig11_triggers(data: FigureInput, path: Path) -> Path | None:
    """Stamped samples: one row per (dataset, attack, transparency), one column per size, each
    titled with the cell's ASR and the poisoned model's prediction (paper Fig. 11)."""
    from safetensors.torch import load_file

    from eviltwins.io.images import show_image

    rows = [r for r in data.attacked if r["seed"] == min(x["seed"] for x in data.rows)]
    sizes = panels(rows, "size")
    lines = sorted({(r["dataset"], r["model"], r["attack"], r["transparency"]) for r in rows})
    if not lines or not sizes or data.run_dir is None:
        return None
    fig, axes = _figure(len(lines), len(sizes), (1.9 * len(sizes) + 1.2, 2.0 * len(lines)))
    for i, (ds, model, atk, tr) in enumerate(lines):
        for j, s in enumerate(sizes):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            match = [
                r
                for r in rows
                if (r["dataset"], r["model"], r["attack"], r["transparency"], r["size"])
                == (ds, model, atk, tr, s)
            ]
            f = data.run_dir / "cells" / match[0]["key"] / "examples.safetensors" if match else None
            try:  # a missing or damaged examples file leaves the panel empty
                ex = load_file(str(f)) if f is not None and f.is_file() else None
                if ex is not None:
                    show_image(ax, ex["stamped"][0])
                    pred = int(ex["pred"][0])
            except Exception:
                ex = None
            if ex is None:
                ax.axis("off")
                continue
            names = data.classes.get(ds) or ()
            shown = names[pred] if pred < len(names) else str(pred)
            ax.set_title(
                f"size {s:g}: ASR {num(match[0]['asr']):.2f}\npred {shown}",
                fontsize=7,
                color="red" if pred == match[0]["target"] else "black",
            )
            if j == 0:
                ax.set_ylabel(f"{atk}\n{ds}, tr {tr:g}", fontsize=8)
    return _save(fig, path, "Stamped samples per attack and trigger size (Fig. 11)", 10)


def _several(key: str) -> Callable[[FigureInput], bool]:
    return lambda data: len(panels(data.attacked, key)) > 1


def _declared(name: str, least: int = 1) -> Callable[[FigureInput], bool]:
    return lambda data: len(data.showing(name)) >= least


def _asr_vs(x: str, panel_key: str, title: str) -> Callable[[FigureInput, Path], Path | None]:
    """ASR vs ``x``, one panel per value of ``panel_key`` (paper Figs. 12-13)."""

    def draw(data: FigureInput, path: Path) -> Path | None:
        metrics = [("asr", "attack success rate", None)]
        return line_figure(
            data.attacked,
            path,
            x=x,
            panel_key=panel_key,
            metrics=metrics,
            title=title,
            ylim=(-0.02, 1.02),
        )

    return draw


def _declared_vs_size(
    name: str, title: str, ylim: tuple[float, float] | None = None
) -> Callable[[FigureInput, Path], Path | None]:
    """The shown metric of each detector that declares figure ``name`` vs trigger size, with
    its threshold and the clean model's value (paper Fig. 14, Appendix C)."""

    def draw(data: FigureInput, path: Path) -> Path | None:
        metrics = [(s.column(), s.metric.label, s.metric.threshold) for s in data.showing(name)]
        return line_figure(
            data.attacked,
            path,
            x="size",
            panel_key="transparency",
            metrics=metrics,
            title=title,
            clean_rows=data.clean_rows,
            ylim=ylim,
        )

    return draw


figure("fig12", "fig12_asr_vs_size.png", _several("size"))(
    _asr_vs("size", "transparency", "ASR vs trigger size (Fig. 12)")
)
figure("fig13", "fig13_asr_vs_transparency.png", _several("transparency"))(
    _asr_vs("transparency", "size", "ASR vs trigger transparency (Fig. 13)")
)
# NeuralCleanse's target anomaly index and STRIP's F1, as their classes declare
figure("fig14", "fig14_detectors_vs_size.png", _declared("fig14"))(
    _declared_vs_size("fig14", "Detectors vs trigger size (Fig. 14)")
)


@figure("fig15", "fig15_strip_vs_ensemble.png", supports=_declared("fig15", 2))
def fig15_strip_vs_ensemble(data: FigureInput, path: Path) -> Path | None:
    """The F1 of the declaring input filters (STRIP, the NC+STRIP ensemble) vs trigger size, a
    line per (filter, attack) (paper Fig. 15)."""
    long = [
        {**r, "detector": s.metric.name or s.label, "f1": r.get(s.column())}
        for r in data.attacked
        for s in data.showing("fig15")
    ]
    return line_figure(
        long,
        path,
        x="size",
        panel_key="transparency",
        metrics=[("f1", "F1 score", None)],
        title="STRIP vs the NC+STRIP ensemble (Fig. 15)",
        group=lambda r: f"{r['detector']} vs {r['attack']}",
        ylim=(-0.02, 1.02),
    )


# ABS's REASR of the attack's target label, as its class declares (``target_anomaly``)
figure("abs", "abs_reasr_vs_size.png", _declared("abs"))(
    _declared_vs_size("abs", "ABS REASR vs trigger size (Appendix C)", (-0.02, 1.02))
)


def render_figures(data: FigureInput, out: Path, wanted: set[str] | None = None) -> list[Path]:
    """Every registered figure that is ``wanted`` (None: all) and supported, written into
    ``out``, in registry order."""
    made = [f.render(data, out) for name, f in FIGURES.items() if wanted is None or name in wanted]
    return [p for p in made if p is not None]


# --- the scanner over the sweep's models ----------------------------------------------------------
def _population(data: FigureInput) -> bool:
    from eviltwins.report.population import inspector_labels

    return bool(data.clean_rows and data.attacked and inspector_labels(data.rows))


def _by_inspector(data: FigureInput) -> list[tuple[str, np.ndarray, np.ndarray, list[str]]]:
    """Per inspector label: its statistic per model, whether each is backdoored, the attacks."""
    from eviltwins.report.population import inspector_labels, model_score

    out = []
    for label in inspector_labels(data.rows):
        models = [r for r in data.rows if model_score(r, label) == model_score(r, label)]
        s = np.array([model_score(r, label) for r in models])
        y = np.array([r["attack_name"] != "none" for r in models])
        out.append((label, s, y, [str(r["attack"]) for r in models]))
    return out


@figure("population-roc", "population_roc.png", _population)
def population_roc(data: FigureInput, path: Path) -> Path | None:
    """Per model inspector, the ROC curve of its per-model statistic: each attack's backdoored
    models against all the clean ones, and all attacks together (AUC in the legend)."""
    from eviltwins.metrics import roc_auc, roc_curve

    panels_ = _by_inspector(data)
    fig, axes = _figure(1, len(panels_), (3.8 * len(panels_), 3.6))
    for ax, (label, s, y, attacks) in zip(axes[0], panels_, strict=True):
        kinds = [a for a in dict.fromkeys(a for a, b in zip(attacks, y, strict=True) if b)]
        for kind in [*kinds, "all attacks"]:
            keep = ~y | np.array([kind in (a, "all attacks") for a in attacks])
            if keep.sum() > (~y).sum():
                fpr, tpr = roc_curve(s[keep], y[keep])
                auc = roc_auc(s[keep], y[keep])
                bold = {"linewidth": 2.2, "color": "black"} if kind == "all attacks" else {}
                ax.step(fpr, tpr, where="post", label=f"{kind} ({auc:.2f})", **bold)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("false positive rate (clean models)")
        ax.set_ylabel("true positive rate")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    return _save(fig, path, "ROC of each inspector's largest anomaly over the models")


@figure("population-scores", "population_scores.png", _population)
def population_scores_figure(data: FigureInput, path: Path) -> Path | None:
    """Per model inspector, histograms of its per-model statistic: the clean models and each
    attack's backdoored ones, on shared bins."""
    panels_ = _by_inspector(data)
    fig, axes = _figure(1, len(panels_), (3.8 * len(panels_), 3.4))
    for ax, (label, s, y, attacks) in zip(axes[0], panels_, strict=True):
        bins = np.linspace(float(s.min()), float(s.max()) + 1e-9, 16)
        groups = {"clean": ~y}
        for a in dict.fromkeys(a for a, b in zip(attacks, y, strict=True) if b):
            groups[a] = y & np.array([x == a for x in attacks])
        for name, keep in groups.items():
            ax.hist(s[keep], bins=bins, histtype="step", linewidth=1.6, label=name)
        ax.set_xlabel("largest anomaly over the labels")
        ax.set_ylabel("models")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path, "Each inspector's largest anomaly: clean and backdoored models")
