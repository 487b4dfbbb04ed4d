"""Every reader on a tiny dataset it builds itself, and every kind of bad input."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msfer.data.readers import READERS, DatasetError, read_dataset
from msfer.labels import EMOTIONS


def face(path: Path, value: int = 128, size: tuple[int, int] = (48, 48)) -> Path:
    """A small grey image file (format from the suffix) whose pixels are all ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def labels_of(index) -> dict[str, str]:
    return {sample.id: EMOTIONS[sample.label] for sample in index.samples}


def test_every_format_is_registered():
    assert set(READERS) == {"rafdb", "fer2013", "ferplus", "affectnet", "ckplus", "jaffe", "folder"}


# --- RAF-DB ---------------------------------------------------------------------------------------


def rafdb(root: Path, lines: list[str], images: list[str]) -> Path:
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel/list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for name in images:
        stem = Path(name).stem
        face(root / "Image/aligned" / f"{stem}_aligned.jpg", 10)
        face(root / "Image/original" / name, 20, (64, 80))
    return root


def test_rafdb_labels_splits_ids_and_variants(tmp_path):
    lines = [f"train_0000{i}.jpg {i}" for i in range(1, 8)] + ["test_0001.jpg 4"]
    root = rafdb(tmp_path, lines, [line.split()[0] for line in lines])
    index = read_dataset(root, "rafdb")
    assert [labels_of(index)[f"Image/aligned/train_0000{i}_aligned.jpg"] for i in range(1, 8)] == [
        "surprise", "fear", "disgust", "happy", "sad", "angry", "neutral",
    ]
    assert {s.id: s.split for s in index.samples}["Image/aligned/test_0001_aligned.jpg"] == "test"
    assert index.samples[0].load().size == (48, 48)
    original = read_dataset(root, "rafdb", variant="original")
    assert original.samples[0].id == "Image/original/train_00001.jpg"
    assert original.samples[0].load().size == (64, 80)
    assert not index.problems and not index.skipped


def test_rafdb_missing_image_is_a_counted_skip_naming_the_line(tmp_path):
    root = rafdb(tmp_path, ["train_00001.jpg 1", "train_00002.jpg 2"], ["train_00001.jpg"])
    index = read_dataset(root, "rafdb")
    assert len(index.samples) == 1
    assert index.skipped == {"missing image": 1}
    assert "list_patition_label.txt:2" in index.problems[0] and "train_00002_aligned.jpg" in index.problems[0]
    labels_only = read_dataset(root, "rafdb", require_images=False)
    assert len(labels_only.samples) == 2 and not labels_only.skipped


def test_rafdb_problem_list_is_capped_but_every_skip_counted(tmp_path):
    root = rafdb(tmp_path, [f"train_{i:05d}.jpg 1" for i in range(25)], [])
    index = read_dataset(root, "rafdb")
    assert index.skipped == {"missing image": 25}
    assert len(index.problems) == 11 and "counted in skipped" in index.problems[-1]


@pytest.mark.parametrize(
    "line, message",
    [
        ("train_00001.jpg", r"list_patition_label.txt:2: expected '<image name> <label 1-7>'"),
        ("train_00001.jpg happy", r"list_patition_label.txt:2: expected"),
        ("train_00001.jpg 8", r"list_patition_label.txt:2: unknown RAF-DB label 8"),
        ("val_00001.jpg 3", r"list_patition_label.txt:2: image name 'val_00001.jpg' starts with neither"),
    ],
)
def test_rafdb_bad_lines_are_errors_naming_file_and_line(tmp_path, line, message):
    root = rafdb(tmp_path, ["train_00002.jpg 1", line], [])
    with pytest.raises(DatasetError, match=message):
        read_dataset(root, "rafdb")


def test_rafdb_missing_label_file_and_bad_variant(tmp_path):
    with pytest.raises(DatasetError, match="RAF-DB label file .*list_patition_label.txt does not exist"):
        read_dataset(tmp_path, "rafdb")
    root = rafdb(tmp_path / "r", ["train_00001.jpg 1"], [])
    with pytest.raises(DatasetError, match="unknown RAF-DB variant 'cropped'"):
        read_dataset(root, "rafdb", variant="cropped")


