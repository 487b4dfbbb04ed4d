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


def test_a_truncated_matroska_file_which_declares_only_a_duration_is_found_out(random_weights, tmp_path, capsys):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(30)]
    whole, cut = tmp_path / "film.mkv", tmp_path / "cut_film.mkv"
    encode_segment(whole, frames, 0.0, container_format="matroska")  # 3 s, no frame count in the container
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    out = tmp_path / "whole.jsonl"
    assert main(["predict", str(whole), "--weights", str(random_weights), "--out", str(out), "--min-face", "0"]) == 0
    assert len(read_records(out)) == 30 and "declares" not in capsys.readouterr().err
    out = tmp_path / "cut.jsonl"
    assert main(["predict", str(cut), "--weights", str(random_weights), "--out", str(out), "--min-face", "0"]) == 1
    error = [r["error"] for r in read_records(out) if "error" in r]
    assert len(error) == 1 and "the container declares 3.00 s, frames read up to" in error[0]


def test_a_report_of_a_truncated_video_says_so_and_fails(truncated_videos, random_weights, tmp_path, capsys):
    _, cut = truncated_videos[".mp4"]
    out = tmp_path / "report"
    assert main(["report", str(cut), "--out", str(out), "--weights", str(random_weights)]) == 1
    assert "the container declares 30 frames" in capsys.readouterr().err
    assert "the container declares 30 frames" in (out / "report.html").read_text()


# -- Annotated copies mark low-quality faces as the web page does, and never clip a caption -------------------------

def drawn_face(box, quality: str = "good", label: str = "surprise", track_id: int | None = None):
    from msfer.inference.results import FaceResult
    from msfer.labels import EMOTIONS

    probs = {name: 0.94 if name == label else 0.01 for name in EMOTIONS}
    return FaceResult(box=list(map(float, box)), score=0.99, landmarks=None, regions={}, probs=probs, label=label,
                      confidence=0.94, quality=quality, track_id=track_id)


def caption_extent(canvas: np.ndarray) -> tuple[int, int]:
    """The width and height, in pixels, of the black text drawn on ``canvas`` (a grey image with coloured boxes):
    a caption cut at an edge is narrower or lower than the same caption drawn whole."""
    dark = (canvas < 60).all(axis=2)
    columns, rows = np.flatnonzero(dark.any(axis=0)), np.flatnonzero(dark.any(axis=1))
    if not len(columns):
        return 0, 0
    return int(columns[-1] - columns[0] + 1), int(rows[-1] - rows[0] + 1)


def test_a_low_quality_face_gets_a_dashed_orange_box_as_on_the_web_page():
    from msfer.inference.visualize import FACE_COLOR, LOW_QUALITY_COLOR, draw_faces

    grey = np.full((400, 600, 3), 128, np.uint8)
    good = draw_faces(grey, [drawn_face((40, 100, 240, 340))])
    low = draw_faces(grey, [drawn_face((340, 100, 540, 340), quality="low")])
    # The box's left edge, below its caption: solid green for a good face; orange dashes with gaps for a low one.
    good_edge, low_edge = good[150:330, 40], low[150:330, 340]
    assert (good_edge == FACE_COLOR).all(axis=1).all()
    dashes = (low_edge == LOW_QUALITY_COLOR).all(axis=1)
    gaps = (low_edge == grey[0, 0]).all(axis=1)
    assert dashes.sum() > 60 and gaps.sum() > 40 and dashes.sum() + gaps.sum() == len(low_edge)
    assert not (low == FACE_COLOR).all(axis=2).any()  # no green on a low-quality face
    # Its caption is on an orange label and says "low quality", so it is wider than the good face's.
    assert caption_extent(low)[0] > caption_extent(good)[0] + 50
    dark = (low < 60).all(axis=2)
    rows, columns = np.flatnonzero(dark.any(axis=1)), np.flatnonzero(dark.any(axis=0))
    behind_text = (low[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1] == LOW_QUALITY_COLOR).all(axis=2)
    assert behind_text.mean() > 0.3  # the label around the glyphs


@pytest.mark.parametrize("box, where", [((0, 60, 90, 180), "left edge"), ((210, 60, 300, 180), "right edge"),
                                        ((210, 0, 300, 120), "top right corner"), ((0, 0, 300, 200), "whole image")])
def test_a_caption_is_never_clipped_at_the_image_edge(box, where):
    from msfer.inference.visualize import draw_faces

    grey = np.full((200, 300, 3), 128, np.uint8)
    # The same caption away from the edges: the text's whole width and height.
    whole = caption_extent(draw_faces(grey, [drawn_face((100, 80, 190, 170), quality="low", track_id=12)]))
    assert whole[0] > 80
    assert caption_extent(draw_faces(grey, [drawn_face(box, quality="low", track_id=12)])) == whole, where


