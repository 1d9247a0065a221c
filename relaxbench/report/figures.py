"""The report's figures (matplotlib's Agg canvas, seaborn on explicit axes; no pyplot global state).

Each function takes the leaderboard rows of one task (``board``, one row per run, see
:func:`relaxbench.leaderboard.collect`), the runs' histories (``history.csv`` tables keyed by the row's
``run_dir``) where it needs them, and writes one PNG; it returns ``None`` when the task has nothing to show
(e.g. no relaxed method for the penalty plot). Columns of a figure are the task's models; colours are the
methods, the same in every figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from relaxbench.methods import METHODS
from relaxbench.ranking import Ranking

__all__ = [
    "EQUIV_FLOOR",
    "activity_figure",
    "critical_difference_diagram",
    "equivariance_figure",
    "learning_curves",
    "method_colors",
    "penalty_curves",
    "spread_figure",
    "sweep_figure",
]

#: Equivariance errors below this (including exact zeros) are drawn on this line of the log axis.
EQUIV_FLOOR = 1e-17
WHEN_COLORS = {"at init": "0.6", "at end": "#c0392b"}
DPI = 80
PANEL = (3.8, 2.9)  # inches per panel
MIN_WIDTH = 6.0  # inches: a one-column figure still fits its legend
RC = {
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "font.family": "DejaVu Sans",
}


def _text(value: object) -> str:
    """A config or record string as literal figure text (a ``$`` would otherwise start mathtext)."""
    return str(value).replace("$", r"\$")


def _log_y(ax: Axes) -> None:
    """Log y axis with major ticks at 1, 2, 5 x 10^k and no minor ticks (those cost most of the drawing time)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=8))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def method_colors(methods: Sequence[str]) -> dict[str, tuple]:
    """A fixed colour per method, the same in every figure: built-in methods by declaration order, then others."""
    order = list(METHODS) + sorted(set(methods) - set(METHODS))
    palette = sns.color_palette("colorblind", len(order))
    return dict(zip(order, palette))


def _figure(nrows: int, ncols: int, legend: bool = True) -> tuple[Figure, np.ndarray]:
    """A figure of ``nrows x ncols`` panels, with room for a legend row below them."""
    fig = Figure(
        figsize=(max(PANEL[0] * ncols, MIN_WIDTH), PANEL[1] * nrows + (0.5 if legend else 0.0)),
        dpi=DPI,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


@contextmanager
def _style() -> Iterator[None]:
    """The figures' style; silences matplotlib's notice that a constant sample got an automatic y range."""
    with matplotlib.rc_context({**sns.axes_style("whitegrid"), **RC}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attempting to set identical low and high ylims")
        yield


def _legend(fig: Figure, handles: Sequence[Line2D]) -> None:
    """A legend below the panels, in as many columns as the figure's width holds (about 1.9 inches each)."""
    per_row = max(1, int(fig.get_figwidth() / 1.9))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), per_row), frameon=False)


def _method_legend(fig: Figure, colors: Mapping[str, tuple], methods: Sequence[str], extra=()) -> None:
    _legend(fig, [Line2D([], [], color=colors[m], lw=2, label=_text(m)) for m in methods] + list(extra))


def learning_curves(board: pd.DataFrame, histories: Mapping[str, pd.DataFrame], path: Path) -> Path | None:
    """Training loss (log) and validation primary metric per epoch; theta of each method on a second axis.

    Thin lines: single runs (a run that diverged or failed ends in a cross); thick lines: mean over the ``ok``
    runs that reached the epoch; dashed: theta (dimensionless, right axis).
    """
    runs = board[board["run_dir"].isin(histories)]
    if runs.empty:
        return None
    metric, unit = runs["metric"].iloc[0], runs["metric_unit"].iloc[0]
    rows = [
        ("task_loss", "training task loss (log)", True),
        (f"val_{metric}", _text(f"validation {metric} [{unit}]"), False),
    ]
    return _curve_grid(runs, histories, rows, path, theta=True)


