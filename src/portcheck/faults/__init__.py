"""Port faults on purpose (issue 18): the fault classes (catalog), the vLLM plugin and hf hooks that inject them,
and make calibrate, which measures what the checks catch."""
