"""Stage accuracy: task accuracy with lm-evaluation-harness per target (the hf reference through lm-eval's `hf`
model, vLLM targets through their own `vllm serve` with `local-completions`), compared item by item."""