# --- FER2013 ----------------------------------------------------------------------------------------


def fer2013_csv(path: Path, rows: list[list[str]], header: str = "emotion,pixels,Usage") -> Path:
    with path.open("w", newline="") as file:
        file.write(header + "\n")
        csv.writer(file).writerows(rows)
    return path


def pixel_text(value: int, count: int = 2304) -> str:
    return " ".join([str(value)] * count)


def test_fer2013_csv_labels_splits_and_pixels(tmp_path):
    rows = [["0", pixel_text(5), "Training"], ["3", pixel_text(200), "PublicTest"], ["6", pixel_text(9), "PrivateTest"]]
    index = read_dataset(fer2013_csv(tmp_path / "fer2013.csv", rows), "fer2013")
    assert [(s.id, EMOTIONS[s.label], s.split) for s in index.samples] == [
        ("train/0", "angry", "train"),
        ("public_test/1", "happy", "public_test"),
        ("private_test/2", "neutral", "private_test"),
    ]
    image = index.samples[1].load()
    assert image.mode == "RGB" and image.size == (48, 48) and (np.asarray(image) == 200).all()


def test_fer2013_csv_pixels_keep_their_layout(tmp_path):
    ramp = " ".join(str(i % 256) for i in range(2304))
    index = read_dataset(fer2013_csv(tmp_path / "f.csv", [["2", ramp, "Training"]]), "fer2013")
    grey = np.asarray(index.samples[0].load())[:, :, 0]
    assert grey[0, :3].tolist() == [0, 1, 2] and grey[1, 0] == 48  # row-major, 48 wide


def test_fer2013_csv_without_usage_uses_the_split_option(tmp_path):
    path = fer2013_csv(tmp_path / "train.csv", [["4", pixel_text(1)]], header=" emotion, pixels")
    assert read_dataset(path, "fer2013", split="all").samples[0].split == "all"


@pytest.mark.parametrize(
    "row, message",
    [
        (["7", pixel_text(1), "Training"], r"f.csv:3: unknown FER2013 emotion '7'"),
        (["x", pixel_text(1), "Training"], r"f.csv:3: unknown FER2013 emotion 'x'"),
        (["1", pixel_text(1, 2303), "Training"], r"f.csv:3: 2303 pixel values do not make a square"),
        (["1", pixel_text(300), "Training"], r"f.csv:3: pixel values outside 0-255"),
        (["1", "1 2 a 4", "Training"], r"f.csv:3: pixels are not space-separated integers"),
        (["1", pixel_text(1), "Validation"], r"f.csv:3: unknown Usage 'Validation'"),
        (["1", pixel_text(1)], r"f.csv:3: expected 3 fields, got 2"),
    ],
)
def test_fer2013_csv_bad_rows_are_errors_naming_file_and_line(tmp_path, row, message):
    path = fer2013_csv(tmp_path / "f.csv", [["0", pixel_text(0), "Training"], row])
    with pytest.raises(DatasetError, match=message):
        read_dataset(path, "fer2013")


def test_fer2013_csv_header_must_name_the_columns(tmp_path):
    path = fer2013_csv(tmp_path / "f.csv", [["0", "1"]], header="label,data")
    with pytest.raises(DatasetError, match=r"f.csv:1: FER2013 CSV header lacks emotion, pixels"):
        read_dataset(path, "fer2013")


def test_fer2013_folder_layout_is_detected_from_a_directory(tmp_path):
    face(tmp_path / "train/angry/Training_1.jpg")
    face(tmp_path / "train/happy/Training_2.jpg")
    face(tmp_path / "public_test/neutral/PublicTest_3.jpg")
    index = read_dataset(tmp_path, "fer2013")
    assert index.format == "fer2013"
    assert labels_of(index) == {
        "train/angry/Training_1.jpg": "angry", "train/happy/Training_2.jpg": "happy",
        "public_test/neutral/PublicTest_3.jpg": "neutral",
    }
    assert index.splits() == ["train", "public_test"]