def penalty_curves(board: pd.DataFrame, histories: Mapping[str, pd.DataFrame], path: Path) -> Path | None:
    """The regulariser's two terms per epoch (log axis): Lie term and activation-norm term, unweighted.

    Only runs that recorded a positive term are drawn; ``None`` when no run of the task did.
    """
    rows = [("lie", "Lie term Σ√(ld + ε)", True), ("norm", "norm term Σ√(‖Wx‖² + ε)", True)]
    active = [
        d
        for d in board["run_dir"]
        if d in histories and any(t in histories[d] and (histories[d][t] > 0).any() for t, _, _ in rows)
    ]
    runs = board[board["run_dir"].isin(active)]
    if runs.empty:
        return None
    return _curve_grid(runs, histories, rows, path, theta=False)


def _curve_grid(
    runs: pd.DataFrame,
    histories: Mapping[str, pd.DataFrame],
    rows: Sequence[tuple[str, str, bool]],
    path: Path,
    theta: bool,
) -> Path:
    """Per-epoch curves: one row per ``(history column, label, log axis)``, one column per model."""
    models = sorted(runs["model"].unique())
    colors = method_colors(runs["method"].unique())
    with _style():
        fig, axes = _figure(len(rows), len(models))
        for j, model in enumerate(models):
            sub = runs[runs["model"] == model]
            for i, (column, label, log) in enumerate(rows):
                ax = axes[i, j]
                _curves(ax, sub, histories, column, colors, positive_only=log)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if log:
                    _log_y(ax)
                ax.set_title(_text(model) if i == 0 else "")
                ax.set_xlabel("epoch" if i == len(rows) - 1 else "")
                ax.set_ylabel(label if j == 0 else "")
                if theta:
                    _theta_axis(ax, sub, histories, colors, label_it=j == len(models) - 1)
        extra = [
            Line2D([], [], color="0.3", marker="x", ls="", mew=2, label="run stopped (diverged / failed)")
        ]
        if theta:
            extra.insert(0, Line2D([], [], color="0.3", ls="--", label="θ (right axis)"))
        _method_legend(fig, colors, sorted(runs["method"].unique(), key=list(colors).index), extra)
        return _save(fig, path)


def _curves(
    ax: Axes,
    runs: pd.DataFrame,
    histories: Mapping[str, pd.DataFrame],
    column: str,
    colors: Mapping[str, tuple],
    positive_only: bool,
) -> None:
    for method, group in runs.groupby("method"):
        ok_curves = []
        for row in group.itertuples():
            hist = histories[row.run_dir]
            if column not in hist:
                continue
            values = hist[column].to_numpy(dtype=float)
            hist = hist[np.isfinite(values) & ((values > 0) if positive_only else True)]
            if hist.empty:
                continue
            ax.plot(hist["epoch"], hist[column], color=colors[method], lw=0.8, alpha=0.35)
            if row.status == "ok":
                ok_curves.append(hist.set_index("epoch")[column])
            else:
                ax.plot(hist["epoch"].iloc[-1], hist[column].iloc[-1], "x", color=colors[method], ms=7, mew=2)
        if ok_curves:
            mean = pd.concat(ok_curves, axis=1).mean(axis=1)
            ax.plot(mean.index, mean.to_numpy(), color=colors[method], lw=2)


def _theta_axis(
    ax: Axes,
    runs: pd.DataFrame,
    histories: Mapping[str, pd.DataFrame],
    colors: Mapping[str, tuple],
    label_it: bool,
) -> None:
    twin = ax.twinx()
    twin.grid(False)
    peak = 1.0
    for method, group in runs.groupby("method"):
        hist = max((histories[d] for d in group["run_dir"]), key=len)
        if "theta" in hist and (hist["theta"] > 0).any():
            twin.plot(hist["epoch"], hist["theta"], color=colors[method], ls="--", lw=1.2)
            peak = max(peak, float(hist["theta"].max()))
    twin.set_ylim(-0.03 * peak, 1.05 * peak)
    twin.set_ylabel("θ" if label_it else "")


