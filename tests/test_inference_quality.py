"""Face quality in every output: the fields are present and in range in the API, JSON Lines, CSV and the
REST service, they agree with each other, and `--min-quality good` leaves out the faces flagged low."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from msfer.cli import main
from msfer.faces.quality import QUALITY_ISSUES, QualityThresholds
from msfer.inference.recognizer import EmotionRecognizer

QUALITY_FIELDS = ("face_size", "sharpness", "roll", "yaw", "quality", "quality_issues")


def check_ranges(face: dict, width: int, height: int) -> None:
    """Every quality field of one face (a dict as written to JSON) is present, typed and in its documented range."""
    x1, y1, x2, y2 = face["box"]
    assert 0 < face["face_size"] <= min(x2 - x1, y2 - y1) + 0.1 <= min(width, height) + 0.1
    assert face["sharpness"] >= 0
    assert -180 < face["roll"] <= 180 and -90 < face["yaw"] < 90
    assert 0 <= face["score"] <= 1
    assert face["quality"] in ("good", "low")
    assert set(face["quality_issues"]) <= set(QUALITY_ISSUES)
    assert (face["quality"] == "low") == bool(face["quality_issues"])


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut) -> dict[str, Path]:
    """The astronaut as it is (a good face) and blurred (the same face, flagged blurry)."""
    root = tmp_path_factory.mktemp("quality")
    Image.fromarray(astronaut).save(root / "sharp.jpg", quality=95)
    Image.fromarray(cv2.GaussianBlur(astronaut, (0, 0), 6)).save(root / "blurred.jpg", quality=95)
    return {"root": root, "sharp": root / "sharp.jpg", "blurred": root / "blurred.jpg"}


def test_api_faces_carry_quality_in_range(recognizer, photos):
    sharp, blurred = (recognizer.predict(photos[name])[0] for name in ("sharp", "blurred"))
    for face in (sharp, blurred):
        check_ranges(face.to_dict(), 512, 512)
    assert sharp.quality == "good" and sharp.quality_issues == []
    assert abs(sharp.roll) < 10 and abs(sharp.yaw) < 15  # the astronaut looks into the camera, head level
    assert 80 < sharp.face_size < 130  # her face box is about 95 x 120 px
    assert blurred.sharpness < QualityThresholds().min_sharpness < sharp.sharpness
    assert blurred.quality == "low" and "blurry" in blurred.quality_issues
    assert set(QUALITY_FIELDS) <= set(sharp.to_dict())


def test_jsonl_and_csv_carry_the_same_quality(random_weights, photos, tmp_path):
    jsonl, table = tmp_path / "faces.jsonl", tmp_path / "faces.csv"
    for out in (jsonl, table):
        assert main(["predict", str(photos["root"]), "--weights", str(random_weights), "--out", str(out)]) == 0
    records = {Path(r["source"]).name: r for r in map(json.loads, jsonl.read_text().splitlines())}
    rows = {Path(r["source"]).name: r for r in csv.DictReader(table.open())}
    assert set(records) == set(rows) == {"sharp.jpg", "blurred.jpg"}
    for name in records:
        face, row = records[name]["faces"][0], rows[name]
        check_ranges(face, 512, 512)
        for field in ("face_size", "sharpness", "roll", "yaw"):
            assert float(row[field]) == face[field]
        assert row["quality"] == face["quality"] and row["quality_issues"] == ";".join(face["quality_issues"])
    assert records["blurred.jpg"]["faces"][0]["quality"] == "low"


def test_min_quality_good_leaves_out_low_quality_faces(random_weights, photos, tmp_path, capsys):
    out = tmp_path / "good.jsonl"
    assert main(["predict", str(photos["root"]), "--weights", str(random_weights), "--out", str(out),
                 "--min-quality", "good"]) == 0
    records = {Path(r["source"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["blurred.jpg"]["faces"] == [] and len(records["sharp.jpg"]["faces"]) == 1
    assert "left out 1 face(s) of low quality" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["predict", str(photos["root"]), "--weights", str(random_weights), "--min-quality", "best"])
    assert usage.value.code == 2 and "invalid choice: 'best'" in capsys.readouterr().err


def test_a_face_left_out_is_named_on_its_terminal_line_not_shown_as_no_face(random_weights, photos, capsys):
    assert main(["predict", str(photos["root"]), "--weights", str(random_weights), "--min-quality", "good"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines[str(photos["blurred"])] == "1 face left out (low quality)"
    assert "left out" not in lines[str(photos["sharp"])] and lines[str(photos["sharp"])] != "no face"


def test_a_video_without_out_prints_each_processed_frame_and_counts_left_out_faces_once(random_weights, tmp_path,
                                                                                      astronaut, capsys):
    from test_inference_predict import moving_face_frames, write_video

    clip = tmp_path / "blurred.avi"
    write_video(clip, [cv2.GaussianBlur(frame, (0, 0), 6) for frame in moving_face_frames(astronaut, 6)])
    assert main(["predict", str(clip), "--weights", str(random_weights), "--every", "2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(str(clip))]
    assert [line.split(": ")[0] for line in lines] == [f"{clip} frame {k} at {k / 10:.2f} s" for k in (0, 2, 4)]
    assert all("(low quality)" in line for line in lines), lines  # blurred: every face is flagged
    assert main(["predict", str(clip), "--weights", str(random_weights), "--every", "2", "--min-quality", "good"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith(str(clip))]
    assert [line.split(": ", 1)[1] for line in lines] == ["1 face left out (low quality)"] * 3
    # The frames --every skips show the last faces but are no results: only the 3 processed faces count.
    assert "left out 3 face(s) of low quality" in captured.err


def test_service_faces_carry_quality(random_weights, astronaut):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from msfer.inference.service import create_app

    recognizer = EmotionRecognizer(random_weights)
    client = TestClient(create_app(recognizer))
    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, "PNG")
    face = client.post("/v1/predict", files={"image": ("a.png", buffer.getvalue(), "image/png")}).json()["faces"][0]
    check_ranges(face, 512, 512)
    assert face == recognizer.predict(astronaut)[0].to_dict()  # what the API gives, as JSON


def test_pre_cropped_faces_have_no_pose(recognizer, astronaut):
    face = recognizer.classify_faces([astronaut[30:200, 150:300]])[0].to_dict()
    assert face["roll"] is None and face["yaw"] is None and face["face_size"] == 150.0
    assert face["quality"] in ("good", "low") and "roll" not in face["quality_issues"]
    assert np.isfinite(face["sharpness"])
