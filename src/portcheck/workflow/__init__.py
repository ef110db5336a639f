"""Snakemake plumbing: the script adapter, the code inputs a rule declares, version params, the shared store."""