# --- FER+ ---------------------------------------------------------------------------------------------

#          neutral happy surprise sad angry disgust fear contempt unknown NF
FERPLUS_ROWS = {
    "clear.png": ([0, 8, 2, 0, 0, 0, 0, 0, 0, 0], "happy"),
    "outliers.png": ([4, 1, 1, 1, 1, 1, 1, 0, 0, 0], "neutral"),  # 4 of 10 wins only once the single votes go
    "tie.png": ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], None),  # half is not more than half
    "split.png": ([4, 0, 0, 3, 0, 0, 0, 0, 3, 0], None),
    "contempt.png": ([2, 0, 0, 0, 0, 0, 0, 8, 0, 0], "contempt"),
    "unknown.png": ([0, 0, 2, 0, 0, 0, 0, 0, 8, 0], "unknown"),
    "noface.png": ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], "not a face"),
    "soft.png": ([0, 0, 6, 0, 0, 0, 3, 0, 1, 0], "surprise"),
}


def ferplus(root: Path, rows: dict, folder: str = "FER2013Train", skip_image: str | None = None) -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    with (root / folder / "label.csv").open("w", newline="") as file:
        for name, (votes, _) in rows.items():
            csv.writer(file).writerow([name, "(0, 0, 48, 48)", *votes])
            if name != skip_image:
                face(root / folder / name)
    return root


def test_ferplus_majority_rule_and_exclusions(tmp_path):
    index = read_dataset(ferplus(tmp_path, FERPLUS_ROWS), "ferplus")
    expected = {f"FER2013Train/{n}": label for n, (_, label) in FERPLUS_ROWS.items() if label in EMOTIONS}
    assert labels_of(index) == expected
    assert index.skipped == {"no majority": 2, "contempt": 1, "unknown": 1, "not a face": 1}
    assert {s.split for s in index.samples} == {"train"} and index.samples[0].soft_label is None
    assert not index.problems


def test_ferplus_soft_labels_are_the_seven_emotion_vote_shares(tmp_path):
    index = read_dataset(ferplus(tmp_path, FERPLUS_ROWS), "ferplus", soft_labels=True)
    soft = {s.id: s.soft_label for s in index.samples}["FER2013Train/soft.png"]
    expected = dict.fromkeys(EMOTIONS, 0.0) | {"surprise": 6 / 9, "fear": 3 / 9}  # the unknown vote is not an emotion
    assert soft == pytest.approx(tuple(expected.values()))


def test_ferplus_splits_missing_image_and_header(tmp_path):
    ferplus(tmp_path, {"a.png": ([10] + [0] * 9, None)}, "FER2013Valid")
    ferplus(tmp_path, {"b.png": ([0, 10] + [0] * 8, None), "c.png": ([0, 0, 10] + [0] * 7, None)}, skip_image="c.png")
    label_file = tmp_path / "FER2013Valid/label.csv"
    header = "Image name,Face box,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    label_file.write_text(header + label_file.read_text())
    index = read_dataset(tmp_path, "ferplus")
    assert {(s.id, s.split) for s in index.samples} == {
        ("FER2013Train/b.png", "train"), ("FER2013Valid/a.png", "valid"),
    }
    assert index.skipped == {"missing image": 1}
    assert "FER2013Train/label.csv:2" in index.problems[0] and "c.png" in index.problems[0]


@pytest.mark.parametrize(
    "line, message",
    [
        ('x.png,"(0, 0, 48, 48)",1,2,3', r"label.csv:2: expected 12 fields"),
        ('x.png,"(0, 0, 48, 48)",1,2,3,4,a,0,0,0,0,0', r"label.csv:2: vote counts must be integers"),
        ('x.png,"(0, 0, 48, 48)",1,2,3,4,-1,0,0,0,0,0', r"label.csv:2: negative vote count"),
    ],
)
def test_ferplus_bad_lines_are_errors_naming_file_and_line(tmp_path, line, message):
    ferplus(tmp_path, {"a.png": ([10] + [0] * 9, None)})
    with (tmp_path / "FER2013Train/label.csv").open("a") as file:
        file.write(line + "\n")
    with pytest.raises(DatasetError, match=message):
        read_dataset(tmp_path, "ferplus")


