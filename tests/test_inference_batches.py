"""BatchPredictor: one row per face in the CSV's columns for a columnar batch of file contents, images, video frames
or paths; unreadable inputs are rows naming the file; and the same rows through Ray Data in local mode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas
import pyarrow
import pytest
from PIL import Image
from test_inference_predict import moving_face_frames, write_video

from msfer.errors import MsferError
from msfer.inference.batches import TEXT_FIELDS, BatchPredictor
from msfer.inference.recognizer import EmotionRecognizer
from msfer.inference.results import CSV_FIELDS
from msfer.labels import EMOTIONS


@pytest.fixture(scope="module")
def predictor(random_weights) -> BatchPredictor:
    return BatchPredictor(random_weights, every=3)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, astronaut) -> Path:
    """A folder of two photos (the astronaut and its mirror image), a blank one, a corrupt one and a short clip."""
    folder = tmp_path_factory.mktemp("batches")
    Image.fromarray(astronaut).save(folder / "a.jpg", quality=95)
    Image.fromarray(astronaut[:, ::-1].copy()).save(folder / "b.png")
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(folder / "blank.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    write_video(folder / "clip.avi", moving_face_frames(astronaut, 7), fps=10.0)
    return folder


def faces_of(table, source: str) -> list[dict]:
    return table[table["source"] == source].to_dict("records")


def check_columns(table) -> None:
    assert list(table.columns) == CSV_FIELDS
    for name in CSV_FIELDS:
        expected = pyarrow.string() if name in TEXT_FIELDS else pyarrow.float64()
        assert table[name].dtype == pandas.ArrowDtype(expected), name


def test_file_contents_give_the_apis_faces_and_a_row_naming_an_unreadable_file(predictor, inputs, random_weights):
    paths = [str(inputs / name) for name in ("a.jpg", "blank.png", "broken.jpg")]
    table = predictor({"bytes": np.array([Path(p).read_bytes() for p in paths], dtype=object),
                       "path": np.array(paths)})
    check_columns(table)
    [face] = faces_of(table, paths[0])
    [expected] = EmotionRecognizer(random_weights).predict(paths[0])
    assert face["label"] == expected.label and face["face"] == 0 and face["error"] == ""
    assert [face[name] for name in EMOTIONS] == pytest.approx([expected.probs[name] for name in EMOTIONS], abs=1e-6)
    assert [face[k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx(expected.box, abs=1e-3)
    [blank] = faces_of(table, paths[1])  # no face: one row, empty face columns
    assert pandas.isna(blank["face"]) and blank["label"] == "" and blank["error"] == ""
    [broken] = faces_of(table, paths[2])
    assert broken["error"].startswith(paths[2] + ": ") and pandas.isna(broken["face"])


def test_images_without_paths_are_named_by_their_index(predictor, astronaut):
    table = predictor({"image": [astronaut, np.zeros((50, 60, 3), np.uint8)]})
    check_columns(table)
    assert table["source"].tolist() == ["0", "1"] and table["label"].iloc[0] in EMOTIONS


def test_video_frames_keep_their_index_and_time(predictor, astronaut):
    frames = np.stack(moving_face_frames(astronaut, 2))
    table = predictor({"frame": frames, "frame_index": np.array([4, 5]), "path": np.array(["v.mp4", "v.mp4"]),
                       "frame_timestamp": np.array([[0.4, 0.5], [0.5, 0.6]])})  # decord's [start, end]
    check_columns(table)
    assert table["frame"].tolist() == [4.0, 5.0] and table["time"].tolist() == pytest.approx([0.4, 0.5])
    assert table["track_id"].isna().all()  # frames on their own: no tracking


def test_a_video_given_as_file_contents_is_an_error_that_says_how_to_give_it(predictor, inputs):
    path = str(inputs / "clip.avi")
    [row] = predictor({"bytes": [(inputs / "clip.avi").read_bytes()], "path": [path]}).to_dict("records")
    assert row["error"].startswith(path) and "a dataset of paths alone" in row["error"]


def test_paths_alone_are_read_by_msfer_videos_tracked(predictor, inputs):
    paths = [str(inputs / "clip.avi"), str(inputs / "b.png"), str(inputs / "missing.jpg")]
    table = predictor({"path": paths})
    check_columns(table)
    video = faces_of(table, paths[0])
    assert [row["frame"] for row in video] == [0, 3, 6]  # every=3: the processed frames
    assert all(row["track_id"] == 1 for row in video) and video[1]["time"] == pytest.approx(0.3)
    assert faces_of(table, paths[1])[0]["label"] in EMOTIONS
    [missing] = faces_of(table, paths[2])
    assert str(paths[2]) in missing["error"]


def test_a_batch_without_inputs_or_of_uneven_columns_is_refused(predictor):
    with pytest.raises(MsferError, match="one of the columns bytes, image, frame or path; it has item"):
        predictor({"item": [1, 2]})
    with pytest.raises(MsferError, match="differ in length: 1, 2"):
        predictor({"image": [np.zeros((8, 8, 3), np.uint8)], "path": ["a", "b"]})
    with pytest.raises(MsferError, match="every must be 1 or more"):
        BatchPredictor(every=0)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray Data is the optional 'ray' extra: pip install 'msfer[ray]'")
    # two logical CPUs: the reading task runs beside the predictor's actor, which holds one
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def test_ray_data_maps_the_predictor_over_files_in_local_mode(ray_local, inputs, random_weights, predictor, tmp_path):
    ray = ray_local
    photos = [str(inputs / name) for name in ("a.jpg", "b.png", "blank.png", "broken.jpg")]
    dataset = ray.data.read_binary_files(photos, include_paths=True)
    table = dataset.map_batches(BatchPredictor, fn_constructor_kwargs={"weights": str(random_weights)},
                                compute=ray.data.ActorPoolStrategy(size=1), batch_size=2).to_pandas()
    assert list(table.columns) == CSV_FIELDS  # the batches joined into one table
    direct = predictor({"bytes": [Path(p).read_bytes() for p in photos], "path": photos})
    ordered = table.sort_values(["source", "face"]).reset_index(drop=True)
    expected = direct.sort_values(["source", "face"]).reset_index(drop=True)
    assert ordered["source"].tolist() == expected["source"].tolist()
    assert ordered["label"].tolist() == expected["label"].tolist() and ordered["error"].str.len().gt(0).sum() == 1
    assert np.allclose(ordered[list(EMOTIONS)].to_numpy(np.float64, na_value=np.nan),
                       expected[list(EMOTIONS)].to_numpy(np.float64, na_value=np.nan), atol=1e-6, equal_nan=True)

    # one file per batch, a batch without any face among them: the files read back as one table
    dataset.map_batches(BatchPredictor, fn_constructor_kwargs={"weights": str(random_weights)},
                        compute=ray.data.ActorPoolStrategy(size=1), batch_size=1).write_parquet(str(tmp_path / "pq"))
    stored = pandas.read_parquet(tmp_path / "pq")
    assert sorted(stored["source"]) == sorted(table["source"]) and list(stored.columns) == CSV_FIELDS

    # decoded by Ray's image reader: the same faces
    images = ray.data.read_images(photos[:2], include_paths=True, mode="RGB")
    read = images.map_batches(BatchPredictor, fn_constructor_kwargs={"weights": str(random_weights)},
                              compute=ray.data.ActorPoolStrategy(size=1), batch_size=2).to_pandas()
    assert list(read.columns) == CSV_FIELDS
    assert sorted(read["label"]) == sorted(expected[expected["source"].isin(photos[:2])]["label"])
