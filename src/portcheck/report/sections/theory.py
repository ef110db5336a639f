"""Section bf16 vs fp32: the formats' facts (theory, not a measurement) beside the measured figures."""

from __future__ import annotations

from portcheck.report.format import pct, sci, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite, every_target
from portcheck.targets import parse_target

FORMAT_FACTS = (
    ("exponent bits", "8", "8", "same dynamic range"),
    ("mantissa bits (stored)", "7", "23", ""),
    ("unit roundoff (max relative rounding error)", "2^-8 ≈ 3.9e-3 (0.39%)", "2^-24 ≈ 6.0e-8", "per rounding"),
    ("largest finite value", "≈ 3.39e38", "≈ 3.40e38", ""),
    ("smallest normal value", "≈ 1.18e-38", "≈ 1.18e-38", ""),
)
FACTS_SOURCE = ("theory, not a measurement: the bfloat16 and IEEE 754 binary32 format definitions, read from no "
                "artifact and no config key; the targets' dtypes are the last part of their names (config targets)")


def theory_section(targets: list[TargetData]) -> dict:
    measured = [[t.name, parse_target(t.name).dtype, sci(t.compare.get("max_rel_err")),
                 pct(t.compare.get("thousandth_err_ratio")), sci(t.compare.get("kld_mean")),
                 pct(t.compare.get("top1_agreement"))]
                for t in targets if t.compare is not None]
    measured_source = cite(every_target(targets, "compare"), "max_rel_err", "thousandth_err_ratio", "kld_mean",
                           "top1_agreement")
    return {
        "facts": table(["Property", "bf16", "fp32", "Note"], [list(fact) for fact in FORMAT_FACTS], FACTS_SOURCE),
        "measured": table(["Target", "dtype", "MaxRelativeErr", "rel. err < 0.001", "KLD mean", "Top-1 agreement"],
                          measured, f"{measured_source}; dtype: the target name"),
    }
