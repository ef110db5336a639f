"""KLD plots for the report, read from the comparison JSONs (results/<model>/compare/<target>.json).

Figures are built with matplotlib's object API (no pyplot, so no global backend state: PNG output goes
through Agg) and saved without the "Software" text chunk, so the same data gives the same bytes on rerun."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from portcheck.artifacts import read_artifact
from portcheck.atomic import atomic_path

PNG_METADATA = {"Software": None}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
FIGSIZE = (10, 4)
DPI = 100
FRAME_COLUMNS = ["target", "prompt", "position", "x", "kld"]


def kld_frame(compare_paths: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """One row per scored position: target, prompt index, position in the prompt, position across all
    prompts (x), KLD (NaN where the comparison had none)."""
    rows = []
    for target, path in compare_paths.items():
        offset = 0
        for fallback_index, prompt in enumerate(read_artifact(path, "compare").get("per_prompt") or []):
            values = prompt.get("kld") or []
            for position, value in enumerate(values):
                rows.append((target, prompt.get("index", fallback_index), position, offset + position, _finite(value)))
            offset += len(values)
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def _finite(value) -> float:
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def log_floor(values: pd.Series) -> float | None:
    """Where zero KLDs are drawn on a log axis (a decade below the smallest positive value);
    None when a log axis makes no sense (no positive value, or under a decade of spread)."""
    positive = values[values > 0]
    if positive.empty or positive.max() < 10 * positive.min():
        return None
    return float(positive.min()) / 10


def plot_kld_per_position(compare_paths: Mapping[str, str | os.PathLike], out_png: str | os.PathLike) -> None:
    """KLD of every scored position, prompts laid end to end (dotted lines between them), one marker set per target."""
    frame = kld_frame(compare_paths)
    fig, ax = _figure()
    if frame["kld"].notna().any():
        floor = log_floor(frame["kld"])
        for index, (target, rows) in enumerate(frame.groupby("target", sort=False)):
            _plot_target_positions(ax, rows, floor, index, target)
        _mark_prompt_boundaries(ax, frame)
        _set_kld_axis(ax, "y", floor)
        ax.set_xlabel("scored position (prompts laid end to end)")
        ax.legend(fontsize="small")
    else:
        _no_data(ax)
    ax.set_title("KLD(reference || target) per position")
    _save(fig, out_png)


def _plot_target_positions(ax, rows: pd.DataFrame, floor: float | None, index: int, target: str) -> None:
    marker = MARKERS[index % len(MARKERS)]
    color = f"C{index}"
    shown = rows["kld"].where(rows["kld"] > 0) if floor else rows["kld"].clip(lower=0)
    for number, (_prompt, segment) in enumerate(shown.groupby(rows["prompt"], sort=False)):
        # One line per prompt: a line across a prompt boundary would suggest continuity that is not there.
        ax.plot(rows.loc[segment.index, "x"], segment, marker=marker, markersize=3, linewidth=0.8, color=color,
                label=target if number == 0 else None)
    zeros = rows[rows["kld"] <= 0]
    if floor and not zeros.empty:
        ax.plot(zeros["x"], [floor] * len(zeros), linestyle="none", marker=marker, markersize=4,
                markerfacecolor="none", color=color, label=f"{target}: KLD 0 (drawn at {floor:.0e})")


def _mark_prompt_boundaries(ax, frame: pd.DataFrame) -> None:
    first = frame[frame["target"] == frame["target"].iloc[0]]
    starts = first.groupby("prompt", sort=False)["x"].min().iloc[1:]
    for x in starts:
        ax.axvline(x - 0.5, color="0.8", linestyle=":", linewidth=0.8)


def plot_kld_distribution(compare_paths: Mapping[str, str | os.PathLike], out_png: str | os.PathLike) -> None:
    """Cumulative share of positions with KLD <= x, one curve per target: the tail (p99, max) is visible at a glance."""
    frame = kld_frame(compare_paths).dropna(subset=["kld"])
    fig, ax = _figure()
    if not frame.empty:
        floor = log_floor(frame["kld"])
        for index, (target, rows) in enumerate(frame.groupby("target", sort=False)):
            values = rows["kld"].clip(lower=floor or 0).sort_values().reset_index(drop=True)
            share = (values.index + 1) / len(values)
            ax.step(values, share, where="post", color=f"C{index}", label=f"{target} ({len(values)} positions)")
        _set_kld_axis(ax, "x", floor)
        ax.set_ylabel("share of positions")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize="small", loc="lower right")
    else:
        _no_data(ax)
    ax.set_title("Distribution of per-position KLD(reference || target)")
    _save(fig, out_png)


def plot_kld_long_context(corpus_paths: Mapping[str, str | os.PathLike], out_png: str | os.PathLike) -> None:
    """Mean KLD over the corpus windows against position, one line per target, with the bucket (GDN chunk)
    boundaries dotted: growth past the first chunk shows as a step or a slope."""
    fig, ax = _figure()
    curves = {t: read_artifact(p, "corpus_compare") for t, p in corpus_paths.items()}
    values = pd.Series([k for c in curves.values() for _, k in c.get("kld_by_position") or []], dtype=float)
    if values.notna().any():
        floor = log_floor(values)
        for index, (target, comparison) in enumerate(curves.items()):
            points = pd.DataFrame(comparison.get("kld_by_position") or [], columns=["position", "kld"])
            kld = points["kld"].where(points["kld"] > 0, floor) if floor else points["kld"]
            ax.plot(points["position"], kld, linewidth=0.8, color=f"C{index}", label=target)
        bucket = next(iter(curves.values())).get("bucket") or 64
        last = max(c["kld_by_position"][-1][0] for c in curves.values() if c.get("kld_by_position"))
        for boundary in range(bucket, last + 1, bucket):
            ax.axvline(boundary, linestyle=":", linewidth=0.6, color="grey")
        _set_kld_axis(ax, "y", floor)
        ax.set_xlabel(f"position in the window (dotted: every {bucket} positions, one Gated DeltaNet chunk)")
        ax.legend(fontsize="small")
    else:
        _no_data(ax)
    ax.set_title("Long context: KLD(reference || target) by position, mean over the corpus windows")
    _save(fig, out_png)


LAYER_MARKERS = {"Gated DeltaNet": "o", "full attention": "s", "final norm": "*"}
LAYER_PANELS = (  # (row and floor key, flag filling the marker, y label, x label's legend, limit drawn)
    ("rel_l2_mean", "over", "relative L2 error, mean",
     "o Gated DeltaNet, s full attention, * final norm; filled: over the thresholds", "threshold"),
    ("added_error", "over_floor", "added error (own residual update)",
     "o Gated DeltaNet, s full attention; filled: over the floor multiple", "floor multiple"),
)


def plot_layer_errors(layer_paths: Mapping[str, str | os.PathLike], out_png: str | os.PathLike) -> None:
    """Top: mean relative L2 error of every layer's output against the reference's, one line per target, the
    marker telling the layer type and filled where the layer is over the thresholds. Bottom: each decoder layer's
    added error, filled where over the configured multiple of the bf16 floor's. The floor (cpu-hf-bf16 against the
    same reference) is drawn in black on both, and floor x multiple on the bottom: the first filled marker is where
    a divergence starts."""
    fig = Figure(figsize=(FIGSIZE[0], 2 * FIGSIZE[1]), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 1)
    curves = {t: read_artifact(p, "layers_compare") for t, p in layer_paths.items()}
    curves = {t: c for t, c in curves.items() if c.get("layers")}
    if curves:
        floor = next((c["floor"] for c in curves.values() if (c.get("floor") or {}).get("added_error")), None)
        for ax, panel in zip(axes, LAYER_PANELS):
            _layer_panel(ax, curves, floor, *panel)
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no per-layer data: no target's layers were captured and compared", ha="center",
                    va="center", transform=ax.transAxes)
            ax.set_axis_off()
    axes[0].set_title("Where it diverges: each layer's output against the reference's")
    _save(fig, out_png)


def _layer_panel(ax, curves: dict, floor: dict | None, key: str, flag: str, label: str, legend: str,
                 limit: str) -> None:
    # the added error is a decoder layer's own: the final norm has none
    lines = {t: [row for row in c["layers"] if key == "rel_l2_mean" or row["index"] is not None]
             for t, c in curves.items()}
    values = [_finite(row.get(key)) for rows in lines.values() for row in rows]
    floor_values = [_finite(v) for v in (floor or {}).get(key) or []]
    zero_at = log_floor(pd.Series(values + floor_values, dtype=float))
    names = []
    for index, (target, rows) in enumerate(lines.items()):
        names = [row["name"] for row in rows]
        errors = [_at_least(row.get(key), zero_at) for row in rows]
        ax.plot(range(len(rows)), errors, linewidth=0.8, color=f"C{index}", label=target)
        for slot, (row, error) in enumerate(zip(rows, errors)):
            ax.plot(slot, error, LAYER_MARKERS.get(row["type"], "x"), color=f"C{index}",
                    markerfacecolor=f"C{index}" if row.get(flag) else "none")
    _draw_floor(ax, floor, floor_values[:len(names)], zero_at, limit, next(iter(curves.values()))["thresholds"])
    ax.set_xticks(range(len(names)), [n.replace("layer ", "") for n in names], fontsize="small")
    ax.set_xlabel(f"decoder layer ({legend})")
    ax.set_ylabel(label + (f" (zeros drawn at {zero_at:.0e})" if zero_at else ""))
    ax.set_yscale("log" if zero_at else "linear")
    ax.grid(True, which="major", linewidth=0.3)
    ax.legend(fontsize="small")


def _draw_floor(ax, floor: dict | None, floor_values: list[float], zero_at, limit: str, thresholds: dict) -> None:
    """The floor's curve (black) and the limit: the rel_l2_max threshold, or floor x floor_multiple_max."""
    if floor_values:
        slots = range(len(floor_values))
        ax.plot(slots, [_at_least(v, zero_at) for v in floor_values], "k--", linewidth=0.8,
                label=f"bf16 floor: {floor['target']}")
    if limit == "threshold":
        ax.axhline(thresholds["rel_l2_max"], linestyle="--", linewidth=0.6, color="grey",
                   label=f"threshold {thresholds['rel_l2_max']:g}")
    elif floor_values and floor.get("multiple_max"):
        ax.plot(slots, [_at_least(v * floor["multiple_max"], zero_at) for v in floor_values], ":", color="grey",
                linewidth=0.8, label=f"{floor['multiple_max']:g}x the floor")


