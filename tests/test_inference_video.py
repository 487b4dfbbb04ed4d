"""Video: the IoU tracker, smoothing, frame skipping and timestamps, and `msfer report`."""
from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
from PIL import Image
from test_inference_predict import moving_face_frames, write_video

from msfer.cli import main
from msfer.errors import MsferError
from msfer.inference.recognizer import EmotionRecognizer
from msfer.inference.report import EMOTION_COLORS
from msfer.inference.results import FaceResult
from msfer.inference.tracking import FaceTracker
from msfer.inference.video import VideoSource, predict_video
from msfer.labels import EMOTIONS


def face(box, label: str = "happy", p: float = 0.7) -> FaceResult:
    probs = {name: (p if name == label else (1 - p) / 6) for name in EMOTIONS}
    return FaceResult(list(map(float, box)), 0.99, None, {}, probs, label, p)


def test_box_iou():
    import torch

    from msfer.model.boxes import box_iou

    a = torch.tensor([[0, 0, 10, 10]], dtype=torch.float64)
    b = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=torch.float64)
    assert np.allclose(box_iou(a, b).numpy(), [[1.0, 50 / 150, 0.0]])
    point = torch.tensor([[5, 5, 5, 5]], dtype=torch.float64)  # zero area: IoU 0 with everything (torchvision: NaN)
    assert box_iou(point, torch.cat([point, a])).tolist() == [[0.0, 0.0]]


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


def test_smoothed_labels_read_the_probabilities_before_the_photo_temperature():
    """A turned face's tempered probabilities are flatter than those its label was decided on; smoothing them with a
    frontal frame's must not change the label that the untempered probabilities give (the reviewer's case: (0.8,
    0.2) turned, then (0.3, 0.7) frontal, at 0.5)."""
    from msfer.engine.calibration import with_photo_temperature

    photo = {"method": "yaw_temperature", "temperature": 1.0, "per_degree": 0.05, "yaw_limit": 45.0}
    happy, sad = EMOTIONS.index("happy"), EMOTIONS.index("sad")

    def seen(first: float, yaw: float) -> FaceResult:
        before = np.full(7, 1e-4)
        before[happy], before[sad] = first, 1 - first - 5e-4
        after = with_photo_temperature(before[None], [yaw], photo)[0]
        result = face([0, 0, 100, 100])
        result.probs = dict(zip(EMOTIONS, after.tolist()))
        result.decision_probs = dict(zip(EMOTIONS, before.tolist()))
        return result

    tracker = FaceTracker(smoothing=0.5)
    tracker.update([seen(0.8, yaw=40.0)])
    [smoothed] = tracker.update([seen(0.3, yaw=0.0)])
    # untempered, (0.8 + 0.3) / 2 = 0.55 for happy: happy; the tempered mean would read sad
    assert smoothed.label == "happy" and smoothed.decision_probs["happy"] == pytest.approx(0.55, abs=1e-3)
    assert smoothed.probs["happy"] < smoothed.probs["sad"]  # what is shown is the smoothed tempered probabilities
    assert smoothed.confidence == smoothed.probs["happy"]
    assert "decision_probs" not in smoothed.to_dict()


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
    assert page.count("research aid, not a diagnosis") == 1  # said once, not as a heading and again
    assert '<img src="timeline_1.png"' in page and '<img src="shares.png"' in page
    assert page.count("<tr>") == 2  # header and the one tracked face
    for name in ("timeline_1.png", "shares.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "frames.jsonl").read_text().splitlines()) == 5


# -- Time from the container's timestamps (variable frame rate), rotation, one-frame videos ----------------------

VFR_TIMES = [0.0, 0.1, 0.2, 1.5, 3.0, 11.0]  # a phone or browser recording: frames arrive unevenly


def write_timed_video(path, frames, times, codec: str, container_format: str | None = None, start: float = 0.0):
    """A video whose frame k is shown at ``start + times[k]`` seconds (per-frame timestamps, as PyAV writes them)."""
    from fractions import Fraction

    import av

    time_base = Fraction(1, 1000)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=30)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = time_base
        for image, seconds in zip(frames, times):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round((start + seconds) * 1000), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def vfr_videos(tmp_path_factory, astronaut):
    folder = tmp_path_factory.mktemp("vfr")
    frames = moving_face_frames(astronaut, len(VFR_TIMES))
    videos = {"mp4": folder / "phone.mp4", "webm": folder / "browser.webm", "mts": folder / "camcorder.MTS"}
    write_timed_video(videos["mp4"], frames, VFR_TIMES, "libx264")  # H.264 with B-frames: decode order != display order
    write_timed_video(videos["webm"], frames, VFR_TIMES, "libvpx")
    # MPEG-TS timestamps start wherever the camera's clock was; times count from the stream's start.
    write_timed_video(videos["mts"], frames, VFR_TIMES, "libx264", "mpegts", start=600.0)  # AVCHD: H.264 in MPEG-TS
    return videos


