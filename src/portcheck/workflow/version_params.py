"""The installed versions that affect a target's results, as rule params: Snakemake reruns a rule whose params
changed, so upgrading vllm-ascend reruns the npu-vllm targets' jobs and nothing else, and
`snakemake --list-changes params` names them. Read on the host that evaluates the workflow."""

from __future__ import annotations

from portcheck.env import python_env
from portcheck.env.versions import installed_versions
from portcheck.targets import parse_target

# Every target runs torch and transformers' tokenizer; the rest by engine and device.
COMMON = ("torch", "transformers")
BY_ENGINE = {
    # transformers picks flash-linear-attention / causal-conv1d kernels for Gated DeltaNet when installed.
    "hf": ("flash_linear_attention", "causal_conv1d"),
    "vllm": ("vllm",),
}
BY_DEVICE = {"cpu": (), "gpu": ("gpu_driver",), "npu": ("torch_npu", "cann", "npu_driver")}
BY_DEVICE_ENGINE = {("npu", "vllm"): ("vllm_ascend",)}


def affecting(target: str) -> tuple[str, ...]:
    t = parse_target(target)
    return COMMON + BY_ENGINE.get(t.engine, ()) + BY_DEVICE.get(t.device, ()) + BY_DEVICE_ENGINE.get(
        (t.device, t.engine), ()
    )


def result_versions(target: str, versions: dict | None = None, environment: str | None = None) -> dict[str, str | None]:
    """{name: version or None} of what can change `target`'s results; absent packages are None. `environment`: the
    target's own Python environment (its interpreter reads them), else this process's."""
    if versions is None:
        versions = python_env.versions(environment) if environment else installed_versions()
    return {name: versions.get(name) for name in affecting(target)}