def _at_least(value, zero_at: float | None) -> float:
    """A value for a log axis: zeros drawn at zero_at, missing (non-finite) ones left out."""
    value = _finite(value)
    return zero_at if zero_at and value == 0 else value


def _set_kld_axis(ax, axis: str, floor: float | None) -> None:
    label = "KLD (nats)" + (f", zeros drawn at {floor:.0e}" if floor else "")
    if axis == "y":
        ax.set_ylabel(label)
        ax.set_yscale("log" if floor else "linear")
    else:
        ax.set_xlabel(label)
        ax.set_xscale("log" if floor else "linear")
    ax.grid(True, which="major", linewidth=0.3)


def _figure():
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    return fig, fig.subplots()


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "no KLD data: no target was compared with the reference", ha="center", va="center",
            transform=ax.transAxes)
    ax.set_axis_off()


def _save(fig: Figure, out_png: str | os.PathLike) -> None:
    with atomic_path(Path(out_png)) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA)


# ---------------------------------------------------------------- benchmarks (results/<model>/<target>/bench.json)


def throughput_frame(bench_paths: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """One row per distinct throughput cell of every target: target, batch size, max_tokens, output tok/s."""
    rows = {}
    for target, path in bench_paths.items():
        for table in read_artifact(path, "bench").get("throughput") or []:
            for r in table.get("rows") or []:
                rows[(target, r["batch_size"], r["max_tokens"])] = r.get("output_tok_s")
    return pd.DataFrame([(t, b, m, v) for (t, b, m), v in rows.items()],
                        columns=["target", "batch_size", "max_tokens", "output_tok_s"])


def plot_throughput_vs_batch(bench_paths: Mapping[str, str | os.PathLike], out_png: str | os.PathLike) -> None:
    """Output tok/s against batch size (one line per target and max_tokens with more than one batch size)."""
    frame = throughput_frame(bench_paths)
    fig, ax = _figure()
    drawn = 0
    for index, ((target, max_tokens), rows) in enumerate(frame.groupby(["target", "max_tokens"], sort=True)):
        rows = rows.dropna().sort_values("batch_size")
        if len(rows) < 2:
            continue
        ax.plot(rows["batch_size"], rows["output_tok_s"], marker=MARKERS[index % len(MARKERS)],
                label=f"{target} (max_tokens {max_tokens})")
        drawn += 1
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("output tokens / s")
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
    else:
        _no_bench(ax)
    ax.set_title("Throughput against batch size")
    _save(fig, out_png)


def plot_latency_percentiles(bench_paths: Mapping[str, str | os.PathLike], out_png: str | os.PathLike) -> None:
    """TTFT, TPOT, ITL and E2E percentiles (ms) per target, one panel per metric."""
    metrics = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "E2E"))
    data = {target: read_artifact(path, "bench") for target, path in bench_paths.items()}
    fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1] * 1.2), dpi=DPI)
    axes = fig.subplots(1, len(metrics))
    targets = list(data)
    for ax, (key, label) in zip(axes, metrics):
        any_value = False
        for t_index, target in enumerate(targets):
            bench = data[target]
            keys = [f"p{p:g}" for p in bench.get("percentiles") or [50, 90, 99]]
            stats = (bench.get("latency") or {}).get(key) or {}
            values = [stats.get(k) for k in keys]
            if all(v is None for v in values):
                continue
            any_value = True
            width = 0.8 / max(len(targets), 1)
            xs = [i + t_index * width for i in range(len(keys))]
            ax.bar(xs, [v * 1e3 if v is not None else 0 for v in values], width=width, label=target)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], keys)
        ax.set_title(f"{label} (ms)")
        if not any_value:
            _no_bench(ax)
    if targets:
        axes[0].legend(fontsize="x-small")
    fig.tight_layout()
    _save(fig, out_png)