@pytest.mark.parametrize("kind", ["mp4", "webm", "mts"])
def test_video_time_comes_from_the_frame_timestamps(vfr_videos, kind, random_weights, tmp_path):
    out, vis = tmp_path / "frames.jsonl", tmp_path / "vis"
    video = vfr_videos[kind]
    assert main(["predict", str(video), "--weights", str(random_weights), "--out", str(out),
                 "--save-vis", str(vis)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(len(VFR_TIMES)))
    assert [r["time"] for r in records] == pytest.approx(VFR_TIMES, abs=0.002)
    assert all(len(r["faces"]) == 1 for r in records)
    # The annotated copy keeps the timing: frame k is still shown at VFR_TIMES[k].
    import av

    with av.open(str(vis / (video.name + ".msfer.mp4"))) as container:
        shown = [float(frame.time) for frame in container.decode(video=0)]
    assert [t - shown[0] for t in shown] == pytest.approx(VFR_TIMES, abs=0.002)


def test_report_durations_follow_the_timestamps(vfr_videos, random_weights, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(vfr_videos["webm"]), "--out", str(out), "--weights", str(random_weights)]) == 0
    page = (out / "report.html").read_text()
    assert f"{len(VFR_TIMES)} processed frames, the last at 11.0 s" in page
    row = re.search(r"<tr><td>(?:<img [^>]*> )?1</td><td>([\d.]+)</td><td>([\d.]+)</td><td>(\d+)</td>", page)
    assert row is not None and row.groups() == ("0.00", "11.00", str(len(VFR_TIMES)))  # first seen, last seen, frames


def test_a_phone_video_stored_sideways_comes_out_upright(tmp_path):
    # A phone stores landscape pixels and a display matrix saying "turn 90 degrees clockwise".
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = (255, 0, 0)  # left half red
    path = tmp_path / "sideways.mp4"
    write_timed_video(path, [image] * 3, [0.0, 0.1, 0.2], "libx264")
    data = bytearray(path.read_bytes())
    tkhd = data.find(b"tkhd")
    matrix = tkhd + 4 + 4 + (8 + 8 + 4 + 4 + 8 if data[tkhd + 4] == 1 else 4 + 4 + 4 + 4 + 4) + 8 + 8
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    with VideoSource(path) as video:
        frames = [rgb for rgb, _ in video.frames()]
    assert len(frames) == 3 and frames[0].shape == (64, 48, 3)  # portrait
    assert frames[0][:24, :, 0].mean() > 200 and frames[0][40:, :, 0].mean() < 50  # the red half is now on top


def test_a_one_frame_video_gets_a_visible_timeline(astronaut, random_weights, tmp_path):
    video, out = tmp_path / "still.webm", tmp_path / "report"
    write_timed_video(video, moving_face_frames(astronaut, 1), [0.0], "libvpx")
    assert main(["report", str(video), "--out", str(out), "--weights", str(random_weights)]) == 0
    timeline = np.asarray(Image.open(out / "timeline_1.png").convert("RGB")).astype(int)
    plot_area = timeline[:, : timeline.shape[1] * 6 // 10]  # the legend sits right of the axes
    colours = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in EMOTION_COLORS.values()])
    painted = (np.abs(plot_area[:, :, None, :] - colours).max(axis=3) < 12).any(axis=2).sum()
    assert painted > 1000, painted  # a stacked bar at the moment the face was seen, not an empty plot
    assert "1 processed frames" in (out / "report.html").read_text()


# -- The report's reading of each moment: uncertain below a threshold, low quality marked or left out --

def moment(label: str, p: float, quality: str = "good", track_id: int = 1) -> FaceResult:
    result = face([0, 0, 100, 100], label, p)
    result.track_id, result.quality = track_id, quality
    result.quality_issues = ["blurry"] if quality == "low" else []
    return result