def test_ferplus_needs_its_folders(tmp_path):
    with pytest.raises(DatasetError, match="has none of the FER\\+ folders"):
        read_dataset(tmp_path, "ferplus")
    (tmp_path / "FER2013Train").mkdir()
    with pytest.raises(DatasetError, match="FER\\+ label file .*label.csv does not exist"):
        read_dataset(tmp_path, "ferplus")


def smooth_face(seed: int) -> np.ndarray:
    """A 48 x 48 grey face-like image: a few random blobs, smooth enough that JPEG keeps it within 2 levels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:48, :48]
    image = np.full((48, 48), 60.0)
    for cy, cx, radius, value in zip(*rng.uniform([8, 8, 5, 40], [40, 40, 14, 150], (3, 4)).T):
        image += value * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
    return np.clip(image, 0, 255).astype(np.uint8)


# votes in FERPLUS_COLUMNS order: neutral, happy, surprise, sad, angry, disgust, fear, contempt, unknown, NF
TWIN_VOTES = {0: [0, 8, 2, 0, 0, 0, 0, 0, 0, 0], 1: [6, 0, 0, 4, 0, 0, 0, 0, 0, 0],
              2: [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]}  # row 2: "not a face", no emotion votes


def shares(**named: float) -> tuple[float, ...]:
    return tuple((dict.fromkeys(EMOTIONS, 0.0) | named).values())


def ferplus_of_rows(root: Path, rows: dict[int, list[int]], folder: str = "FER2013Train",
                    images: bool = True) -> Path:
    """A FER+ folder naming each image by its FER2013 row, as FER+ does."""
    (root / folder).mkdir(parents=True)
    with (root / folder / "label.csv").open("w", newline="") as file:
        for row, votes in rows.items():
            csv.writer(file).writerow([f"fer{row:07d}.png", "(0, 0, 48, 48)", *votes])
            if images:
                Image.fromarray(smooth_face(row)).save(root / folder / f"fer{row:07d}.png")
    return root


def test_fer2013_csv_takes_ferplus_votes_by_row_of_the_whole_file_and_keeps_its_labels(tmp_path):
    usages = ["Training"] * 4 + ["PublicTest", "PrivateTest"]
    rows = [["3", " ".join(map(str, smooth_face(r).ravel())), usage] for r, usage in enumerate(usages)]
    votes = ferplus_of_rows(tmp_path / "ferplus", TWIN_VOTES)
    ferplus_of_rows(votes, {4: [0, 0, 0, 0, 9, 1, 0, 0, 0, 0]}, "FER2013Valid")
    ferplus_of_rows(votes, {5: [0, 0, 0, 0, 0, 0, 10, 0, 0, 0]}, "FER2013Test")
    index = read_dataset(fer2013_csv(tmp_path / "fer.csv", rows), "fer2013", ferplus=str(votes))
    soft = {s.id: s.soft_label for s in index.samples}
    assert soft["train/0"] == pytest.approx(shares(happy=0.8, surprise=0.2))
    assert soft["train/1"] == pytest.approx(shares(neutral=0.6, sad=0.4))
    assert soft["train/2"] is None and soft["train/3"] is None  # no emotion votes; no FER+ row
    assert soft["public_test/4"] == pytest.approx(shares(angry=1.0))  # FER2013Valid, row 4 of the whole file
    assert soft["private_test/5"] == pytest.approx(shares(fear=1.0))  # FER2013Test
    assert {EMOTIONS[s.label] for s in index.samples} == {"happy"}  # FER2013's label, whatever FER+ says


def test_a_fer2013_csv_whose_rows_are_not_ferplus_rows_is_refused(tmp_path):
    rows = [["3", " ".join(map(str, smooth_face(r).ravel())), "Training"] for r in (1, 0)]  # two rows swapped
    votes = ferplus_of_rows(tmp_path / "ferplus", TWIN_VOTES)
    with pytest.raises(DatasetError, match="fer.csv: row 0 is not the face FER\\+ names .*filtered or reordered"):
        read_dataset(fer2013_csv(tmp_path / "fer.csv", rows), "fer2013", ferplus=str(votes))


def rows_agreeing_with_ferplus(tmp_path: Path, n: int) -> tuple[list[list[str]], Path]:
    """``n`` FER2013 CSV rows labelled 0..6 in turn, and a FER+ folder (label files, no images) whose votes name
    each row's label: a row joined to its neighbour's votes never agrees."""
    codes = [i % 7 for i in range(n)]
    columns = {"angry": 4, "disgust": 5, "fear": 6, "happy": 1, "sad": 3, "surprise": 2, "neutral": 0}
    fer_names = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    votes = {row: [10 * (i == columns[fer_names[code]]) for i in range(10)] for row, code in enumerate(codes)}
    ferplus = ferplus_of_rows(tmp_path / "ferplus", votes, images=False)
    return [[str(code), pixel_text(9, 16), "Training"] for code in codes], ferplus


def test_a_reordered_or_filtered_fer2013_csv_is_refused_by_its_labels_where_ferplus_has_no_images(tmp_path):
    # FER+ ships its label files alone; then a CSV's rows can be checked only by how often FER2013's label is
    # FER+'s majority (about 65% in the real files; about chance for rows joined to other faces)
    in_order, ferplus = rows_agreeing_with_ferplus(tmp_path, 1500)
    index = read_dataset(fer2013_csv(tmp_path / "fer.csv", in_order), "fer2013", ferplus=str(ferplus))
    assert all(np.argmax(s.soft_label) == s.label for s in index.samples)
    shuffled = [in_order[i] for i in np.random.default_rng(0).permutation(140)]
    with pytest.raises(DatasetError, match="shuffled.csv: joined by row to .*FER2013Train, FER2013's labels are FER"
                                           "\\+'s vote majority for only [0-9]+% of the 140 images from row 0"):
        read_dataset(fer2013_csv(tmp_path / "shuffled.csv", shuffled), "fer2013", ferplus=str(ferplus))
    # one row missing at 60%: every later row takes the votes of the face after it, while the whole split's
    # agreement stays above chance
    filtered = in_order[:900] + in_order[901:]
    with pytest.raises(DatasetError, match="for only 0% of the 499 images from row 1000"):
        read_dataset(fer2013_csv(tmp_path / "filtered.csv", filtered), "fer2013", ferplus=str(ferplus))


def test_a_row_missing_late_in_a_fer2013_csv_shows_in_its_last_block_of_rows(tmp_path):
    # 1,699 rows in blocks of 500 (the short last one joined to the block before: rows 1000-1698): a row missing at
    # 1350 leaves that block half right, and the last 500 rows 30% right
    rows, ferplus = rows_agreeing_with_ferplus(tmp_path, 1700)
    with pytest.raises(DatasetError, match="for only 30% of the 500 images from row 1199"):
        read_dataset(fer2013_csv(tmp_path / "late.csv", rows[:1350] + rows[1351:]), "fer2013", ferplus=str(ferplus))


def test_fer2013_folder_takes_ferplus_votes_by_pixels_of_its_jpeg_copies(tmp_path):
    root = tmp_path / "fer2013"
    for split, row, name in [("train", 1, "Training_1.jpg"), ("train", 0, "Training_7.jpg"),
                             ("train", 5, "Training_3.jpg"), ("public_test", 6, "PublicTest_2.jpg")]:
        (root / split / "sad").mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_face(row)).save(root / split / "sad" / name, quality=75)  # row 5: not in FER+
    face(root / "train" / "sad" / "Training_9.jpg", size=(64, 64))  # not FER2013's size: no copy
    votes = ferplus_of_rows(tmp_path / "ferplus", TWIN_VOTES | {7: [0, 0, 10, 0, 0, 0, 0, 0, 0, 0]})
    # FER2013 holds some pictures twice, each with its own FER+ votes: row 7 is row 0's picture again
    Image.fromarray(smooth_face(0)).save(votes / "FER2013Train" / "fer0000007.png")
    ferplus_of_rows(votes, {6: [0, 0, 0, 0, 0, 0, 10, 0, 0, 0]}, "FER2013Valid")
    index = read_dataset(root, "fer2013", ferplus=str(votes))
    soft = {s.id: s.soft_label for s in index.samples}
    assert soft["train/sad/Training_7.jpg"] == pytest.approx(shares(happy=0.4, surprise=0.6))  # rows 0 and 7
    assert soft["train/sad/Training_1.jpg"] == pytest.approx(shares(neutral=0.6, sad=0.4))  # row 1's
    assert soft["public_test/sad/PublicTest_2.jpg"] == pytest.approx(shares(fear=1.0))  # FER2013Valid's row 6
    assert soft["train/sad/Training_3.jpg"] is None and soft["train/sad/Training_9.jpg"] is None


def test_fer2013_ferplus_option_needs_a_ferplus_folder_and_for_folders_its_images(tmp_path):
    rows = [["3", pixel_text(5), "Training"]]
    with pytest.raises(DatasetError, match="has none of the FER\\+ folders"):
        read_dataset(fer2013_csv(tmp_path / "fer.csv", rows), "fer2013", ferplus=str(tmp_path))
    face(tmp_path / "fer2013" / "train" / "sad" / "Training_1.jpg")
    votes = ferplus_of_rows(tmp_path / "ferplus", TWIN_VOTES, images=False)  # the label files alone
    with pytest.raises(DatasetError, match="FER2013Train has a label.csv but none of its images"):
        read_dataset(tmp_path / "fer2013", "fer2013", ferplus=str(votes))
    # a CSV is joined by row: the label files are enough
    rows = [["3", " ".join(map(str, smooth_face(0).ravel())), "Training"]]
    index = read_dataset(fer2013_csv(tmp_path / "fer.csv", rows), "fer2013", ferplus=str(votes))
    assert index.samples[0].soft_label == pytest.approx(shares(happy=0.8, surprise=0.2))


# --- AffectNet ------------------------------------------------------------------------------------------


def affectnet(root: Path, codes: list[str], name: str = "training.csv") -> Path:
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
              "expression", "valence", "arousal"]
    with (root / name).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for i, code in enumerate(codes):
            writer.writerow([f"{i % 3}/img{i}.jpg", 0, 0, 48, 48, "1;2", code, 0.1, -0.2])
            face(root / "Manually_Annotated_Images" / f"{i % 3}/img{i}.jpg")
    return root


def test_affectnet_codes_exclusions_and_splits(tmp_path):
    affectnet(tmp_path, [str(code) for code in range(11)])
    affectnet(tmp_path, ["6"], "validation.csv")
    index = read_dataset(tmp_path, "affectnet")
    train = [EMOTIONS[s.label] for s in index.samples if s.split == "train"]
    assert train == ["neutral", "happy", "sad", "surprise", "fear", "disgust", "angry"]
    assert [s.id for s in index.samples if s.split == "valid"] == ["0/img0.jpg"]
    assert index.skipped == {"contempt": 1, "none": 1, "uncertain": 1, "not a face": 1}
    assert index.samples[0].load().size == (48, 48)


def test_affectnet_one_csv_with_an_image_folder_option(tmp_path):
    affectnet(tmp_path, ["1", "2"], "my_subset.csv")
    index = read_dataset(tmp_path / "my_subset.csv", "affectnet", images=tmp_path / "Manually_Annotated_Images")
    assert [(s.split, EMOTIONS[s.label]) for s in index.samples] == [("my_subset", "happy"), ("my_subset", "sad")]


def test_affectnet_unknown_code_and_missing_image(tmp_path):
    affectnet(tmp_path, ["1", "2"])
    (tmp_path / "Manually_Annotated_Images/1/img1.jpg").unlink()
    index = read_dataset(tmp_path, "affectnet")
    assert index.skipped == {"missing image": 1} and "training.csv:3" in index.problems[0]
    affectnet(tmp_path, ["1", "11"])
    with pytest.raises(DatasetError, match=r"training.csv:3: expected an image path and an expression code 0-10"):
        read_dataset(tmp_path, "affectnet")


# --- CK+, JAFFE, folder trees ------------------------------------------------------------------------------


def test_ckplus_subjects_and_contempt(tmp_path):
    face(tmp_path / "anger/S005_001_00000011.png")
    face(tmp_path / "happy/S010_006_00000015.png")
    face(tmp_path / "sadness/S010_002_00000014.png")
    face(tmp_path / "contempt/S011_004_00000021.png")
    index = read_dataset(tmp_path, "ckplus")
    assert {(s.id, EMOTIONS[s.label], s.subject, s.split) for s in index.samples} == {
        ("anger/S005_001_00000011.png", "angry", "S005", "all"),
        ("happy/S010_006_00000015.png", "happy", "S010", "all"),
        ("sadness/S010_002_00000014.png", "sad", "S010", "all"),
    }
    assert index.skipped == {"contempt": 1}


def test_ckplus_file_without_subject_is_an_error(tmp_path):
    face(tmp_path / "fear/frame_01.png")
    with pytest.raises(DatasetError, match=r"frame_01.png: CK\+ file name does not start with the subject"):
        read_dataset(tmp_path, "ckplus")


def test_jaffe_labels_and_subjects_from_file_names(tmp_path):
    for name in ["KA.AN1.39.tiff", "KA.HA2.30.tiff", "YM.SU1.58.tiff", "NA.DI3.216.tiff", "UY.NE1.1.tiff"]:
        face(tmp_path / name, size=(256, 256))
    (tmp_path / "README").write_text("JAFFE\n")
    index = read_dataset(tmp_path, "jaffe")
    assert {s.id: (EMOTIONS[s.label], s.subject) for s in index.samples} == {
        "KA.AN1.39.tiff": ("angry", "KA"), "KA.HA2.30.tiff": ("happy", "KA"), "YM.SU1.58.tiff": ("surprise", "YM"),
        "NA.DI3.216.tiff": ("disgust", "NA"), "UY.NE1.1.tiff": ("neutral", "UY"),
    }
    assert index.skipped == {"not an image file": 1} and "README" in index.problems[0]


def test_jaffe_unknown_code_is_an_error(tmp_path):
    face(tmp_path / "KA.XX1.39.tiff")
    with pytest.raises(DatasetError, match=r"KA.XX1.39.tiff: cannot read the JAFFE label"):
        read_dataset(tmp_path, "jaffe")


def test_folder_with_splits_synonyms_and_any_case(tmp_path):
    face(tmp_path / "train/Anger/a.jpg")
    face(tmp_path / "train/HAPPINESS/nested/b.png")
    face(tmp_path / "test/surprised/c.bmp")
    face(tmp_path / "test/Fearful/d.jpg")
    face(tmp_path / "test/Fearful/.hidden.jpg")
    (tmp_path / "test/Fearful/notes.txt").write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    index = read_dataset(tmp_path, "folder")
    assert labels_of(index) == {
        "train/Anger/a.jpg": "angry", "train/HAPPINESS/nested/b.png": "happy",
        "test/surprised/c.bmp": "surprise", "test/Fearful/d.jpg": "fear",
    }
    assert index.splits() == ["train", "test"]
    assert index.skipped == {"not an image file": 1} and "notes.txt" in index.problems[0]


def test_broken_links_in_class_folders_are_counted_skips_naming_them(tmp_path):
    face(tmp_path / "happy/good.jpg")
    (tmp_path / "happy/dangling.jpg").symlink_to("gone.jpg")
    (tmp_path / "sad").mkdir()
    (tmp_path / "sad/also.png").symlink_to(tmp_path / "nowhere/also.png")
    (tmp_path / "stray.jpg").symlink_to("gone.jpg")  # beside the class folders, not a class of its own
    index = read_dataset(tmp_path, "folder")
    assert labels_of(index) == {"happy/good.jpg": "happy"}
    assert index.skipped == {"not a file": 3}
    assert any("happy/dangling.jpg: broken symbolic link (its target gone.jpg does not exist)" in p
               for p in index.problems), index.problems
    assert any("sad/also.png: broken symbolic link" in p for p in index.problems), index.problems
    assert any("stray.jpg: broken symbolic link" in p for p in index.problems), index.problems
    (tmp_path / "jaffe").mkdir()
    face(tmp_path / "jaffe/KA.AN1.39.tiff")
    (tmp_path / "jaffe/KA.HA2.30.tiff").symlink_to("gone.tiff")
    jaffe = read_dataset(tmp_path / "jaffe", "jaffe")
    assert [s.id for s in jaffe.samples] == ["KA.AN1.39.tiff"] and jaffe.skipped == {"not a file": 1}


def test_broken_links_to_class_or_split_folders_are_named_not_dropped(tmp_path):
    face(tmp_path / "tree/train/happy/a.jpg")
    face(tmp_path / "tree/val/happy/b.jpg")
    (tmp_path / "tree/train/sad").symlink_to(tmp_path / "unmounted/sad")  # a whole class on a missing disk
    index = read_dataset(tmp_path / "tree", "folder")
    assert index.skipped == {"not a file": 1}
    assert any("train/sad: broken symbolic link" in p for p in index.problems), index.problems
    (tmp_path / "tree/test").symlink_to(tmp_path / "unmounted/test")  # a whole split: reading on would lose it
    with pytest.raises(DatasetError, match="tree/test: broken symbolic link"):
        read_dataset(tmp_path / "tree", "folder")


def test_folder_without_split_level_uses_the_split_option(tmp_path):
    face(tmp_path / "sad/a.jpg")
    face(tmp_path / "neutral/b.jpg")
    assert {s.split for s in read_dataset(tmp_path, "folder").samples} == {"all"}
    assert {s.split for s in read_dataset(tmp_path, "folder", split="train").samples} == {"train"}


def test_folder_unknown_class_is_an_error_naming_the_folder(tmp_path):
    face(tmp_path / "train/happy/a.jpg")
    face(tmp_path / "train/bored/b.jpg")
    with pytest.raises(DatasetError, match=r"train/bored: class folder is not an emotion"):
        read_dataset(tmp_path, "folder")


def test_folder_mixing_classes_and_splits_is_an_error(tmp_path):
    face(tmp_path / "happy/a.jpg")
    face(tmp_path / "train/sad/b.jpg")
    with pytest.raises(DatasetError, match=r"mixes class folders \(happy\) with other folders \(train\)"):
        read_dataset(tmp_path, "folder")


def test_folder_empty_or_missing(tmp_path):
    with pytest.raises(DatasetError, match="has no class folders"):
        read_dataset(tmp_path, "folder")
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "absent", "folder")


def test_corrupt_image_is_found_at_load_time_naming_the_file(tmp_path):
    from msfer.data.images import UnreadableImageError

    face(tmp_path / "happy/good.jpg")
    (tmp_path / "happy/broken.jpg").write_bytes(b"")
    index = read_dataset(tmp_path, "folder")
    broken = next(s for s in index.samples if s.id == "happy/broken.jpg")
    with pytest.raises(UnreadableImageError, match="broken.jpg: empty file"):
        broken.load()


# --- dispatch ------------------------------------------------------------------------------------------------


def test_read_dataset_rejects_unknown_formats_options_and_paths(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset format 'fer'; expected one of rafdb, fer2013, ferplus"):
        read_dataset(tmp_path, "fer")
    with pytest.raises(DatasetError, match="rafdb reader has no option colour; its options: variant, require_images"):
        read_dataset(tmp_path, "rafdb", colour="red")
    with pytest.raises(DatasetError, match="dataset path .*absent does not exist"):
        read_dataset(tmp_path / "absent", "rafdb")
