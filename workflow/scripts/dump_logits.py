"""Snakemake adapter: rule dump_logits -> portcheck.dump.run.run_target (one engine start per target)."""

from pathlib import Path

from portcheck.config import read_corpus_text
from portcheck.engines.settings import EngineSettings
from portcheck.hashing import sha256_text
from portcheck.dump.run import run_target
from portcheck.workflow.script import run_script
from portcheck.targets import parse_target


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    settings["extra"] = {"log_file": smk.log.engine} if parse_target(smk.wildcards.target).engine == "vllm" else {}
    run_target(
        smk.wildcards.target,
        smk.input.model,
        list(smk.params.prompts),
        EngineSettings(**settings),
        outputs=dict(smk.output.items()),
        greedy_tokens=smk.params.greedy_tokens,
        determinism=dict(smk.params.determinism),
        samples=dict(smk.params.samples),
        corpus=corpus_job(smk),
        decode=dict(smk.params.decode) if smk.params.decode["enabled"] else None,
        layers=dict(smk.params.layers) if smk.params.layers["enabled"] else None,
    )


def corpus_job(smk):
    """The corpus windows to score in this engine start (None: corpus disabled)."""
    corpus = dict(smk.params.corpus)
    if not corpus["enabled"]:
        return None
    path = Path(smk.input.corpus)
    text = read_corpus_text(path)
    return {"text": text, "path": path.name, "sha256": sha256_text(text),
            "window_length": corpus["window_length"], "windows": corpus["windows"]}


# vLLM's engine spawns processes that re-import this module: only the main process may run the job.
if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
