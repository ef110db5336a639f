"""Stage dump (rules/dump.smk): one engine start per target writes the logit dump, the adaptation checklist,
the determinism test and the generation samples."""
