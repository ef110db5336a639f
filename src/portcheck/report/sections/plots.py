"""Section Plots: the plots drawn beside the report (rules plot_kld, plot_long_context, plot_layers, plot_bench, plot_serve), by title."""

from __future__ import annotations

from urllib.parse import quote

PLOT_TITLES = {"kld_per_position": "KLD per position", "kld_distribution": "Distribution of per-position KLD",
               "kld_long_context": "Long context: KLD by position", "layer_errors": "Where it diverges: error by layer",
               "serve_sweep": "Serving: throughput and TTFT against load (vllm bench serve sweep)"}


def plots_section(plots: dict) -> list[dict]:
    """plots: name -> path relative to the report; render_report marks which of them exist."""
    return [{"name": name, "title": PLOT_TITLES.get(name, name.replace("_", " ")), "path": str(path),
             "url": quote(str(path))}
            for name, path in plots.items()]
