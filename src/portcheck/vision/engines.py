"""Which engines take image prompts (light: rules/common.smk imports it while Snakemake parses): transformers through
the conditional-generation class with pixel values, vLLM through multi_modal_data."""

IMAGE_ENGINES = ("hf", "vllm")
NOT_WIRED = "image prompts reach only the hf and vllm engines"
