"""The vLLM engine (engine), its preflight checks, the one settings -> vLLM mapping (engine_args) and the
worker extension that runs inside vLLM's worker process."""