def spread_figure(board: pd.DataFrame, aggregates: pd.DataFrame, path: Path) -> Path | None:
    """Test metric and generalization gap per method: one dot per ``ok`` seed, mean and 95 % CI in black.

    Tick labels give ``n_ok/n_total``; runs that are not ``ok`` have no value and are not drawn.
    """
    ok = board[board["status"] == "ok"]
    if ok.empty:
        return None
    metric, unit = ok["metric"].iloc[0], ok["metric_unit"].iloc[0]
    models = sorted(board["model"].unique())
    colors = method_colors(board["method"].unique())
    rows = [("test_metric", f"test {metric} [{unit}]"), ("gen_gap", "gen. gap: test − train loss")]
    with _style():
        fig, axes = _figure(len(rows), len(models), legend=False)
        for j, model in enumerate(models):
            entries = aggregates[aggregates["model"] == model].set_index("method")
            methods = sorted(entries.index, key=list(colors).index)
            labels = [f"{_text(m)}\n{entries.loc[m, 'n_ok']}/{entries.loc[m, 'n_total']} ok" for m in methods]
            for i, (q, label) in enumerate(rows):
                ax = axes[i, j]
                data = ok[(ok["model"] == model)].dropna(subset=[q])
                if not data.empty:
                    sns.stripplot(
                        data=data,
                        x="method",
                        y=q,
                        hue="method",
                        order=methods,
                        palette=colors,
                        ax=ax,
                        size=6,
                        jitter=0.15,
                        legend=False,
                        edgecolor="white",
                        linewidth=0.6,
                    )
                stats = entries.loc[methods, [f"{q}_mean", f"{q}_ci_low", f"{q}_ci_high"]].to_numpy(
                    dtype=float
                )
                mean, low, high = stats.T
                ax.errorbar(
                    range(len(methods)),
                    mean,
                    yerr=[mean - low, high - mean],
                    fmt="_",
                    color="black",
                    ms=18,
                    mew=2,
                    capsize=4,
                    lw=1.2,
                    zorder=5,
                )
                ax.set_xticks(range(len(methods)), labels if i == len(rows) - 1 else [""] * len(methods))
                ax.set_xlabel("")
                ax.set_ylabel(label if j == 0 else "")
                ax.set_title(_text(model) if i == 0 else "")
                if q == "gen_gap":
                    ax.axhline(0.0, color="0.5", lw=0.8)
        return _save(fig, path)


def equivariance_figure(board: pd.DataFrame, path: Path) -> Path | None:
    """Relative equivariance error at initialisation and at the end, log axis; exact and approximate
    symmetries in separate columns (one dot per ``ok`` run). Values below :data:`EQUIV_FLOOR` (exact zeros
    included) sit on the dotted floor line.
    """
    ok = board[board["status"] == "ok"]
    kinds = [
        k for k in ("exact", "approx") if ok[[f"equiv_init_{k}", f"equiv_final_{k}"]].notna().to_numpy().any()
    ]
    if ok.empty or not kinds:
        return None
    models = sorted(ok["model"].unique())
    colors = method_colors(board["method"].unique())
    long = ok.melt(
        id_vars=["model", "method", "seed"],
        value_vars=[f"equiv_{when}_{k}" for when in ("init", "final") for k in kinds],
        var_name="which",
        value_name="error",
    ).dropna(subset=["error"])
    long["when"] = long["which"].str.split("_").str[1].map({"init": "at init", "final": "at end"})
    long["kind"] = long["which"].str.split("_").str[2]
    long["error"] = long["error"].clip(lower=EQUIV_FLOOR)
    with _style():
        fig, axes = _figure(len(models), len(kinds))
        for i, model in enumerate(models):
            methods = sorted(ok.loc[ok["model"] == model, "method"].unique(), key=list(colors).index)
            for j, kind in enumerate(kinds):
                ax = axes[i, j]
                data = long[(long["model"] == model) & (long["kind"] == kind)]
                sns.stripplot(
                    data=data,
                    x="method",
                    y="error",
                    hue="when",
                    order=methods,
                    hue_order=list(WHEN_COLORS),
                    palette=WHEN_COLORS,
                    dodge=True,
                    jitter=0.1,
                    size=6,
                    ax=ax,
                    legend=False,
                    log_scale=True,
                )
                ax.axhline(EQUIV_FLOOR, color="0.4", ls=":", lw=1)
                ax.annotate(
                    f"≤ {EQUIV_FLOOR:g} (incl. 0)",
                    xy=(0.99, EQUIV_FLOOR),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="bottom",
                    fontsize=7,
                    color="0.4",
                )
                ax.set_ylim(EQUIV_FLOOR / 5, max(1.0, float(data["error"].max()) * 3) if len(data) else 1.0)
                ax.yaxis.set_minor_locator(NullLocator())
                ax.set_title(f"{_text(model)}: {'exact' if kind == 'exact' else 'approximate'} symmetries")
                ax.set_xlabel("")
                ax.set_ylabel("relative equivariance error" if j == 0 else "")
                ax.tick_params(axis="x", rotation=20)
        _legend(fig, [Line2D([], [], color=c, marker="o", ls="", label=w) for w, c in WHEN_COLORS.items()])
        return _save(fig, path)


