"""Section Generation samples: per target, sampled continuations, English and Chinese prompts apart."""

from __future__ import annotations

from portcheck.report.format import NOT_RUN, is_cjk, show, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite


def samples_section(targets: list[TargetData]) -> list[dict]:
    return [_target_samples(t) for t in targets]


def _target_samples(data: TargetData) -> dict:
    s = data.samples
    if s is None:
        return {"target": data.name, "reason": data.absent.get("samples", NOT_RUN), "tables": []}
    header = ["#", "Prompt", "Generated text", "Tokens"]
    english, cjk = [], []
    for i, sample in enumerate(s.get("samples") or []):
        row = [str(i), sample.get("prompt", ""), sample.get("text") or "(empty)", show(sample.get("tokens"))]
        (cjk if is_cjk(sample.get("prompt", "")) else english).append(row)
    source = cite(data.paths["samples"], "samples")
    tables = [{"title": title, "table": table(header, rows, source)}
              for title, rows in (("English prompts", english), ("Chinese (CJK) prompts", cjk)) if rows]
    settings = s.get("settings") or {}
    return {"target": data.name, "reason": "", "tables": tables,
            "settings": ", ".join(f"{k}={show(v)}" for k, v in settings.items())}
