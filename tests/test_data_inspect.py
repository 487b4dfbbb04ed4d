"""`msfer datasets inspect` through the CLI entry point."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from msfer.cli import main
from msfer.labels import EMOTIONS


def tiny_folder_dataset(root: Path) -> Path:
    layout = [("train", "happy", (48, 48), 3), ("train", "Anger", (64, 40), 1), ("test", "sad", (48, 48), 2)]
    for split, label, size, count in layout:
        for i in range(count):
            path = root / split / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", size, 100).save(path)
    (root / "train/happy/notes.txt").write_text("not an image")
    return root


def test_inspect_json_is_one_object_with_canonical_counts(tmp_path, capsys):
    root = tiny_folder_dataset(tmp_path)
    assert main(["datasets", "inspect", str(root), "--format", "folder", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # fails unless stdout is exactly one JSON document
    assert report["format"] == "folder"
    assert list(report["splits"]) == ["train", "test"]
    assert list(report["splits"]["train"]) == list(EMOTIONS)
    assert report["splits"]["train"] == dict.fromkeys(EMOTIONS, 0) | {"happy": 3, "angry": 1}
    assert report["splits"]["test"]["sad"] == 2
    assert report["skipped"] == {"not an image file": 1}
    assert any("notes.txt" in problem for problem in report["problems"])
    sizes = report["image_sizes"]
    assert sizes["measured"] == sizes["of"] == 6
    assert sizes["width"] == {"min": 48, "median": 48, "max": 64} and sizes["height"]["min"] == 40
    assert sizes["modes"] == {"L": 6}


def test_inspect_check_images_lists_unreadable_files(tmp_path, capsys):
    root = tiny_folder_dataset(tmp_path)
    (root / "test/sad/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    command = ["datasets", "inspect", str(root), "--format", "folder", "--json", "--check-images", "--split", "test"]
    assert main(command) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["splits"]) == ["test"] and report["samples"] == 3
    assert report["unreadable_images"] == 1
    assert any("broken.jpg" in problem for problem in report["problems"])


def test_inspect_text_report(tmp_path, capsys):
    root = tiny_folder_dataset(tmp_path)
    assert main(["datasets", "inspect", str(root), "--format", "folder", "--size-sample", "2"]) == 0
    text = capsys.readouterr().out
    assert "folder dataset at" in text and "6 samples" in text
    header, train, test, total = [line.split() for line in text.splitlines()[2:6]]
    assert header == ["split", *EMOTIONS, "total"]
    assert train == ["train", "1", "0", "0", "3", "0", "0", "0", "4"]
    assert total[-1] == "6"
    assert "image sizes (2 of 6 images" in text and "notes.txt" in text


def test_inspect_reader_options_pass_through(tmp_path, capsys):
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel/list_patition_label.txt").write_text("train_00001.jpg 1\ntest_00001.jpg 7\n")
    command = ["datasets", "inspect", str(tmp_path), "--format", "rafdb", "--json", "-o", "require_images=false"]
    assert main(command) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["train"]["surprise"] == 1 and report["splits"]["test"]["neutral"] == 1


def test_inspect_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["datasets", "inspect", str(tmp_path), "--format", "nope"]) == 2
    assert "unknown dataset format 'nope'; expected one of rafdb, fer2013" in capsys.readouterr().err
    assert main(["datasets", "inspect", str(tmp_path / "absent"), "--format", "folder"]) == 2
    assert "absent does not exist" in capsys.readouterr().err
    root = tiny_folder_dataset(tmp_path / "d")
    assert main(["datasets", "inspect", str(root), "--format", "folder", "--split", "valid"]) == 2
    assert "no split 'valid'; its splits: train, test" in capsys.readouterr().err
    assert main(["datasets", "inspect", str(root), "--format", "folder", "-o", "split"]) == 2
    assert "reader option 'split' is not KEY=VALUE" in capsys.readouterr().err