def test_moments_below_the_threshold_are_uncertain_and_low_quality_is_marked_or_left_out():
    from msfer.inference.report import STATES, VideoFrame, summarise_tracks

    faces = [moment("happy", 0.7), moment("happy", 0.35), moment("sad", 0.9, "low"), moment("sad", 0.45)]
    frames = [VideoFrame(k, k / 10, None, [f], True) for k, f in enumerate(faces)]
    track = summarise_tracks(frames, uncertain_below=0.4)[0]
    assert track.states == ["happy", "uncertain", "low quality", "sad"]
    shares = track.shares()
    assert list(shares) == list(STATES) and sum(shares.values()) == pytest.approx(1.0)
    assert shares["happy"] == shares["uncertain"] == shares["low quality"] == shares["sad"] == 0.25
    assert summarise_tracks(frames, uncertain_below=0.5)[0].states == ["happy", "uncertain", "low quality", "uncertain"]
    assert summarise_tracks(frames, uncertain_below=0.0)[0].states == ["happy", "happy", "low quality", "sad"]
    kept = summarise_tracks(frames, uncertain_below=0.4, min_quality="good")[0]
    assert kept.states == ["happy", "uncertain", "sad"] and kept.times == [0.0, 0.1, 0.3]
    everything_uncertain = summarise_tracks(frames[1:2], uncertain_below=0.4)[0]
    assert everything_uncertain.most_often() == "happy (uncertain)" and track.most_often() in ("happy", "sad")
    assert summarise_tracks(frames[2:3])[0].most_often() == "none (low quality)"


def report_row(page: str) -> dict[str, str]:
    """The cells of the first face's row in the report's table, by column name."""
    header = re.findall(r"<th>(.*?)</th>", page)
    row = re.findall(r"<tr><td>.*?</tr>", page)[0]
    return dict(zip(header, re.findall(r"<td>(.*?)</td>", row)))


def test_report_uncertain_threshold_and_calibration_statement(clip, random_weights, tmp_path):
    from test_inference_decision import with_offsets

    pages = {}
    for threshold in ("1", "0"):
        out = tmp_path / f"report{threshold}"
        assert main(["report", str(clip), "--out", str(out), "--weights", str(random_weights), "--every", "3",
                     "--uncertain-below", threshold]) == 0
        pages[threshold] = (out / "report.html").read_text()
    everything = report_row(pages["1"])  # no label has probability 1: every moment is uncertain
    label, _, note = everything["most often"].partition(" ")  # the most frequent label, said to be uncertain
    assert everything["uncertain"] == "100%" and label in EMOTIONS and note == "(uncertain)"
    assert all(everything[name] == "0%" for name in EMOTIONS)
    nothing = report_row(pages["0"])
    assert nothing["uncertain"] == "0%" and nothing["most often"] in EMOTIONS
    assert "below 1.00: then it is <em>uncertain</em>" in pages["1"]
    assert "probabilities are not calibrated" in pages["1"]  # the random model has no calibration record
    calibrated = with_offsets(random_weights, tmp_path / "calibrated.pt", [0.0] * 7)
    out = tmp_path / "report_calibrated"
    assert main(["report", str(clip), "--out", str(out), "--weights", str(calibrated), "--every", "5"]) == 0
    page = (out / "report.html").read_text()
    assert "probabilities are calibrated (temperature scaling)" in page and "expected calibration error 0.031" in page
    assert "below 0.50" in page  # the default threshold
    assert "On faces unlike that validation data" in page  # judged on no suite: its figures on other faces unknown
    assert "model: calibrated (" in page  # unnamed: its file's stem

    # a bundled model's file names it and says how its probabilities held on each kind of face it was judged on
    from msfer.model.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(calibrated)
    suite = {"tcce_val": {"domain": "posed & candid photos", "n": 195, "missed": 2, "ece": 0.09,
                          "ece_floor_95": 0.1, "overall_accuracy": 0.67},
             "sfew_val": {"domain": "film frames", "n": 177, "missed": 0, "ece": 0.223, "ece_floor_95": 0.107,
                          "overall_accuracy": 0.469}}
    checkpoint.update(name="v7", calibration={**checkpoint["calibration"], "suite": suite,
                                              "calibrated_on": "fer2013_public_test"})
    named = save_checkpoint(checkpoint, tmp_path / "named.pt")
    out = tmp_path / "report_named"
    assert main(["report", str(clip), "--out", str(out), "--weights", str(named), "--every", "5"]) == 0
    page = (out / "report.html").read_text()
    assert "model: v7 (" in page and "expected calibration error 0.031" in page
    assert "on 1794 validation faces of fer2013_public_test not used to calibrate it" in page
    assert ("posed &amp; candid photos (tcce_val, 195 images, 67% right): ECE 0.090 on its 193 faces, within what "
            "a perfectly calibrated model shows on that many faces") in page
    assert "film frames (sfew_val, 177 images, 47% right): ECE 0.223 on its 177 faces, beyond the 0.107" in page
    from msfer.inference.report import calibration_sentence

    note = calibration_sentence(EmotionRecognizer(named).calibration)  # /healthz's: text, shown as text
    assert "posed & candid photos (tcce_val" in note and "&amp;" not in note
    args = ["report", str(clip), "--out", str(out), "--weights", str(random_weights), "--uncertain-below", "2"]
    assert main(args) == 2


