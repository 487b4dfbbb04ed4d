"""docs/v2_study.json, the v2 study's record (configs/studies/v2_reduced.yaml), holds every row at
the study's budget with both validations, and the README shows its table."""
import importlib.util
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "configs" / "studies" / "v2_reduced.yaml"


def study_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("study", ROOT / "scripts" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_record_holds_every_row_of_the_study_with_both_validations():
    study = yaml.safe_load(STUDY.read_text())
    record = json.loads((ROOT / "docs" / "v2_study.json").read_text())
    assert record["budget"]["epochs"] == study["epochs"]
    assert list(record["rows"]) == [row["name"] for row in study["rows"]]
    # The rows the v2 recipe rests on are finished (the others run after v2's training; the table shows "-").
    finished = [name for name, row in record["rows"].items() if row["runs"]]
    assert {"base", "faceres", "fer_only", "similarity", "box_1.25", "tcce_0.3", "photo_augment"} <= set(finished)
    for name in finished:
        [run] = record["rows"][name]["runs"]  # one seed per row, finished at the budget
        assert 0 < run["fer2013_public_test_mean_class_accuracy"] <= run["fer2013_public_test_overall_accuracy"] < 1
        if name != "ferplus_soft":  # validated on FER+ Valid; its photo_val is TCCE val like every other row's
            assert run["val_overall_accuracy"] == run["fer2013_public_test_overall_accuracy"], name
        assert 0 < run["photo_val_overall_accuracy"] < 1 and run["photo_val_faces_missed"] is not None, name


def test_the_readme_shows_the_records_table(monkeypatch):
    script = study_script(monkeypatch)
    record = json.loads((ROOT / "docs" / "v2_study.json").read_text())
    table = script.table(record, script.columns(yaml.safe_load(STUDY.read_text())))
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(record["rows"])
    for line in rows:
        assert line in readme, line
