"""`msfer annotate` end to end on a tiny folder dataset of astronaut crops: records, resume, interruption."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut

from msfer.cli import main
from msfer.errors import MsferError
from msfer.regions import annotator as annotate
from msfer.regions.annotations import AnnotationWriter, load_annotations


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """happy/ and sad/ with 8 images: faces at several sizes (JPEG, PNG, colour, grey), a blank, a corrupt file."""
    root = tmp_path_factory.mktemp("faces")
    image = astronaut()
    face = image[40:200, 150:300]
    (root / "happy").mkdir()
    (root / "sad").mkdir()
    Image.fromarray(image).save(root / "happy" / "full.jpg")
    Image.fromarray(image[20:260, 120:340]).save(root / "happy" / "crop.png")
    Image.fromarray(cv2.cvtColor(cv2.resize(face, (48, 48), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)).save(
        root / "happy" / "fer_like.jpg"
    )
    Image.fromarray(cv2.resize(face, (100, 100))).save(root / "happy" / "aligned.jpg")
    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(root / "sad" / "blank.jpg")
    Image.fromarray(face[:, ::-1]).save(root / "sad" / "mirrored.jpg")
    Image.fromarray(cv2.resize(face, (64, 64))).save(root / "sad" / "small.png")
    (root / "sad" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


ALL_IDS = {f"happy/{n}" for n in ("full.jpg", "crop.png", "fer_like.jpg", "aligned.jpg")} | {
    f"sad/{n}" for n in ("blank.jpg", "mirrored.jpg", "small.png", "corrupt.jpg")
}


def annotate_cli(dataset: Path, out: Path, *options: str) -> int:
    return main(["annotate", str(dataset), "--format", "folder", "--out", str(out), "--batch-size", "2", *options])


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_annotate_writes_one_record_per_image_in_original_pixels(dataset, tmp_path, capsys):
    out = tmp_path / "ann.jsonl"
    sheet = tmp_path / "review.png"
    assert annotate_cli(dataset, out, "--review", str(sheet)) == 0
    records = load_annotations(out)
    assert set(records) == ALL_IDS and len(lines_of(out)) == len(ALL_IDS)
    for name in ("happy/full.jpg", "happy/crop.png", "happy/fer_like.jpg", "happy/aligned.jpg", "sad/mirrored.jpg",
                 "sad/small.png"):
        record = records[name]
        assert record["status"] == "ok", name
        assert set(record["regions"]) == {"face", "left_eye", "right_eye", "nose", "mouth"}
        for box in record["regions"].values():
            assert 0 <= box[0] <= box[2] <= record["width"] and 0 <= box[1] <= box[3] <= record["height"]
    assert records["sad/blank.jpg"]["status"] == "no_face" and records["sad/blank.jpg"]["regions"] == {}
    assert records["sad/corrupt.jpg"]["status"] == "unreadable"
    # The 48 x 48 crop was enlarged for detection, but its boxes are in its own 48 px frame.
    small = records["happy/fer_like.jpg"]
    assert (small["width"], small["height"]) == (48, 48)
    assert small["transform"]["scale"] == pytest.approx(annotate.DETECT_SIZE / 48)
    full_face = np.array(records["happy/full.jpg"]["regions"]["face"])
    expected = (full_face - [150, 40, 150, 40]) * [48 / 150, 48 / 160, 48 / 150, 48 / 160]
    assert np.allclose(small["regions"]["face"], np.clip(expected, 0, 48), atol=3)
    # The same face at 512 px and cropped: the crop's boxes are the full photo's, shifted.
    full, crop = records["happy/full.jpg"], records["happy/crop.png"]
    assert np.allclose(np.array(crop["landmarks"]) + [120, 20], full["landmarks"], atol=3)
    assert records["happy/fer_like.jpg"]["label"] != records["sad/blank.jpg"]["label"]
    summary = capsys.readouterr().out
    assert "all" in summary and "no_face 1" in summary and "unreadable 1" in summary
    assert Image.open(sheet).size[0] > 500


def test_merge_eyes_and_split_options(dataset, tmp_path):
    out = tmp_path / "merged.jsonl"
    assert annotate_cli(dataset, out, "--merge-eyes", "--split", "all") == 0
    assert set(load_annotations(out)["happy/full.jpg"]["regions"]) == {"face", "eyes", "nose", "mouth"}
    assert annotate_cli(dataset, out, "--split", "test") == 2  # no such split: a clear error, not a crash


def test_what_the_reader_leaves_out_is_named_on_stderr(tmp_path, capsys):
    root = tmp_path / "faces"
    (root / "happy").mkdir(parents=True)
    Image.fromarray(astronaut()).save(root / "happy" / "good.jpg")
    (root / "happy" / "dangling.jpg").symlink_to("gone.jpg")
    (root / "happy" / "notes.txt").write_text("not a face")
    out = tmp_path / "ann.jsonl"
    assert annotate_cli(root, out) == 0
    errors = capsys.readouterr().err
    assert "happy/dangling.jpg: broken symbolic link (its target gone.jpg does not exist)" in errors
    assert "happy/notes.txt: not an image file" in errors
    assert "not annotated: not a file 1, not an image file 1" in errors
    assert [record["id"] for record in lines_of(out)] == ["happy/good.jpg"]


def test_a_resumed_run_skips_what_is_written(dataset, tmp_path):
    out = tmp_path / "ann.jsonl"
    assert annotate_cli(dataset, out) == 0
    before = out.read_bytes()
    assert annotate_cli(dataset, out, "--resume") == 0
    assert out.read_bytes() == before


def test_an_existing_out_needs_resume_or_overwrite(dataset, tmp_path, capsys):
    # The rule msfer predict follows too: an existing --out is never appended to or replaced unasked.
    out = tmp_path / "ann.jsonl"
    out.write_text('{"id": "someone/else.jpg", "status": "ok"}\n')
    assert annotate_cli(dataset, out) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text().startswith('{"id": "someone/else.jpg"')
    with pytest.raises(SystemExit) as usage_error:  # the two together: argparse's usage error
        annotate_cli(dataset, out, "--resume", "--overwrite")
    assert usage_error.value.code == 2 and out.read_text().startswith('{"id": "someone/else.jpg"')
    assert annotate_cli(dataset, out, "--overwrite") == 0
    assert sorted(record["id"] for record in lines_of(out)) == sorted(ALL_IDS)  # replaced, not appended to


def test_an_interrupted_run_keeps_its_batches_and_a_rerun_completes_it(dataset, tmp_path, monkeypatch):
    out = tmp_path / "ann.jsonl"
    real_annotate = annotate.Annotator.annotate
    calls = []

    def interrupted_on_third_batch(self, samples, images):
        calls.append(len(samples))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_annotate(self, samples, images)

    monkeypatch.setattr(annotate.Annotator, "annotate", interrupted_on_third_batch)
    assert annotate_cli(dataset, out) == 130
    assert len(lines_of(out)) == 4  # the two batches finished before Ctrl-C
    with out.open("a") as handle:  # and a line torn by a crash while writing
        handle.write('{"id": "sad/small.png", "split": "all", "sta')
    monkeypatch.setattr(annotate.Annotator, "annotate", real_annotate)

    assert annotate_cli(dataset, out, "--resume") == 0
    ids = [record["id"] for record in lines_of(out)]
    assert sorted(ids) == sorted(ALL_IDS)  # every id, exactly once, every line whole


def test_writer_keeps_a_whole_last_record_that_lacks_its_newline(tmp_path):
    out = tmp_path / "ann.jsonl"
    out.write_text('{"id": "a", "status": "ok"}\n{"id": "b", "status": "ok"}')
    with AnnotationWriter(out) as writer:
        assert set(writer.records) == {"a", "b"}
        writer.write([{"id": "c", "status": "no_face"}])
    assert [r["id"] for r in lines_of(out)] == ["a", "b", "c"]


def test_load_annotations_reads_gzip_and_reports_damage(tmp_path):
    packed = tmp_path / "ann.jsonl.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write('{"id": "x", "status": "ok"}\n')
    assert load_annotations(packed) == {"x": {"id": "x", "status": "ok"}}
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text('{"id": "x"}\nnot json\n{"id": "y"}\n')
    with pytest.raises(MsferError, match=r"damaged.jsonl: line 2"):
        load_annotations(damaged)
    with pytest.raises(MsferError, match="missing.jsonl"):
        load_annotations(tmp_path / "missing.jsonl")


def test_file_names_that_are_not_utf8(tmp_path):
    """A Latin-1 JPEG name crashed OpenCV's reader (the whole process).

    Run in a subprocess, so that a regression fails the test instead of killing the run.
    """
    import os
    import subprocess
    import sys

    import msfer

    root = tmp_path / "latin1"
    (root / "happy").mkdir(parents=True)
    name = os.fsdecode(os.fsencode(root / "happy") + b"/caf\xe9.jpg")
    Image.fromarray(astronaut()).save(name, format="JPEG")
    out, sheet = tmp_path / "ann.jsonl", tmp_path / "review.png"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict",
           "PYTHONPATH": os.pathsep.join([str(Path(msfer.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "msfer.cli", "annotate", str(root), "--format", "folder",
                           "--out", str(out), "--review", str(sheet)], env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    records = load_annotations(out)
    assert [(os.fsencode(key), record["status"]) for key, record in records.items()] == [(b"happy/caf\xe9.jpg", "ok")]