def test_a_report_over_an_earlier_one_keeps_none_of_its_plots(clip, random_weights, tmp_path):
    from msfer.inference.report import write_video_report
    from msfer.inference.video import VideoFrame

    out = tmp_path / "report"
    three_faces = [VideoFrame(k, k / 10, None, [moment("happy", 0.8, track_id=t) for t in (1, 2, 3)], True)
                   for k in range(3)]
    write_video_report(clip, three_faces, out, {})  # an earlier report, of a video with three faces
    assert sorted(path.name for path in out.glob("timeline_*.png")) == [f"timeline_{t}.png" for t in (1, 2, 3)]
    (out / "timeline_9.png").write_bytes(b"mine")  # named like a plot, but no report shows it: not msfer's
    (out / "notes.txt").write_text("mine")

    assert main(["report", str(clip), "--out", str(out), "--weights", str(random_weights), "--every", "3"]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["face_1.jpg", "frames.jsonl", "notes.txt", "report.html",
                                                           "shares.png", "timeline_1.png", "timeline_9.png"]
    blank = tmp_path / "blank.avi"
    write_video(blank, [np.full((120, 160, 3), 90, np.uint8)] * 2)
    assert main(["report", str(blank), "--out", str(out), "--weights", str(random_weights)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["frames.jsonl", "notes.txt", "report.html",
                                                           "timeline_9.png"]
    assert (out / "timeline_9.png").read_bytes() == b"mine" and (out / "notes.txt").read_text() == "mine"


def test_each_face_of_a_report_has_a_thumbnail_of_it_in_the_table(clip, random_weights, astronaut, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(clip), "--out", str(out), "--weights", str(random_weights), "--every", "3"]) == 0
    page = (out / "report.html").read_text()
    assert '<td><img src="face_1.jpg" alt="face 1" class="face"> 1</td>' in page
    thumbnail = np.asarray(Image.open(out / "face_1.jpg"))
    assert max(thumbnail.shape[:2]) <= 96 and min(thumbnail.shape[:2]) > 40
    # the astronaut's face, not background: skin and hair, neither flat nor the frame's grey padding
    assert thumbnail.std() > 30


def test_a_scene_cut_ends_every_track():
    from msfer.inference.tracking import FaceTracker

    def at(box):
        return face(box, "happy", 0.8)

    rng = np.random.default_rng(0)
    shot_a = rng.integers(0, 80, (120, 160, 3), dtype=np.uint8)
    shot_b = rng.integers(150, 255, (120, 160, 3), dtype=np.uint8)
    tracker = FaceTracker()
    box = [40, 30, 90, 90]
    first = tracker.update([at(box)], shot_a)[0].track_id
    assert tracker.update([at(box)], shot_a)[0].track_id == first  # same shot, same place: same person
    after_cut = tracker.update([at(box)], shot_b)[0].track_id
    assert after_cut != first and tracker.cuts == 1  # same place, another shot: another person
    assert tracker.update([at(box)], shot_b)[0].track_id == after_cut
    assert tracker.update([at(box)], shot_b[:100])[0].track_id != after_cut  # the frame size changed
    joined = FaceTracker(cut_threshold=None, face_threshold=None)  # by place alone
    assert joined.update([at(box)], shot_a)[0].track_id == joined.update([at(box)], shot_b)[0].track_id


def test_a_face_that_looks_different_at_the_same_place_is_another_person_and_a_pan_is_not(astronaut):
    from msfer.inference.tracking import FaceTracker

    box = [150, 30, 300, 200]
    backdrop = np.full_like(astronaut, 128)
    colour, grey = backdrop.copy(), backdrop.copy()
    colour[30:200, 150:300] = astronaut[30:200, 150:300]
    grey[30:200, 150:300] = astronaut[30:200, 150:300].mean(axis=2, keepdims=True).astype(np.uint8)[:, ::-1]
    tracker = FaceTracker()
    first = tracker.update([face(box)], colour)[0].track_id
    # the same backdrop, another face where the first stood (the frames alike: no cut is seen)
    assert tracker.update([face(box)], grey)[0].track_id != first and tracker.cuts == 0
    panning = FaceTracker()  # the camera pans 10 px between processed frames: one person throughout
    ids = {panning.update([face([150 + 10 * k, 30, 300 + 10 * k, 200])], np.roll(astronaut, 10 * k, axis=1))[0]
           .track_id for k in range(5)}
    assert ids == {1} and panning.cuts == 0
