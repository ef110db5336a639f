"""Stage compare (rules/compare.smk): each target's logit dump against the reference's, with a verdict."""
