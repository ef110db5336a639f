"""make calibrate's short version (issue 18 section 3): one magnitude per fault class and two clean runs on the real
vLLM CPU engine, so the detection claims of the shipped record (src/portcheck/faults/data/detection.json, which the
report cites) cannot rot unnoticed."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from portcheck.faults import calibrate
from portcheck.faults.catalog import CLASSES

from conftest import default_config, has_gdn

pytestmark = pytest.mark.vllm


def shipped() -> dict:
    return json.loads((resources.files("portcheck.faults") / "data/detection.json").read_text(encoding="utf-8"))


def test_the_plan_runs_every_class_at_two_magnitudes_or_the_larger():
    full, clean = calibrate.plan(short=False)
    calibrated = set(CLASSES) - set(calibrate.NOT_CALIBRATED)
    assert clean == 10 and len(full) == 2 * len(calibrated) and set(calibrate.MAGNITUDES) == calibrated
    short, clean = calibrate.plan(short=True)
    assert clean == 2 and short == [f"{name}:{sizes[-1]:g}" for name, sizes in calibrate.MAGNITUDES.items()]


def test_a_detection_row_names_the_checks_that_failed_and_those_left_inconclusive():
    checks = {check: {"status": "pass"} for check in calibrate.CHECKS}
    run = {"fault": "state_decay:1", "floor_multiple": {"corpus": 1.0, "decode": None, "chunked": 2.6, "batch": 1.2},
           "layers": {"first_over": None}, "checks": {**checks, "chunked vs floor": {"status": "inconclusive"}}}
    row = calibrate.detection([run])[0]
    assert (row["caught"], row["caught_by"], row["inconclusive_on"]) == (False, [], ["chunked vs floor"])
    assert not row["should_be_caught"] and row["largest_floor_multiple"] == 2.6  # under 3x the floor
    record = {"detection": [row], "false_failures": {}}
    assert "| `state_decay:1` | 1.0x, -, 2.6x, 1.2x | not caught (inconclusive: chunked vs floor) | - |" in \
        calibrate.table(record)
    run["checks"]["decode vs floor"] = {"status": "fail"}
    row = calibrate.detection([run])[0]
    assert row["caught_by"] == ["decode vs floor"] and "| decode vs floor | - |" in calibrate.table({**record,
                                                                                                    "detection": [row]})


def test_the_shipped_record_covers_every_class_and_ten_clean_runs():
    record = shipped()
    assert {row["fault"] for row in record["detection"]} == set(calibrate.plan(short=False)[0])
    assert all(counts["runs"] == 10 for counts in record["false_failures"].values())


def test_the_short_calibration_catches_what_the_shipped_record_says(tiny_model_dir, tmp_path):
    if not has_gdn(tiny_model_dir):
        pytest.skip("the fault classes act on Gated DeltaNet layers: this line's stand-in model has none")
    from portcheck.config import load_schema, validate_config

    from conftest import ROOT

    config = validate_config(default_config(), load_schema(ROOT / "config" / "schema.yaml"), ROOT)
    record = calibrate.calibrate(tiny_model_dir, config, tmp_path, short=True, base_dir=ROOT)
    print(calibrate.table(record), record["seconds"])
    from portcheck.env.capture import cpu_model
    assert record["host"]["cpu"] == cpu_model() and record["host"]["torch"]  # the record names what measured it
    measured = {row["fault"]: row for row in record["detection"]}
    expected = {row["fault"]: row for row in shipped()["detection"] if row["fault"] in measured}
    assert set(measured) == set(expected) == set(calibrate.plan(short=True)[0])
    for fault, row in expected.items():
        # Caught or not as the record says, by at least one of the checks it names. Not by every one: a check at the
        # edge of its allowed ratio flips between hosts whose float kernels differ (the embedded model is trained on the
        # host that builds it; vLLM's bf16 kernels use AMX where the CPU has it). Measured on an AMX host (whose
        # record ships now) against the previous record's host: state_dropped:99's chunked vs base 2.09x (bounds
        # 1.95x-2.24x, inconclusive) against 2.16x (2.03x-2.29x, fail), and layer_noise:0.3's batch perplexity
        # within 1% against 1.12%. So a fault the record misses may fail here only on a check the record found at its
        # edge (inconclusive: state_decay:1's chunked vs floor, 2.43x with bounds 1.98x-2.97x).
        caught_by = set(measured[fault]["caught_by"])
        if row["caught"]:
            assert caught_by & set(row["caught_by"]), (fault, measured[fault])
        else:
            assert caught_by <= set(row.get("inconclusive_on") or []), (fault, measured[fault])
    assert measured["state_dropped:99"]["caught"] and measured["batch_noise:0.1"]["caught"]
    assert all(counts["failed"] == 0 for counts in record["false_failures"].values()), record["false_failures"]
    assert measured["layer_noise:0.3"]["layers"]["first_over"] == "layer 5"  # the fault's layer is named
