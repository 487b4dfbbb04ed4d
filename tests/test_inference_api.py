"""The Python API: EmotionRecognizer on real photos (scikit-image's astronaut), with a random-weight model.

The fixtures `random_weights`, `recognizer`, `astronaut` and `astronaut_file` are in tests/conftest.py.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from msfer import EMOTIONS, EmotionRecognizer
from msfer.errors import MsferError
from msfer.faces.crop import CropRule, face_transform, map_boxes_back
from msfer.inference.recognizer import to_rgb_array

skimage_data = pytest.importorskip("skimage.data")

# Eileen Collins' face in skimage.data.astronaut() (512 x 512): measured by eye, generous.
ASTRONAUT_FACE = (150, 30, 300, 200)


def inside(box, bounds, slack: float = 0.0) -> bool:
    return (box[0] >= bounds[0] - slack and box[1] >= bounds[1] - slack
            and box[2] <= bounds[2] + slack and box[3] <= bounds[3] + slack)


def test_one_face_with_every_field(recognizer, astronaut_file):
    faces = recognizer.predict(astronaut_file)
    assert len(faces) == 1
    face = faces[0]
    assert inside(face.box, ASTRONAUT_FACE) and face.score > 0.9
    eyes, nose, mouth = face.landmarks[:2], face.landmarks[2], face.landmarks[3:]
    assert max(y for _, y in eyes) < nose[1] < min(y for _, y in mouth)
    assert list(face.probs) == list(EMOTIONS)
    assert sum(face.probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert face.label == max(face.probs, key=face.probs.get) and face.confidence == face.probs[face.label]
    assert list(face.regions) == list(recognizer.spec.region_names)
    crop_side = max(face.box[2] - face.box[0], face.box[3] - face.box[1]) * recognizer.crop_scale
    for region in face.regions.values():  # mapped back from crop pixels: inside the face crop, in image pixels
        assert inside(region, face.box, slack=crop_side / 2) and region[2] > region[0] and region[3] > region[1]
    record = face.to_dict()
    assert set(record) == {"box", "score", "landmarks", "regions", "probs", "label", "confidence", "decision",
                           "face_size", "sharpness", "roll", "yaw", "quality", "quality_issues"}
    json.dumps(record)


def test_path_pil_rgb_and_bgr_arrays_agree(recognizer, astronaut, astronaut_file):
    from_path = recognizer.predict(astronaut_file)[0]
    decoded = np.asarray(Image.open(astronaut_file).convert("RGB"))
    for same in (Image.fromarray(decoded), decoded, np.ascontiguousarray(decoded[:, :, ::-1])):
        order = "bgr" if same is not decoded and isinstance(same, np.ndarray) else "rgb"
        face = recognizer.predict(same, color_order=order)[0]
        assert face.box == from_path.box and face.probs == from_path.probs
    # A BGR array read as RGB is a different (blue-faced) image: the colour order matters.
    assert recognizer.predict(decoded[:, :, ::-1].copy())[0].probs != from_path.probs


def test_several_faces_largest_first_and_batch_equals_single(recognizer, astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((384, 384)))
    group = np.zeros((512, 512 + 384, 3), np.uint8)
    group[:, :512], group[:384, 512:] = astronaut, small
    faces = recognizer.predict(group)
    assert len(faces) == 2
    assert inside(faces[0].box, ASTRONAUT_FACE)  # the full-size face is the larger
    assert faces[1].box[0] > 512
    batch = recognizer.predict_batch([group, astronaut, skimage_data.coffee()])
    assert [len(result) for result in batch] == [2, 1, 0]
    assert batch[0][0].box == faces[0].box
    assert batch[0][1].probs == pytest.approx(faces[1].probs, abs=1e-4)


def test_no_face_and_tiny_images_give_empty_results(recognizer):
    assert recognizer.predict(skimage_data.coffee()) == []
    assert recognizer.predict(np.zeros((1, 1, 3), np.uint8)) == []
    assert recognizer.predict(np.full((1, 1), 200, np.uint8)) == []


def test_large_photo_is_detected_downscaled_and_mapped_back(recognizer, astronaut):
    scale = 6  # 3072 x 3072: detection runs on a 640 px copy, the crop comes from full resolution
    large = np.asarray(Image.fromarray(astronaut).resize((512 * scale, 512 * scale)))
    face = recognizer.predict(large)[0]
    small = recognizer.predict(astronaut)[0]
    assert np.allclose(np.array(face.box) / scale, small.box, atol=4)


def test_pre_cropped_faces(recognizer, astronaut):
    crop = astronaut[40:200, 140:300]
    faces = recognizer.classify_faces([crop, Image.fromarray(crop).resize((48, 48)).convert("L")])
    assert [face.box for face in faces] == [[0, 0, 160, 160], [0, 0, 48, 48]]
    assert faces[0].score is None and faces[0].landmarks is None
    assert all(inside(region, face.box) for face in faces for region in face.regions.values())


def test_tta_and_alignment_options(random_weights, recognizer, astronaut):
    plain = recognizer.predict(astronaut)[0]
    with_tta = EmotionRecognizer(random_weights, tta=True, detector=recognizer.detector).predict(astronaut)[0]
    assert with_tta.box == plain.box and with_tta.probs != plain.probs
    assert sum(with_tta.probs.values()) == pytest.approx(1.0, abs=1e-3)
    rolled = np.asarray(Image.fromarray(astronaut).rotate(20, center=(225, 115)))  # head tilted by 20 degrees
    aligned = EmotionRecognizer(random_weights, align=True, detector=recognizer.detector)
    assert len(aligned.predict(rolled)) == 1


def test_crop_transform_round_trip():
    box = np.array([100.0, 50.0, 180.0, 150.0])
    landmarks = np.array([[120, 90], [160, 80], [140, 110], [125, 130], [155, 125]], float)
    for align in (False, True):
        transform, side = face_transform(box, landmarks, CropRule("roll" if align else "box", 1.0))
        assert side == 100
        center = transform @ np.array([140, 100, 1.0])
        assert np.allclose(center, [50, 50])  # the face centre lands at the crop centre
    transform, _ = face_transform(box, landmarks, CropRule("box", 1.0))
    crop_box = np.array([[10.0, 20.0, 60.0, 70.0]])
    assert np.allclose(map_boxes_back(crop_box, transform, 1000, 1000), [[100, 70, 150, 120]])
    assert np.allclose(map_boxes_back(crop_box, transform, 120, 100), [[100, 70, 120, 100]])  # clipped to the image


def test_predict_batch_can_return_per_item_errors(recognizer, astronaut, astronaut_file, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(astronaut_file.read_bytes()[:300])
    inputs = [astronaut_file, broken, tmp_path / "absent.jpg", np.full((4, 4), np.nan, np.float32), astronaut]
    with pytest.raises(MsferError, match="broken.jpg"):
        recognizer.predict_batch(inputs)  # the default: the first bad input raises
    results = recognizer.predict_batch(inputs, errors="return")
    assert len(results) == 5
    assert [len(r) for r in (results[0], results[4])] == [1, 1]
    assert results[0][0].probs == pytest.approx(recognizer.predict(astronaut_file)[0].probs, abs=1e-5)
    assert all(isinstance(r, MsferError) for r in results[1:4])
    assert "broken.jpg" in str(results[1]) and "absent.jpg" in str(results[2]) and "NaN" in str(results[3])
    assert recognizer.predict_batch([broken], errors="return")[0].args == results[1].args  # alone as in a batch
    with pytest.raises(ValueError, match="errors"):
        recognizer.predict_batch(inputs, errors="ignore")


def test_a_pil_image_is_turned_upright_like_a_path(recognizer, astronaut, tmp_path):
    # A phone photo stored sideways: pixels rotated, EXIF 8 says "turn 90 degrees counter-clockwise to show".
    exif = Image.Exif()
    exif[0x0112] = 8
    path = tmp_path / "sideways.jpg"
    Image.fromarray(np.rot90(astronaut, -1)).save(path, exif=exif, quality=95)
    from_path = recognizer.predict(path)
    with Image.open(path) as image:
        from_object = recognizer.predict(image)
    assert len(from_path) == 1 and inside(from_path[0].box, ASTRONAUT_FACE, slack=8)
    assert [face.box for face in from_object] == [face.box for face in from_path]
    assert from_object[0].probs == pytest.approx(from_path[0].probs, abs=1e-5)


def test_bad_inputs_raise_clear_errors(tmp_path, random_weights):
    with pytest.raises(MsferError, match="0..1 or 0..255"):
        to_rgb_array(np.full((4, 4, 3), -0.5, np.float32))
    with pytest.raises(MsferError, match="NaN"):
        to_rgb_array(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(MsferError, match="0..255"):
        to_rgb_array(np.full((4, 4, 3), 300, np.int32))
    with pytest.raises(MsferError, match="H x W"):
        to_rgb_array(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(MsferError, match="color_order"):
        to_rgb_array(np.zeros((4, 4), np.uint8), color_order="rbg")
    with pytest.raises(MsferError, match="no such image"):
        to_rgb_array(tmp_path / "absent.jpg")
    with pytest.raises(MsferError, match="does not exist"):
        EmotionRecognizer(tmp_path / "absent.pt")
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_text("hello")  # say, a video given as --weights
    with pytest.raises(MsferError, match="model.pt is not an msfer model: a .pt checkpoint of msfer train or msfer "
                                         "bundle, or an .onnx file of msfer export, is wanted"):
        EmotionRecognizer(not_a_model)
    not_a_model.write_bytes(b"")
    with pytest.raises(MsferError, match=r"is neither \(it is empty\)"):
        EmotionRecognizer(not_a_model)
    from msfer.model.checkpoint import load_checkpoint

    not_a_model.write_bytes(b"\x08\x07 an ONNX model's first field")  # an export, where a checkpoint is needed
    with pytest.raises(MsferError, match="model.pt is an ONNX export: this needs the .pt checkpoint"):
        load_checkpoint(not_a_model)
    not_a_model.write_bytes(b"PK\x03\x04 cut short")  # a zip, as torch saves, but damaged
    with pytest.raises(MsferError, match="cannot read checkpoint .*model.pt: it is damaged"):
        EmotionRecognizer(not_a_model)
    with pytest.raises(MsferError, match="backend"):
        EmotionRecognizer(random_weights, backend="tensorrt")


def test_the_sample_photo_ships_with_the_package(recognizer):
    from pathlib import Path

    import msfer

    assert msfer.SAMPLE_PHOTO.is_file() and msfer.SAMPLE_PHOTO.parent.parent == Path(msfer.__file__).parent
    assert len(recognizer.predict(msfer.SAMPLE_PHOTO)) == 1  # one face, found


def test_bundled_model_reads_a_smile(astronaut):
    from msfer.weights import BUNDLED_MODEL

    if not BUNDLED_MODEL.is_file():
        pytest.skip(f"the bundled model {BUNDLED_MODEL} is not there yet")
    face = EmotionRecognizer().predict(astronaut)[0]
    assert face.label == "happy"


def test_whole_pipeline_evaluation_counts_missed_faces_as_wrong(recognizer, astronaut_file, tmp_path):
    from msfer.data.samples import Sample
    from msfer.engine.metrics import write_report
    from msfer.inference.detect_eval import evaluate_with_detection

    coffee = tmp_path / "coffee.jpg"
    Image.fromarray(skimage_data.coffee()).save(coffee)
    happy, sad = EMOTIONS.index("happy"), EMOTIONS.index("sad")
    samples = [Sample("happy/astronaut.jpg", happy, "test", path=astronaut_file),
               Sample("sad/coffee.jpg", sad, "test", path=coffee)]
    metrics = evaluate_with_detection(recognizer, samples)
    predicted = recognizer.predict(astronaut_file)[0].label
    assert metrics["n"] == 2
    assert metrics["overall_accuracy"] == (0.5 if predicted == "happy" else 0.0)
    assert metrics["per_class"]["sad"]["recall"] == 0.0 and metrics["per_class"]["sad"]["support"] == 1
    assert "no_face" not in metrics["per_class"]
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (7, 7) and matrix.sum() == 1 and matrix[happy, EMOTIONS.index(predicted)] == 1
    assert metrics["detection"] == {"faces_found": 1, "faces_missed": 1, "miss_rate": 0.5,
                                    "missed_per_class": {name: int(name == "sad") for name in EMOTIONS},
                                    "missed_ids": ["sad/coffee.jpg"]}
    assert json.loads(write_report(metrics, tmp_path / "eval", EMOTIONS, echo=False).read_text()) == metrics


def test_evaluate_detect_faces_command(random_weights, astronaut_file, tmp_path):
    from msfer.cli import main

    root = tmp_path / "photos"
    (root / "happy").mkdir(parents=True)
    (root / "sad").mkdir()
    (root / "happy" / "astronaut.jpg").write_bytes(astronaut_file.read_bytes())
    Image.fromarray(skimage_data.coffee()).save(root / "sad" / "coffee.jpg")
    out = tmp_path / "eval"
    assert main(["evaluate", "--weights", str(random_weights), "--data", str(root), "--format", "folder",
                 "--out", str(out), "--detect-faces", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["detect_faces"] is True
    assert metrics["detection"]["missed_ids"] == ["sad/coffee.jpg"]
    assert (out / "confusion_matrix.png").is_file()


def test_every_form_of_one_image_reads_the_same_pixels(astronaut, tmp_path):
    """Path, bytes, PIL image and arrays of every accepted type and layout decode to one RGB array."""
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    expected = to_rgb_array(path)
    forms = {
        "bytes": path.read_bytes(), "bytearray": bytearray(path.read_bytes()),
        "memoryview": memoryview(path.read_bytes()), "PIL": Image.open(path), "BytesIO": io.BytesIO(path.read_bytes()),
        "file": open(path, "rb"),
        "float 0..1": astronaut.astype(np.float64) / 255, "float 0..255": astronaut.astype(np.float32),
        "int64": astronaut.astype(np.int64), "uint16": astronaut.astype(np.uint16) * 257,
    }
    for name, form in forms.items():
        assert np.array_equal(to_rgb_array(form), expected), name
    opaque = np.concatenate([astronaut, np.full(astronaut.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert np.array_equal(to_rgb_array(opaque), expected)
    assert np.array_equal(to_rgb_array(opaque[:, :, [2, 1, 0, 3]], color_order="bgr"), expected)
    grey = astronaut[:, :, 1]
    assert np.array_equal(to_rgb_array(grey[:, :, None]), to_rgb_array(grey))


def test_an_rgba_array_is_composited_on_white_like_an_rgba_file(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    path = tmp_path / "transparent.png"
    Image.fromarray(rgba, "RGBA").save(path)
    from_file = to_rgb_array(path)
    assert np.abs(to_rgb_array(rgba).astype(int) - from_file.astype(int)).max() <= 1
    clear = rgba.copy()
    clear[:, :, 3] = 0
    assert (to_rgb_array(clear) == 255).all()  # fully transparent: white, not the colour under it


def test_lists_folders_and_bad_bytes_get_errors_that_say_what_to_do(recognizer, astronaut_file, tmp_path):
    with pytest.raises(MsferError, match="predict_batch"):
        recognizer.predict([astronaut_file, astronaut_file])
    with pytest.raises(MsferError, match="predict_folder"):
        recognizer.predict(tmp_path)
    with pytest.raises(MsferError, match=r"image bytes \(19 bytes\): not an image \(no format Pillow decodes"):
        recognizer.predict(b"not an image at all")
    with pytest.raises(MsferError, match="empty"):
        recognizer.predict(b"")
    with pytest.raises(MsferError, match="got None where an image is expected .cv2.imread"):
        recognizer.predict(None)  # what cv2.imread gives for a path it cannot read
    (tmp_path / "photo.jpg").write_bytes(astronaut_file.read_bytes())
    with open(tmp_path / "photo.jpg") as text_mode, pytest.raises(MsferError, match="open it in binary mode"):
        recognizer.predict(text_mode)
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(MsferError, match=r"clip.mp4: .*; a video is read with recognizer.predict_video\(path\)"):
        recognizer.predict(tmp_path / "clip.mp4")


def test_predict_folder_reads_every_image_and_reports_the_bad_one(recognizer, astronaut, tmp_path):
    (tmp_path / "sub").mkdir()
    Image.fromarray(astronaut).save(tmp_path / "b.jpg", quality=95)
    Image.fromarray(astronaut).save(tmp_path / "sub" / "c.png")
    (tmp_path / "a.jpg").write_bytes(b"broken")
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(astronaut).save(tmp_path / "b.jpg.msfer.jpg")  # msfer predict --save-vis's copy: not an input
    found = list(recognizer.predict_folder(tmp_path, chunk=2))
    assert [path.relative_to(tmp_path).as_posix() for path, _ in found] == ["a.jpg", "b.jpg", "sub/c.png"]
    assert isinstance(found[0][1], MsferError) and "a.jpg" in str(found[0][1])
    assert [len(faces) for _, faces in found[1:]] == [1, 1]
    assert found[1][1][0].probs == recognizer.predict(tmp_path / "b.jpg")[0].probs
    assert [path.name for path, _ in recognizer.predict_folder(tmp_path, recursive=False)] == ["a.jpg", "b.jpg"]
    with pytest.raises(MsferError, match="no such file"):
        list(recognizer.predict_folder(tmp_path / "absent"))


def test_predict_video_yields_frames_with_times_and_tracked_faces(recognizer, astronaut, tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 512, 512, "yuv420p"
        for _ in range(6):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(astronaut, format="rgb24")))
        container.mux(stream.encode())
    frames = list(recognizer.predict_video(path, every=2))
    assert [frame.index for frame in frames] == list(range(6))
    assert [frame.time for frame in frames] == pytest.approx([i / 10 for i in range(6)], abs=1e-3)
    assert [frame.processed for frame in frames] == [True, False] * 3
    assert all(len(frame.faces) == 1 and frame.faces[0].track_id is not None for frame in frames)
    assert frames[0].image.shape == (512, 512, 3) and {frame.source for frame in frames} == {path}
    pytest.importorskip("pandas")
    from msfer import to_dataframe

    table = to_dataframe(recognizer.predict_video(path, every=2))  # the processed frames, as msfer predict's CSV
    assert table["source"].tolist() == [str(path)] * 3 and table["frame"].tolist() == [0, 2, 4]
    gif = tmp_path / "moving.gif"
    Image.fromarray(astronaut).save(gif, save_all=True, append_images=[Image.fromarray(astronaut[:, ::-1])],
                                    duration=[200, 300])
    assert [frame.time for frame in recognizer.predict_video(gif)] == pytest.approx([0.0, 0.2])
    with pytest.raises(MsferError, match="absent.mp4"):
        list(recognizer.predict_video(tmp_path / "absent.mp4"))


def test_to_dataframe_has_the_csv_columns_for_every_result_form(recognizer, astronaut, astronaut_file, tmp_path):
    pytest.importorskip("pandas")
    from msfer import to_dataframe
    from msfer.inference.results import CSV_FIELDS

    faces = recognizer.predict(astronaut_file)
    table = to_dataframe(faces)
    assert list(table.columns) == CSV_FIELDS and len(table) == 1
    assert table.loc[0, "label"] == faces[0].label and table.loc[0, "x1"] == faces[0].box[0]
    assert table.loc[0, EMOTIONS[0]] == faces[0].probs[EMOTIONS[0]]

    batch = recognizer.predict_batch([astronaut_file, tmp_path / "absent.jpg", np.zeros((64, 64, 3), np.uint8)],
                                     errors="return")
    table = to_dataframe(batch, sources=["astronaut", "absent", "black"])
    assert list(table["source"]) == ["astronaut", "absent", "black"]  # one row per face, or per empty/failed image
    assert "absent.jpg" in table.loc[1, "error"] and table["label"].isna().tolist() == [False, True, True]

    Image.fromarray(astronaut).save(tmp_path / "photo.jpg")
    table = to_dataframe(recognizer.predict_folder(tmp_path))
    assert table["source"].tolist() == [str(tmp_path / "photo.jpg")]
    assert to_dataframe(dict(recognizer.predict_folder(tmp_path)))["source"].tolist() == [str(tmp_path / "photo.jpg")]


def test_faces_found_in_photos_get_the_photo_temperature_and_keep_their_label(random_weights, recognizer,
                                                                             astronaut, astronaut_file, tmp_path):
    """The model's photo temperature softens the probabilities of a face found in a photo (by its yaw), after the
    decision: labels under either rule are those of the same model without it; a crop given whole keeps the crop
    calibration; whole-pipeline evaluation reports the softened probabilities and the same accuracy."""
    from msfer.data.samples import Sample
    from msfer.engine.calibration import calibrated_checkpoint, with_photo_temperature
    from msfer.faces.quality import yaw_degrees
    from msfer.inference.detect_eval import evaluate_with_detection, photo_predictions
    from msfer.model.checkpoint import load_checkpoint, save_checkpoint

    offsets = [2.0, -1.0, 0.5, -2.0, 1.0, 0.0, -0.5]
    photo = {"method": "yaw_temperature", "temperature": 2.5, "per_degree": 0.02, "yaw_limit": 45.0}
    plain = calibrated_checkpoint(load_checkpoint(random_weights), [1.0] * 7, [0.0] * 7, offsets,
                                  {"method": "temperature", "balanced_tau": 1.0})
    tempered = {**plain, "calibration": {**plain["calibration"], "photos": photo}}
    without = EmotionRecognizer(save_checkpoint(plain, tmp_path / "plain.pt"), detector=recognizer.detector)
    with_it = EmotionRecognizer(save_checkpoint(tempered, tmp_path / "tempered.pt"), detector=recognizer.detector)
    assert with_it.photo_temperature == photo and without.photo_temperature is None

    for decision in ("argmax", "balanced"):
        [before] = without.predict(astronaut, decision=decision)
        [after] = with_it.predict(astronaut, decision=decision)
        assert after.label == before.label
        assert after.decision_probs == before.probs == before.decision_probs  # what the rule read: the same
        assert "decision_probs" not in after.to_dict()
        probs = np.array([before.probs[name] for name in EMOTIONS])
        yaw = yaw_degrees(np.array(before.landmarks))
        expected = with_photo_temperature(probs[None], [yaw], photo)[0]
        assert [after.probs[name] for name in EMOTIONS] == pytest.approx(expected, abs=1e-4)
        assert after.confidence == pytest.approx(expected[EMOTIONS.index(after.label)], abs=1e-4)
        assert max(after.probs.values()) < max(before.probs.values())
    crop = astronaut[20:220, 140:320]
    [whole] = with_it.classify_faces([crop])
    assert whole.probs == without.classify_faces([crop])[0].probs == whole.decision_probs

    samples = [Sample("happy/astronaut.jpg", EMOTIONS.index("happy"), "test", path=astronaut_file)]
    decided, reported = photo_predictions(with_it, samples)
    assert np.array_equal(decided, photo_predictions(without, samples)[1])
    [face] = with_it.predict(astronaut_file)
    assert reported[0] == pytest.approx([face.probs[name] for name in EMOTIONS], abs=1e-4)
    metrics, plain_metrics = evaluate_with_detection(with_it, samples), evaluate_with_detection(without, samples)
    assert metrics["overall_accuracy"] == plain_metrics["overall_accuracy"]
    assert metrics["calibration"]["mean_confidence"] < plain_metrics["calibration"]["mean_confidence"]
