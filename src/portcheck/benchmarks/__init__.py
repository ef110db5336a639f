"""Stage benchmarks (rules/benchmarks.smk): offline throughput and latency, the serving check, and the
figures derived from them (roofline, cross-checks)."""