def test_a_caption_wider_than_the_image_is_drawn_smaller_to_fit():
    from msfer.inference.visualize import draw_faces

    grey = np.full((90, 120, 3), 128, np.uint8)
    width, height = caption_extent(draw_faces(grey, [drawn_face((20, 30, 100, 88), quality="low", track_id=3)]))
    wide = np.full((90, 400, 3), 128, np.uint8)
    assert caption_extent(draw_faces(wide, [drawn_face((20, 30, 100, 88), quality="low", track_id=3)]))[0] > 120
    assert 60 < width < 116 and height > 4  # the whole caption, smaller, inside the image


# -- Addresses, float images, damaged EXIF --------------------------------------------------------------------------

def test_an_address_is_said_to_be_no_input_not_a_missing_file(astronaut_file, random_weights, tmp_path, capsys):
    from msfer import EmotionRecognizer
    from msfer.errors import MsferError

    out = tmp_path / "results.jsonl"
    addresses = ["http://example.com/photos/a.jpg", "rtsp://camera.local:554/stream1"]
    assert main(["predict", *addresses, str(astronaut_file), "--weights", str(random_weights),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    for url in addresses:
        assert f"{url}: an address, not a file: msfer reads image and video files and folders" in err
    assert "no such file" not in err and "http:/example" not in err
    records = {r["source"]: r for r in read_records(out)}
    assert set(records) == {*addresses, str(astronaut_file)} and records[str(astronaut_file)]["faces"]
    assert records[addresses[1]]["error"].startswith(f"{addresses[1]}: an address, not a file")

    assert main(["report", addresses[1], "--out", str(tmp_path / "report"), "--weights", str(random_weights)]) == 2
    assert f"{addresses[1]}: an address, not a file" in capsys.readouterr().err
    with pytest.raises(MsferError, match="^http://example.com/photos/a.jpg: an address, not a file"):
        EmotionRecognizer(random_weights).predict(addresses[0])


def test_a_float_image_is_scaled_or_refused_by_its_range(astronaut, random_weights, tmp_path, capsys):
    from msfer.data.images import load_rgb_array

    grey = np.asarray(Image.fromarray(astronaut).convert("L"), dtype=np.float32)
    folder = tmp_path / "float"
    folder.mkdir()
    for name, values in [("unit.tiff", grey / 255), ("bytes.tiff", grey), ("wide.tiff", grey * 257)]:
        Image.fromarray(values, mode="F").save(folder / name)
    Image.fromarray(grey / 127.5 - 1, mode="F").save(folder / "signed.tiff")  # -1..1: no known scale
    for name in ("unit.tiff", "bytes.tiff", "wide.tiff"):
        pixels = load_rgb_array(folder / name).astype(int)
        assert np.abs(pixels[:, :, 0] - grey).max() <= 1, name  # not black, not white: the photo's greys

    out = tmp_path / "results.jsonl"
    assert main(["predict", str(folder), "--weights", str(random_weights), "--out", str(out)]) == 1
    records = {Path(r["source"]).name: r for r in read_records(out)}
    assert all(len(records[name]["faces"]) == 1 for name in ("unit.tiff", "bytes.tiff", "wide.tiff"))
    message = f"{folder / 'signed.tiff'}: a floating-point image with values from -1 to 1 has no known scale"
    assert records["signed.tiff"]["error"].startswith(message) and message in capsys.readouterr().err


def test_pillows_exif_warning_names_the_file(astronaut, random_weights, tmp_path, caplog):
    import struct
    import warnings

    # EXIF whose directory says it holds 6 entries, and then ends after the first (the orientation).
    tiff = b"II*\x00" + struct.pack("<IH", 8, 6) + struct.pack("<HHI4s", 0x0112, 3, 1, b"\x01\x00\x00\x00")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("first.jpg", "second.jpg"):
        Image.fromarray(astronaut).save(photos / name, exif=b"Exif\x00\x00" + tiff)
    out = tmp_path / "results.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that escaped unnamed would now fail the run
        with caplog.at_level("WARNING"):
            assert main(["predict", str(photos), "--weights", str(random_weights), "--out", str(out)]) == 0
    assert all(len(r["faces"]) == 1 for r in read_records(out))
    for name in ("first.jpg", "second.jpg"):  # each file's own warning, with its name
        named = [r.getMessage() for r in caplog.records if r.getMessage().startswith(str(photos / name) + ": ")]
        assert len(named) == 1 and "Corrupt EXIF data" in named[0], caplog.text


# -- Merging the two detection passes of a large photo --------------------------------------------------------------

class TwoPassDetector:
    """A detector that, like RetinaFace on a face larger than it can frame, gives the fine pass a second, partial
    box inside a large face besides the face itself; faces are given in photo pixels and scaled to each copy."""

    nms_threshold = 0.4

    def __init__(self, width: int, whole, partial, others) -> None:
        self.width, self.whole, self.partial, self.others = width, whole, partial, others

    def detect(self, copies):
        from msfer.faces.retinaface import Face

        found = []
        for copy in copies:
            scale = copy.shape[1] / self.width
            boxes = [self.whole, *self.others] + ([self.partial] if scale > 0.3 else [])  # the fine pass only
            found.append([Face(np.array(box, float) * scale, 0.99, np.zeros((5, 2))) for box in boxes])
        return found


def test_a_partial_box_inside_a_larger_face_is_dropped_when_two_passes_merge():
    from msfer.faces.detection import detect_faces, detection_scales

    photo = np.zeros((3000, 4000, 3), np.uint8)
    assert len(detection_scales(3000, 4000, 640, 40)) == 2  # a large photo: fine and coarse pass
    whole, partial = (1000, 500, 2200, 2000), (1300, 1200, 1900, 1900)  # the lower half of the same face
    half_hidden, small = (2000, 600, 2600, 1400), (3000, 200, 3080, 300)  # a third of it behind the large face
    faces = detect_faces(TwoPassDetector(4000, whole, partial, [half_hidden, small]), [photo])[0]
    boxes = sorted(tuple(np.round(face.box).astype(int).tolist()) for face in faces)
    assert boxes == sorted([whole, half_hidden, small])


# -- Animated and multi-page images ---------------------------------------------------------------------------------

ANIMATION_MS = [500, 100, 100, 100]


def reaction_frames(astronaut: np.ndarray) -> list[Image.Image]:
    """A title card without a face, then three frames of a moving face (a reaction GIF's usual shape)."""
    faces = [Image.fromarray(frame).resize((320, 240)) for frame in moving_face_frames(astronaut, 3)]
    return [Image.new("RGB", (320, 240), (30, 30, 160)), *faces]


@pytest.fixture(scope="module")
def animations(tmp_path_factory, astronaut) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("animated")
    first, *rest = reaction_frames(astronaut)
    paths = {"gif": folder / "reaction.gif", "webp": folder / "reaction.webp", "apng": folder / "reaction.png"}
    first.save(paths["gif"], save_all=True, append_images=rest, duration=ANIMATION_MS, loop=0)
    first.save(paths["webp"], save_all=True, append_images=rest, duration=ANIMATION_MS, loop=0, lossless=True)
    first.save(paths["apng"], save_all=True, append_images=rest, duration=ANIMATION_MS, loop=0)
    # A scanned document's pages: the second is larger than the first.
    pages = [first, rest[0].resize((480, 360)), rest[1], rest[2]]
    paths["tiff"] = folder / "pages.tiff"
    pages[0].save(paths["tiff"], save_all=True, append_images=pages[1:])
    return paths


@pytest.mark.parametrize("kind", ["gif", "webp", "apng", "tiff"])
def test_an_animated_or_multi_page_image_is_read_frame_by_frame(animations, kind, random_weights, tmp_path):
    path = animations[kind]
    with Image.open(path) as image:
        assert image.n_frames == 4
    out, vis = tmp_path / "frames.jsonl", tmp_path / "vis"
    assert main(["predict", str(path), "--weights", str(random_weights), "--out", str(out),
                 "--save-vis", str(vis)]) == 0
    records = read_records(out)
    assert [r["frame"] for r in records] == [0, 1, 2, 3]
    assert [len(r["faces"]) for r in records] == [0, 1, 1, 1]  # the title card has none; the frames after it do
    if kind == "tiff":
        assert [r["time"] for r in records] == [None] * 4  # pages have no time
    else:
        assert [r["time"] for r in records] == pytest.approx([0.0, 0.5, 0.6, 0.7])
        assert len({r["faces"][0]["track_id"] for r in records[1:]}) == 1  # tracked, as in a video
    copy = decoded_frames(copy_of(vis, path, ".msfer.mp4"))
    assert len(copy) == 4 and {frame.shape for frame in copy} == {(240, 320, 3)}


def test_a_multi_frame_image_read_as_one_image_says_so(animations, random_weights, caplog):
    from msfer import EmotionRecognizer

    with caplog.at_level("WARNING"):
        assert EmotionRecognizer(random_weights).predict(animations["gif"]) == []  # the title card
    assert f"{animations['gif']}: an animated image of 4 frames; only the first is read here" in caplog.text


def test_a_report_reads_an_animated_image_and_refuses_pages(animations, random_weights, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(animations["webp"]), "--out", str(out), "--weights", str(random_weights)]) == 0
    assert "4 processed frames, the last at 0.7 s" in (out / "report.html").read_text()
    assert main(["report", str(animations["tiff"]), "--out", str(tmp_path / "pages"),
                 "--weights", str(random_weights)]) == 2
    assert "the pages of a multi-page image have no times to plot" in capsys.readouterr().err