def activity_figure(history: pd.DataFrame, inactive_below: float, path: Path) -> Path | None:
    """One relaxed run's activity per epoch, three panels (log axes): each relaxed layer's free-branch share
    ``theta ||W x|| / ||f_eq x||`` (history columns ``share:<layer>``, epoch means; dotted: the
    ``inactive_below`` line, dashed: theta on the right axis); the equivariance error of the unprojected model
    at the few epochs it was measured (``equiv_unprojected_exact`` / ``_approx``); and the Lie term of the
    penalty, summed over layers (``lie``; the paper's Fig. 3 draws the Lie derivative during training).

    Zero values (theta = 0) are left out of the log axes. ``None`` when the history has no share column.
    """
    shares = [c for c in history if c.startswith("share:")]
    if history.empty or not shares:
        return None
    epochs = history["epoch"]
    with _style():
        fig, axes = _figure(1, 3)
        ax = axes[0, 0]
        palette = sns.color_palette("viridis", len(shares))
        handles = []
        for color, column in zip(palette, shares):
            values = history[column].where(history[column] > 0)
            (line,) = ax.plot(
                epochs, values, color=color, lw=1.5, marker=".", label=_text(column.removeprefix("share:"))
            )
            handles.append(line)
        ax.axhline(inactive_below, color="0.4", ls=":", lw=1)
        _log_y(ax)
        ax.set_title("free-branch share θ‖Wx‖ / ‖f_eq x‖")
        twin = ax.twinx()
        twin.grid(False)
        twin.plot(epochs, history["theta"], color="0.3", ls="--", lw=1)
        twin.set_ylim(-0.03 * max(1.0, history["theta"].max()), 1.05 * max(1.0, history["theta"].max()))
        twin.set_ylabel("θ")
        ax = axes[0, 1]
        for kind, marker in (("exact", "o"), ("approx", "s")):
            column = f"equiv_unprojected_{kind}"
            if column in history and history[column].notna().any():
                points = history[["epoch", column]].dropna()
                ax.plot(
                    points["epoch"],
                    points[column].clip(lower=EQUIV_FLOOR),
                    marker=marker,
                    color="#c0392b",
                    label=kind,
                )
        _log_y(ax)
        ax.set_title("equivariance error, free branch on")
        ax = axes[0, 2]
        if "lie" in history and (history["lie"] > 0).any():
            ax.plot(epochs, history["lie"].where(history["lie"] > 0), color="0.2", marker=".")
            _log_y(ax)
        ax.set_title("Lie term Σ√(ld + ε)")
        for ax in axes[0]:
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        extra = [
            Line2D([], [], color="0.4", ls=":", label=f"inactive below {inactive_below:g}"),
            Line2D([], [], color="0.3", ls="--", label="θ (right axis)"),
        ]
        _legend(fig, handles + extra)
        return _save(fig, path)


