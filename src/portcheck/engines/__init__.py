"""One engine abstraction (base: hf, vllm) over one device abstraction (devices: cpu, cuda, npu).
Modules here are imported by path (factory.make_engine), never re-exported: a rule's code inputs stay exact."""
