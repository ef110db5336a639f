"""The checks' detection table (make calibrate): every fault class of the fault plugin (portcheck.faults) at two
magnitudes and 10 clean runs on cpu-vllm-bf16 against the hf fp32 reference, on the embedded model and the default
config; figures printed and written, nothing asserted (tests/test_calibrate.py runs the short version).

Writes results/calibration/detection.{json,md} and, with --ship, src/portcheck/faults/data/detection.json, which the
report's method note cites.

    python scripts/calibrate.py [--short] [--ship] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from portcheck.config import load_schema, load_yaml, validate_config  # noqa: E402
from portcheck.faults import calibrate  # noqa: E402
from portcheck.model.acquire import fetch_model  # noqa: E402

SHIPPED = ROOT / "src" / "portcheck" / "faults" / "data" / "detection.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="one magnitude per class and 2 clean runs")
    parser.add_argument("--ship", action="store_true", help=f"also write {SHIPPED.relative_to(ROOT)}")
    parser.add_argument("--model", type=Path, help="a checkpoint (default: the embedded model, built if missing)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "calibration")
    args = parser.parse_args()
    config = validate_config(load_yaml(ROOT / "config" / "config.yaml"), load_schema(ROOT / "config" / "schema.yaml"),
                             ROOT)
    model = args.model or ROOT / "resources" / "models" / "tiny-qwen3.5"
    if not model.exists():
        fetch_model("tiny", model, seed=int(config["model"]["tiny_seed"]))
    started = time.perf_counter()
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    label = str(args.model) if args.model else f"the embedded tiny Qwen3.5 (seed {config['model']['tiny_seed']})"
    record = calibrate.calibrate(model, config, work, short=args.short, base_dir=ROOT, model_label=label)
    shutil.rmtree(work, ignore_errors=True)  # the dumps: tens of MB, the record keeps what they showed
    calibrate.write(record, args.out)
    if args.ship:
        SHIPPED.parent.mkdir(exist_ok=True)
        SHIPPED.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    print(calibrate.table(record))
    print(f"calibration: {time.perf_counter() - started:.0f} s ({record['seconds']}); written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
