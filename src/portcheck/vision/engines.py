"""Which engines take image prompts so far (light: rules/common.smk imports it while Snakemake parses)."""

IMAGE_ENGINES = ("hf",)
NOT_WIRED = "image prompts reach only the hf engine so far (vLLM's multi_modal_data is not wired in portcheck yet)"
