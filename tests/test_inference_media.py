"""Inputs that are not plain photos or steady videos: frame sizes that change mid-stream, truncated videos,
animated and multi-page images, addresses given as inputs, float images and damaged EXIF."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_inference_predict import moving_face_frames

from msfer.cli import main


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def encode_segment(path: Path, frames: list[np.ndarray], start: float, fps: int = 10,
                   container_format: str = "mpegts", options: dict | None = None) -> None:
    """H.264 frames shown from ``start`` seconds on, one every 1/fps s."""
    import av

    time_base = Fraction(1, 1000)
    with av.open(str(path), "w", format=container_format, options=options or {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = time_base
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round((start + k / fps) * 1000), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def copy_of(vis: Path, source: Path, suffix: str) -> Path:
    """The annotated copy of ``source`` under ``vis`` (at its path below the inputs' common folder)."""
    found = list(vis.rglob(source.name + suffix))
    assert len(found) == 1, found
    return found[0]


def decoded_frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


# -- A video whose frame size changes mid-stream --------------------------------------------------------------------

@pytest.fixture(scope="module")
def resized_stream(tmp_path_factory, astronaut) -> Path:
    """Two MPEG-TS clips joined byte by byte, as `cat` joins them: 4 frames of 320 x 240, then 4 of 640 x 360
    (a larger frame, in both sides) holding a face, each on a flat grey so the letterbox bars can be seen."""
    folder = tmp_path_factory.mktemp("resized")
    small = [np.asarray(Image.fromarray(frame).resize((320, 240))) for frame in moving_face_frames(astronaut, 4)]
    face = np.asarray(Image.fromarray(astronaut).resize((300, 300)))
    large = []
    for k in range(4):
        frame = np.full((360, 640, 3), 200, np.uint8)
        frame[30:330, 170 + 4 * k : 470 + 4 * k] = face
        large.append(frame)
    encode_segment(folder / "a.ts", small, 0.0)
    encode_segment(folder / "b.ts", large, 0.4)
    joined = folder / "call.ts"
    joined.write_bytes((folder / "a.ts").read_bytes() + (folder / "b.ts").read_bytes())
    return joined


def test_a_frame_size_change_is_letterboxed_into_the_annotated_copy(resized_stream, astronaut_file, random_weights,
                                                                    tmp_path):
    out, vis = tmp_path / "frames.jsonl", tmp_path / "vis"
    status = main(["predict", str(resized_stream), str(astronaut_file), "--weights", str(random_weights),
                   "--out", str(out), "--save-vis", str(vis)])
    assert status == 0
    records = read_records(out)
    frames = [r for r in records if r["source"] == str(resized_stream)]
    assert [r["frame"] for r in frames] == list(range(8)) and not any("error" in r for r in records)
    assert all(len(r["faces"]) == 1 for r in frames[4:])  # the larger frames are recognised at their own size
    assert frames[4]["faces"][0]["box"][2] > 320  # in the larger frame's pixels
    assert [r for r in records if r["source"] == str(astronaut_file)][0]["faces"]

    copy = decoded_frames(copy_of(vis, resized_stream, ".msfer.mp4"))
    assert len(copy) == 8 and {frame.shape for frame in copy} == {(240, 320, 3)}  # the first frame's size
    # 640 x 360 fits 320 x 240 at half size: 320 x 180, centred between black bars of 30 rows.
    later = copy[5].astype(int)
    assert later[:26].max() < 30 and later[-26:].max() < 30, "black bars above and below"
    assert abs(later[34:206, :40].mean() - 200) < 12, "the frame's grey background, scaled, between the bars"
    assert abs(copy[1][:, :40].astype(int).mean() - 90) < 12, "the first frames are not letterboxed"


def test_a_failing_annotated_copy_fails_its_input_only(resized_stream, astronaut_file, random_weights, tmp_path,
                                                       monkeypatch, capsys):
    from msfer.inference import video

    written = []

    def failing_write(self, rgb, seconds):  # the encoder refuses the fourth frame
        if len(written) == 3:
            raise ValueError("operands could not be broadcast together")
        written.append(seconds)

    monkeypatch.setattr(video.AnnotatedVideoWriter, "write", failing_write)
    out, vis = tmp_path / "frames.jsonl", tmp_path / "vis"
    status = main(["predict", str(resized_stream), str(astronaut_file), "--weights", str(random_weights),
                   "--out", str(out), "--save-vis", str(vis)])
    assert status == 1
    error = capsys.readouterr().err
    assert f"{resized_stream}: no annotated copy (frame 3)" in error and "Traceback" not in error
    records = read_records(out)
    assert [r for r in records if r["source"] == str(resized_stream)][-1]["error"].startswith(str(resized_stream))
    assert [r for r in records if r["source"] == str(astronaut_file)][0]["faces"]  # the batch went on
    assert copy_of(vis, astronaut_file, ".msfer.jpg").is_file()
    assert not list(vis.rglob(resized_stream.name + ".msfer.mp4"))
    assert not [p for p in vis.rglob("*") if p.name.startswith(".msfer-")]  # its temporary file is gone


# -- A truncated video that still opens -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def truncated_videos(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """30-frame videos, whole and cut at 60% of their bytes (they still open): an MP4 with its index first (what
    phones and `-movflags faststart` write) and an MJPEG AVI."""
    import cv2

    folder = tmp_path_factory.mktemp("truncated")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(30)]
    encode_segment(folder / "phone.mp4", frames, 0.0, container_format="mp4", options={"movflags": "faststart"})
    writer = cv2.VideoWriter(str(folder / "camera.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for frame in frames:
        writer.write(frame)
    writer.release()
    videos = {}
    for name in ("phone.mp4", "camera.avi"):
        whole = folder / name
        cut = folder / f"cut_{name}"
        data = whole.read_bytes()
        cut.write_bytes(data[: len(data) * 6 // 10])
        videos[whole.suffix] = (whole, cut)
    return videos


@pytest.mark.parametrize("kind", [".mp4", ".avi"])
def test_a_truncated_video_says_how_many_frames_were_read_and_fails(truncated_videos, kind, astronaut_file,
                                                                    random_weights, tmp_path, capsys):
    whole, cut = truncated_videos[kind]
    out = tmp_path / "frames.jsonl"
    assert main(["predict", str(whole), "--weights", str(random_weights), "--out", str(out), "--min-face", "0"]) == 0
    assert len(read_records(out)) == 30 and "declares" not in capsys.readouterr().err  # a whole file: no word

    out = tmp_path / "cut.jsonl"
    status = main(["predict", str(cut), str(astronaut_file), "--weights", str(random_weights), "--out", str(out)])
    assert status == 1
    records = read_records(out)
    frames = [r for r in records if r["source"] == str(cut) and "frame" in r]
    assert 0 < len(frames) < 30 and [r["frame"] for r in frames] == list(range(len(frames)))  # kept
    error = [r["error"] for r in records if r["source"] == str(cut) and "error" in r]
    expected = f"{cut}: decoding stopped early: the container declares 30 frames, {len(frames)} frames read"
    assert len(error) == 1 and error[0].startswith(expected)
    assert expected in capsys.readouterr().err
    assert [r for r in records if r["source"] == str(astronaut_file)][0]["faces"]  # the batch went on


def test_a_report_of_a_truncated_video_says_so_and_fails(truncated_videos, random_weights, tmp_path, capsys):
    _, cut = truncated_videos[".mp4"]
    out = tmp_path / "report"
    assert main(["report", str(cut), "--out", str(out), "--weights", str(random_weights)]) == 1
    assert "the container declares 30 frames" in capsys.readouterr().err
    assert "the container declares 30 frames" in (out / "report.html").read_text()
