"""docs/ablation.json, the ablation study's record, has the stated shape and is what docs/ablation.md shows."""
import json
from pathlib import Path

from msfer import studies

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("baseline", "scale3", "scales23", "full", "full_ce", "full_pseudo", "full_template")


def test_the_record_holds_every_row_at_the_stated_budget_and_the_paired_difference():
    record = json.loads((ROOT / "docs" / "ablation.json").read_text())
    assert record["budget"]["epochs"] >= 5 and record["budget"]["train_images"] == 28709
    assert set(ROWS) <= set(record["rows"])
    for name in ROWS:
        runs = record["rows"][name]["runs"]
        assert len(runs) >= (2 if name in ("baseline", "full") else 1), name
        for run in runs:
            assert 0 < run["mean_class_accuracy"] <= run["overall_accuracy"] + 0.2 < 1.2, name
            if name != "full_pseudo":  # TCCE has no pseudo-labels
                assert 0 <= run["tcce_val"]["overall_accuracy"] <= 1, name
    difference = record["full_minus_baseline"]
    assert difference["ci95"][0] <= difference["overall_accuracy"] <= difference["ci95"][1]
    assert difference["images"] == 3589 and difference["seed_pairs"] >= 2


def test_the_ablation_page_shows_the_records_table():
    record = json.loads((ROOT / "docs" / "ablation.json").read_text())
    page = (ROOT / "docs" / "ablation.md").read_text()
    table = studies.table(record)  # what scripts/ablation_study.py writes
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(record["rows"])  # the header, then one line per row
    for line in rows:
        assert line in page, line
