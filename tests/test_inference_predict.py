"""`msfer predict` end to end: photos, folders, video, JSON Lines / CSV, visualisations, sharding and bad input."""
from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from msfer.cli import main
from msfer.labels import EMOTIONS

skimage_data = pytest.importorskip("skimage.data")


def huge_png(path: Path, side: int = 20000) -> None:
    """A valid 1-bit PNG of side x side pixels in a few tens of kB (far above Pillow's decompression-bomb limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + side // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def moving_face_frames(astronaut: np.ndarray, count: int) -> list[np.ndarray]:
    """640 x 480 frames with the astronaut's head moving right by 4 px a frame."""
    head = np.asarray(Image.fromarray(astronaut[0:300, 100:360]).resize((260, 300)))
    frames = []
    for k in range(count):
        frame = np.full((480, 640, 3), 90, np.uint8)
        frame[60:360, 100 + 4 * k : 360 + 4 * k] = head
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def media(tmp_path_factory, astronaut) -> dict[str, Path]:
    """A folder of good photos (one nested, one without a face) and a set of bad inputs beside it."""
    root = tmp_path_factory.mktemp("media")
    photos = root / "photos"
    (photos / "nested").mkdir(parents=True)
    Image.fromarray(astronaut).save(photos / "astronaut.jpg", quality=95)
    Image.fromarray(np.hstack([astronaut, astronaut])).save(photos / "nested" / "two.png")
    Image.fromarray(skimage_data.coffee()).save(photos / "coffee.jpg")
    (photos / "notes.txt").write_text("not an image, and not picked up from a folder")
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.png").write_text("this is not a PNG")
    data = (photos / "astronaut.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (1, 1), (10, 20, 30)).save(bad / "tiny.png")
    huge_png(bad / "huge.png")
    (bad / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    video = root / "clip.avi"
    write_video(video, moving_face_frames(astronaut, 6))
    return {"photos": photos, "bad": bad, "video": video}


def read_jsonl(path: Path) -> dict[str, list[dict]]:
    records: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        records.setdefault(Path(record["source"]).name, []).append(record)
    return records


def test_folder_video_and_bad_inputs_in_one_batch(media, random_weights, tmp_path, capsys):
    out, vis = tmp_path / "results.jsonl", tmp_path / "vis"
    bad = media["bad"]
    inputs = [media["photos"], media["video"], *(bad / name for name in
              ("empty.jpg", "text.png", "truncated.jpg", "tiny.png", "huge.png", "broken.mp4", "absent.jpg"))]
    status = main(["predict", *map(str, inputs), "--weights", str(random_weights), "--out", str(out),
                   "--save-vis", str(vis), "--batch-size", "2"])
    assert status == 1  # the bad inputs make the run fail, after everything else was processed
    errors = capsys.readouterr().err
    for name, reason in [("empty.jpg", "empty file"), ("text.png", "cannot decode"), ("truncated.jpg", "cannot decode"),
                         ("huge.png", "decompression bomb"), ("broken.mp4", "cannot open as a video"),
                         ("absent.jpg", "no such file")]:
        assert name in errors and reason in errors, (name, errors)

    records = read_jsonl(out)
    assert [len(r["faces"]) for r in records["astronaut.jpg"]] == [1]
    assert [len(r["faces"]) for r in records["two.png"]] == [2]
    assert records["coffee.jpg"][0]["faces"] == [] and records["tiny.png"][0]["faces"] == []
    assert "notes.txt" not in records
    for name in ("empty.jpg", "text.png", "truncated.jpg", "huge.png", "broken.mp4", "absent.jpg"):
        assert "error" in records[name][0]
    face = records["astronaut.jpg"][0]["faces"][0]
    assert set(face) == {"box", "score", "landmarks", "regions", "probs", "label", "confidence", "decision",
                         "face_size", "sharpness", "roll", "yaw", "quality", "quality_issues"}
    assert list(face["probs"]) == list(EMOTIONS)

    frames = records["clip.avi"]
    assert [r["frame"] for r in frames] == list(range(6))
    assert [r["time"] for r in frames] == pytest.approx([k / 10 for k in range(6)])
    assert {f["track_id"] for r in frames for f in r["faces"]} == {1}

    # Annotated copies keep the inputs' paths below their common folder, with the full name and a suffix.
    assert (vis / "photos" / "astronaut.jpg.msfer.jpg").is_file()
    assert (vis / "photos" / "nested" / "two.png.msfer.jpg").is_file()
    annotated = np.asarray(Image.open(vis / "photos" / "astronaut.jpg.msfer.jpg"))
    assert annotated.shape == (512, 512, 3)
    assert not [p for p in vis.rglob("*") if p.name.startswith(".msfer-")]  # no temporary file left behind
    capture = cv2.VideoCapture(str(vis / "clip.avi.msfer.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    capture.release()


def test_csv_has_one_row_per_face(media, random_weights, tmp_path):
    out = tmp_path / "results.csv"
    assert main(["predict", str(media["photos"]), "--weights", str(random_weights), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    by_source = {}
    for row in rows:
        by_source.setdefault(Path(row["source"]).name, []).append(row)
    assert len(by_source["two.png"]) == 2 and len(by_source["astronaut.jpg"]) == 1
    assert by_source["coffee.jpg"][0]["label"] == ""  # a photo without a face still gets its row
    row = by_source["astronaut.jpg"][0]
    assert row["label"] in EMOTIONS
    assert sum(float(row[name]) for name in EMOTIONS) == pytest.approx(1.0, abs=1e-3)


def test_shards_split_the_inputs(media, random_weights, tmp_path):
    sources = []
    for index in range(2):
        out = tmp_path / f"shard{index}.jsonl"
        assert main(["predict", str(media["photos"]), "--weights", str(random_weights), "--out", str(out),
                     "--num-shards", "2", "--shard-index", str(index)]) == 0
        sources.append({r["source"] for r in map(json.loads, out.read_text().splitlines())})
    assert not sources[0] & sources[1]
    assert {Path(s).name for s in sources[0] | sources[1]} == {"astronaut.jpg", "two.png", "coffee.jpg"}


def test_frame_skipping_and_absent_webcam(media, random_weights, tmp_path, capsys):
    out = tmp_path / "video.jsonl"
    status = main(["predict", str(media["video"]), "--webcam", "9", "--every", "2", "--smooth",
                   "--weights", str(random_weights), "--out", str(out)])
    assert status == 1
    assert "webcam 9 cannot be opened" in capsys.readouterr().err
    records = read_jsonl(out)
    assert [r["frame"] for r in records["clip.avi"]] == [0, 2, 4]
    assert "error" in records["9"][0]


def test_usage_errors(random_weights, tmp_path, capsys):
    assert main(["predict", "--weights", str(random_weights)]) == 2
    assert "at least one INPUT" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--weights", str(random_weights), "--out", str(tmp_path / "r.txt")]) == 2
    assert ".jsonl or .csv" in capsys.readouterr().err
