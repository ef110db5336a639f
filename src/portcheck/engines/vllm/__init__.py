"""The vLLM engine: preflight (checks before the costly start), engine_args (the one settings -> vLLM mapping for
`vllm.LLM` and `vllm serve`), engine (VLLMEngine), process and logs (its processes and log capture),
worker_extension (what runs inside vLLM's worker process) and adaptation (the checklist from what the worker saw)."""
