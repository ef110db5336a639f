"""Stage modes: a vLLM target run again in one engine mode (graph, prefix cache, chunked prefill, MTP speculative
decoding), on a decode workload where that mode acts, with the engine's own counters as proof that it ran; then
the mode against the reference and against the same target in its base configuration."""
