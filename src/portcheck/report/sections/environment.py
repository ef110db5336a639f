"""Section Environment: each target's host and installed versions, side by side (from its env.json)."""

from __future__ import annotations

from typing import Any

from portcheck.report.format import ABSENT, NOT_RUN, fence, gib, show, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite, every_target


def _gpu_text(gpus: list[dict]) -> str:
    return "; ".join(" ".join(str(v) for v in gpu.values()) for gpu in gpus)


# (label, env.json key, how a present value is shown; None: as it is)
ENV_ROWS = (
    ("Python", "python", None),
    ("Python environment", "python_env", None),
    ("OS", "os", None),
    ("CPU", "cpu", None),
    ("CPU count", "cpu_count", None),
    ("RAM", "ram_bytes", gib),
    ("GPU", "gpu", _gpu_text),
    ("NPU (npu-smi)", "npu", lambda _: "present (table below)"),  # the whole npu-smi table follows the table
    ("workflow commit", "workflow_commit", None),
)
VERSION_ROWS = ("torch", "transformers", "vllm", "vllm_ascend", "torch_npu", "cann", "flash_linear_attention",
                "causal_conv1d")


def environment_section(targets: list[TargetData]) -> dict:
    rows = [[label] + [_env_value(t.env, key, shown) for t in targets] for label, key, shown in ENV_ROWS]
    extra = [k for t in targets for k in ((t.env or {}).get("versions") or {}) if k not in VERSION_ROWS]
    for name in [*VERSION_ROWS, *dict.fromkeys(extra)]:
        rows.append([name] + [_env_value(None if t.env is None else t.env.get("versions") or {}, name)
                              for t in targets])
    npu = [{"target": t.name, "text": t.env["npu"], "fence": fence(t.env["npu"])}
           for t in targets if t.env and t.env.get("npu")]
    source = cite(every_target(targets, "env"), *(key for _, key, _ in ENV_ROWS), "versions")
    return {"table": table(["Item"] + [t.name for t in targets], rows, source), "npu": npu}


def _env_value(values: dict | None, key: str, shown=None) -> str:
    if values is None:
        return NOT_RUN
    value: Any = values.get(key)
    if value in (None, "", [], {}):
        return ABSENT
    return show(shown(value) if shown else value)