def _no_bench(ax) -> None:
    ax.text(0.5, 0.5, "no benchmark data", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


# ---------------------------------------------------------------- serving (results/<model>/<target>/serve.json)


def serve_frame(serve_paths: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """One row per completed load level of every target's `vllm bench serve` sweep, by achieved request rate."""
    rows = []
    for target, path in serve_paths.items():
        serve = read_artifact(path, "serve")
        saturated = ((serve.get("sweep") or {}).get("saturation") or {}).get("level")
        for level in serve.get("levels") or []:
            if level.get("request_throughput") is None:
                continue
            rows.append((target, level["name"], level["request_throughput"], level.get("output_throughput"),
                         level.get("median_ttft_ms"), level.get("p99_ttft_ms"), level["name"] == saturated))
    frame = pd.DataFrame(rows, columns=["target", "level", "request_rate", "output_tok_s", "ttft_p50_ms",
                                        "ttft_p99_ms", "saturation"])
    return frame.sort_values(["target", "request_rate"])


def plot_serve_sweep(serve_paths: Mapping[str, str | os.PathLike], out_png: str | os.PathLike) -> None:
    """Output tok/s and TTFT (median, p99) against the achieved request rate of each sweep level, per target; the
    saturation point circled where the sweep reached it."""
    frame = serve_frame(serve_paths)
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    throughput_ax, ttft_ax = fig.subplots(1, 2)
    if frame.empty:
        for ax in (throughput_ax, ttft_ax):
            ax.text(0.5, 0.5, "no serving sweep data", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    for index, (target, rows) in enumerate(frame.groupby("target", sort=True)):
        style = {"marker": MARKERS[index % len(MARKERS)], "color": f"C{index}"}
        throughput_ax.plot(rows["request_rate"], rows["output_tok_s"], label=target, **style)
        ttft_ax.plot(rows["request_rate"], rows["ttft_p50_ms"], label=f"{target} median", **style)
        ttft_ax.plot(rows["request_rate"], rows["ttft_p99_ms"], linestyle="--", label=f"{target} p99", **style)
        for _, row in rows[rows["saturation"]].iterrows():
            throughput_ax.scatter([row["request_rate"]], [row["output_tok_s"]], s=200, facecolors="none",
                                  edgecolors="red", label=f"{target} saturation")
    for ax, label, title in ((throughput_ax, "output tokens / s", "Throughput against load"),
                             (ttft_ax, "TTFT (ms)", "Time to first token against load")):
        if not frame.empty:
            ax.set_xlabel("achieved request rate (requests / s)")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="x-small")
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, out_png)
