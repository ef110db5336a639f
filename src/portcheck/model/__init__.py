"""Stage model (rules/model.smk): fetch the checkpoint (or build the embedded tiny model) and write its manifest."""
