"""Put restated facts into the held-out corpus (issue 18): src/portcheck/dump/data/heldout_corpus.txt.

Natural held-out text gives a tiny model nothing far back to use, so no check on a carried state (Gated DeltaNet's
state across chunks, attention far back) has positions that need it. This inserts, between sentences, a fact in the
embedded model's training template ("The code for K is V.", portcheck.model.curriculum) and, once at least GAP tokens
of the text have followed, the same fact again; then, SPACING tokens on, the next fact. At each restated V the
model is right only by recalling the statement 2-3 Gated DeltaNet chunks back. Run once on the plain text
(`--from-git <rev>` reads it from git); the K/V draw is seeded, so the output is reproducible."""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
CORPUS = ROOT / "src" / "portcheck" / "dump" / "data" / "heldout_corpus.txt"
GAP, SPACING = 120, 24  # tokens of text between a statement and its restatement; after a restatement


def with_facts(text: str, tokenizer, words, seed: int = 18) -> str:
    from portcheck.model.curriculum import TEMPLATE

    rng = random.Random(seed)
    keys, values = ([tokenizer.id_to_token(i)[1:] for i in ids] for ids in words)
    before, between, after = TEMPLATE
    out, pending, since = [], None, 0
    for paragraph in text.split("\n\n"):
        pieces = []
        for sentence in re.findall(r"[^.。]*[.。]\s*|[^.。]+$", paragraph):
            pieces.append(sentence)
            since += len(tokenizer.encode(sentence).ids)
            if pending is None and since >= SPACING:
                pending = f"{before} {rng.choice(keys)}{between} {rng.choice(values)}{after}"
                pieces.append(_after(sentence, pending))
                since = 0
            elif pending is not None and since >= GAP:
                pieces.append(_after(sentence, pending))
                pending, since = None, 0
        out.append("".join(pieces))
    return "\n\n".join(out)


def _after(sentence: str, fact: str) -> str:
    """The fact as the tokenizer sees it in training (one leading space), after a sentence that may end in one."""
    return (fact.lstrip() + " ") if sentence[-1:].isspace() else fact


def main() -> None:
    from portcheck.model import curriculum, tiny

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--from-git", help="read the plain corpus from this revision")
    args = parser.parse_args()
    text = (subprocess.run(["git", "show", f"{args.from_git}:{CORPUS.relative_to(ROOT)}"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout if args.from_git else CORPUS.read_text("utf-8"))
    tokenizer = tiny.train_tokenizer(tiny.corpus_text())
    CORPUS.write_text(with_facts(text, tokenizer, curriculum.fact_words(tokenizer, curriculum.RECIPE["words"])),
                      encoding="utf-8")


if __name__ == "__main__":
    main()