def critical_difference_diagram(ranking: Ranking, path: Path, alpha: float = 0.05) -> Path | None:
    """The critical-difference diagram of a :class:`~relaxbench.ranking.Ranking` (scikit-posthocs draws it):
    each method at its mean rank, bars joining methods the Nemenyi test cannot tell apart at ``alpha``. ``None``
    when no post-hoc test was run (too few methods or cells)."""
    if ranking.nemenyi is None:
        return None
    import scikit_posthocs  # imported here: only the methods page draws one

    with _style():
        fig = Figure(
            figsize=(max(MIN_WIDTH, 1.1 * len(ranking.methods)), 0.9 + 0.3 * len(ranking.methods)), dpi=DPI
        )
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        colors = method_colors(ranking.methods)
        scikit_posthocs.critical_difference_diagram(
            ranking.mean_rank.rename(index=_text),
            ranking.nemenyi.rename(index=_text, columns=_text),
            alpha=alpha,
            ax=ax,
            color_palette={_text(m): colors[m] for m in ranking.methods},
        )
        ax.set_title(
            f"mean rank over {len(ranking.cells)} task x model cells (1 = best); bars: Nemenyi p >= {alpha:g}",
            fontsize=10,
        )
        fig.tight_layout()
        return _save(fig, path)


def sweep_figure(
    entries: pd.DataFrame, axis: str, facets: Sequence[str], baseline: str, path: Path
) -> Path | None:
    """One sweep of one model entry (the paper's Fig. 4 layout): the test metric against the swept ``axis``
    per method, mean and 95 % CI band (top row), and the paired difference ``method - baseline`` against
    the axis with its 95 % CI band (bottom row, zero line dashed); one column per combination of the
    sweep's other axes (``facets``).

    Args:
        entries: the aggregates rows of the sweep's cells (every method), with the axis columns.
        axis: the axis on the x axis (its values numbers or labels; a log axis when positive numbers span
            a factor of 10 or more).
        facets: the sweep's other axes.
        baseline: the method the differences are taken from.
    """
    entries = entries.dropna(subset=["test_metric_mean"])
    if entries.empty:
        return None
    metric, unit = entries["metric"].iloc[0], entries["metric_unit"].iloc[0]
    colors = method_colors(entries["method"].unique())
    methods = sorted(entries["method"].unique(), key=list(colors).index)
    values = list(dict.fromkeys(entries[axis]))
    numeric = all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
    position = {v: (float(v) if numeric else i) for i, v in enumerate(sorted(values) if numeric else values)}
    groups = list(entries.groupby(list(facets), sort=True)) if facets else [((), entries)]
    prefix = f"test_metric_vs_{baseline}"
    rows = [
        ("test_metric", _text(f"test {metric} [{unit}]"), methods),
        (prefix, _text(f"Δ vs {baseline} [{unit}]"), [m for m in methods if m != baseline]),
    ]
    with _style():
        fig, axes = _figure(len(rows), len(groups))
        for j, (key, group) in enumerate(groups):
            key = key if isinstance(key, tuple) else (key,)
            title = ", ".join(f"{f} = {v}" for f, v in zip(facets, key))
            for i, (q, label, drawn) in enumerate(rows):
                ax = axes[i, j]
                for method in drawn:
                    cells = group[group["method"] == method].dropna(subset=[f"{q}_mean"])
                    cells = cells.assign(x=cells[axis].map(position)).sort_values("x")
                    if cells.empty:
                        continue
                    ax.plot(cells["x"], cells[f"{q}_mean"], "o-", color=colors[method], lw=1.8, ms=5)
                    ax.fill_between(
                        cells["x"],
                        cells[f"{q}_ci_low"].to_numpy(dtype=float),
                        cells[f"{q}_ci_high"].to_numpy(dtype=float),
                        color=colors[method],
                        alpha=0.2,
                        lw=0,
                    )
                if q == prefix:
                    ax.axhline(0.0, color="0.3", ls="--", lw=1)
                positive = numeric and min(position.values()) > 0
                if positive and max(position.values()) >= 10 * min(position.values()):
                    ax.set_xscale("log")
                ax.set_xticks(list(position.values()), [_text(v) for v in position])
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_title(_text(title) if i == 0 else "")
                ax.set_xlabel(_text(axis) if i == len(rows) - 1 else "")
                ax.set_ylabel(label if j == 0 else "")
        _method_legend(fig, colors, methods)
        return _save(fig, path)
