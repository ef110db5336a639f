"""portcheck: does a ported LLM run, agree with a trusted reference, and how fast is it."""

__version__ = "0.1.0"
