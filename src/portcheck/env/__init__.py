"""Stage env (rules/env.smk): capture the host, device and software stack a target runs on."""
