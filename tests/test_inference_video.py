"""Video: the IoU tracker, smoothing, frame skipping and timestamps, and `msfer report`."""
from __future__ import annotations

import numpy as np
import pytest

from msfer.cli import main
from msfer.errors import MsferError
from msfer.inference.recognizer import EmotionRecognizer, FaceResult
from msfer.inference.tracking import FaceTracker, box_iou
from msfer.inference.video import VideoSource, predict_video
from msfer.labels import EMOTIONS

from test_inference_predict import moving_face_frames, write_video


def face(box, label: str = "happy", p: float = 0.7) -> FaceResult:
    probs = {name: (p if name == label else (1 - p) / 6) for name in EMOTIONS}
    return FaceResult(list(map(float, box)), 0.99, None, {}, probs, label, p)


def test_box_iou():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    assert np.allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])


def test_tracker_keeps_ids_of_moving_faces_and_ends_lost_tracks():
    tracker = FaceTracker(iou_threshold=0.3, max_missed=1)
    left, right = [0, 0, 100, 100], [300, 0, 400, 100]
    ids = [[f.track_id for f in tracker.update([face(left), face(right)])]]
    ids.append([f.track_id for f in tracker.update([face([310, 5, 410, 105]), face([8, 0, 108, 100])])])
    assert ids == [[1, 2], [2, 1]]  # matched by overlap, whatever the order of the detections
    tracker.update([face([15, 0, 115, 100])])  # the right face is missed once: its track survives
    assert [f.track_id for f in tracker.update([face([20, 0, 120, 100]), face([315, 5, 415, 105])])] == [1, 2]
    tracker.update([])
    tracker.update([])  # missed twice > max_missed: both tracks end, and ids are never reused
    assert [f.track_id for f in tracker.update([face(left)])] == [3]


def test_smoothing_is_an_exponential_moving_average():
    tracker = FaceTracker(smoothing=0.5)
    tracker.update([face([0, 0, 100, 100], "happy", 0.7)])
    smoothed = tracker.update([face([0, 0, 100, 100], "sad", 0.9)])[0]
    assert smoothed.probs["happy"] == pytest.approx(0.5 * 0.7 + 0.5 * (0.1 / 6), abs=1e-4)
    assert smoothed.probs["sad"] == pytest.approx(0.5 * (0.3 / 6) + 0.5 * 0.9, abs=1e-4)
    assert smoothed.label == "sad" and smoothed.confidence == smoothed.probs["sad"]
    assert sum(smoothed.probs.values()) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError):
        FaceTracker(smoothing=1.0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, astronaut):
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    write_video(path, moving_face_frames(astronaut, 10), fps=20.0)
    return path


def test_predict_video_skips_frames_and_tracks_the_face(clip, random_weights):
    recognizer = EmotionRecognizer(random_weights)
    with VideoSource(clip) as video:
        assert video.fps == pytest.approx(20.0) and video.frame_count == 10
        frames = list(predict_video(recognizer, video, every=3, frames_per_batch=2))
    assert [f.index for f in frames] == list(range(10))
    assert [f.index for f in frames if f.processed] == [0, 3, 6, 9]
    assert [f.time for f in frames] == pytest.approx([k / 20 for k in range(10)])
    assert all(len(f.faces) == 1 and f.faces[0].track_id == 1 for f in frames)
    assert frames[4].faces is frames[3].faces  # a skipped frame shows the last processed frame's faces
    boxes = [f.faces[0].box[0] for f in frames if f.processed]
    assert boxes == sorted(boxes)  # the face moves right


def test_unreadable_videos(tmp_path):
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF" + b"\x00" * 300)
    with pytest.raises(MsferError, match="cannot open as a video"):
        VideoSource(broken)
    with pytest.raises(MsferError, match="no such video"):
        VideoSource(tmp_path / "absent.mp4")
    with pytest.raises(MsferError, match="webcam 9"):
        VideoSource(9)


def test_report(clip, random_weights, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(clip), "--out", str(out), "--weights", str(random_weights), "--every", "2"]) == 0
    page = (out / "report.html").read_text()
    assert "research aid, not a diagnosis" in page
    assert '<img src="timeline_1.png"' in page and '<img src="shares.png"' in page
    assert page.count("<tr>") == 2  # header and the one tracked face
    for name in ("timeline_1.png", "shares.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "frames.jsonl").read_text().splitlines()) == 5
