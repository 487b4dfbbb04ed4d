"""What `msfer predict` and `msfer report` write, and what they read: outputs never land on inputs or on each
other, an existing --out needs --resume or --overwrite, any file name works, and nothing is skipped silently."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_inference_predict import moving_face_frames, write_video

import msfer
from msfer.cli import main


def digests(folder: Path) -> dict[str, str]:
    files = (p for p in sorted(folder.rglob("*")) if p.is_file())
    return {os.fsdecode(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def shots(tmp_path, astronaut) -> Path:
    """A phone's folder: a selfie, holiday.jpg and holiday.png, the same name in two sub-folders, and a video."""
    folder = tmp_path / "shots"
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
    Image.fromarray(astronaut).save(folder / "selfie.jpg", quality=90)
    Image.fromarray(astronaut[:, ::-1]).save(folder / "holiday.jpg", quality=90)
    Image.fromarray(astronaut).save(folder / "holiday.png")
    Image.fromarray(astronaut[::2, ::2]).save(folder / "a" / "same.jpg")
    Image.fromarray(astronaut).save(folder / "b" / "same.jpg")
    write_video(folder / "clip.avi", moving_face_frames(astronaut, 6))
    return folder


def test_annotated_copies_written_into_the_input_folder_change_no_input(shots, random_weights, capsys):
    before = digests(shots)
    assert main(["predict", str(shots), "--weights", str(random_weights), "--save-vis", str(shots)]) == 0
    after = digests(shots)
    assert {name: after[name] for name in before} == before  # every input byte for byte as it was
    written = sorted(os.path.relpath(name, shots) for name in set(after) - set(before))
    assert written == ["a/same.jpg.msfer.jpg", "b/same.jpg.msfer.jpg", "clip.avi.msfer.mp4", "holiday.jpg.msfer.jpg",
                       "holiday.png.msfer.jpg", "selfie.jpg.msfer.jpg"]  # one per input: none overwrote another
    import av

    with av.open(str(shots / "clip.avi.msfer.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6  # the whole video, not a truncated one
    # written through temporary files, yet with the permissions any new file gets (not mkstemp's 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert {(shots / name).stat().st_mode & 0o777 for name in written} == {0o666 & ~umask}

    # A second run over the same folder would replace the first run's copies: refused unless asked, before any is
    # written; with --overwrite it skips the copies as inputs, names them, and writes copies of the same names again.
    capsys.readouterr()
    assert main(["predict", str(shots), "--weights", str(random_weights), "--save-vis", str(shots)]) == 2
    message = capsys.readouterr().err
    assert "already holds 6 of this run's annotated copies" in message and "--overwrite" in message
    assert "--resume" not in message  # no --out to resume
    assert main(["predict", str(shots), "--weights", str(random_weights), "--save-vis", str(shots),
                 "--resume"]) == 2  # --resume without --out resumes nothing: still refused
    assert digests(shots) == after
    assert main(["predict", str(shots), "--weights", str(random_weights), "--save-vis", str(shots),
                 "--overwrite"]) == 0
    assert "skipped" in capsys.readouterr().err and sorted(digests(shots)) == sorted(after)


def test_the_webcams_earlier_recording_is_not_replaced_unasked(tmp_path):
    from msfer.errors import MsferError
    from msfer.inference.predict import check_outputs, collect_inputs

    vis = tmp_path / "vis"
    vis.mkdir()
    (vis / "webcam0.msfer.mp4").write_bytes(b"an earlier recording")
    inputs = collect_inputs([])
    with pytest.raises(MsferError, match="already holds 1 of this run's annotated copies .*webcam0.msfer.mp4"):
        check_outputs(inputs, [], None, vis, webcam=0)
    check_outputs(inputs, [], None, vis, replace_copies=True, webcam=0)  # --overwrite
    check_outputs(inputs, [], None, vis, webcam=1)  # another camera's copy is free


def test_a_name_too_long_for_a_suffix_gets_a_shortened_unique_copy(tmp_path, astronaut, random_weights):
    folder, vis = tmp_path / "long", tmp_path / "vis"
    folder.mkdir()
    names = ["x" * 240 + "-1.jpg", "x" * 240 + "-2.jpg"]  # 246 bytes: allowed, but not with ".msfer.jpg" after it
    for name in names:
        Image.fromarray(astronaut[::4, ::4]).save(folder / name)
    assert main(["predict", str(folder), "--weights", str(random_weights), "--save-vis", str(vis)]) == 0
    written = sorted(path.name for path in vis.iterdir())
    assert len(written) == 2 and all(len(name) <= 255 and name.endswith(".msfer.jpg") for name in written)


def test_outputs_that_would_land_on_an_input_are_refused(shots, random_weights, tmp_path, capsys):
    # An input named like the annotated copy of another input: writing the copy would destroy it.
    photo = shots / "selfie.jpg"
    copy_named = shots / "selfie.jpg.msfer.jpg"
    copy_named.write_bytes(photo.read_bytes())
    before = digests(shots)
    assert main(["predict", str(photo), str(copy_named), "--weights", str(random_weights),
                 "--save-vis", str(shots)]) == 2
    message = capsys.readouterr().err
    assert "selfie.jpg.msfer.jpg" in message and "never writes onto a file it reads" in message
    assert digests(shots) == before

    # A hard link to an input where an annotated copy would go is the input too.
    vis = tmp_path / "vis"
    vis.mkdir()
    os.link(photo, vis / "selfie.jpg.msfer.jpg")
    assert main(["predict", str(photo), "--weights", str(random_weights), "--save-vis", str(vis)]) == 2
    assert "never writes onto a file it reads" in capsys.readouterr().err and digests(shots) == before

    # --out onto an input (a JPEG whose name ends in .csv is an image by its content).
    disguised = tmp_path / "photo.csv"
    disguised.write_bytes(photo.read_bytes())
    assert main(["predict", str(disguised), "--weights", str(random_weights), "--out", str(disguised),
                 "--overwrite"]) == 2
    assert "never writes onto a file it reads" in capsys.readouterr().err
    assert disguised.read_bytes() == photo.read_bytes()

    # The report's files onto the video (a video is recognised by its content, whatever its name).
    video = tmp_path / "report" / "frames.jsonl"
    video.parent.mkdir()
    video.write_bytes((shots / "clip.avi").read_bytes())
    assert main(["report", str(video), "--out", str(video.parent), "--weights", str(random_weights)]) == 2
    assert "never writes onto a file it reads" in capsys.readouterr().err
    assert video.read_bytes() == (shots / "clip.avi").read_bytes()


def test_an_existing_out_needs_resume_or_overwrite(shots, random_weights, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    out.write_text('{"source": "yesterday.jpg", "faces": []}\n')
    assert main(["predict", str(shots / "selfie.jpg"), "--weights", str(random_weights), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == '{"source": "yesterday.jpg", "faces": []}\n'
    assert main(["predict", str(shots / "selfie.jpg"), "--weights", str(random_weights), "--out", str(out),
                 "--overwrite"]) == 0
    assert [Path(r["source"]).name for r in jsonl(out)] == ["selfie.jpg"]


@pytest.mark.parametrize("extension", ["jsonl", "csv"])
def test_resume_finishes_an_interrupted_run_with_every_record_once(shots, random_weights, tmp_path, extension,
                                                                    capsys):
    def records(path: Path) -> list[tuple[str, str]]:
        if extension == "jsonl":
            return [(Path(r["source"]).name, str(r.get("frame", ""))) for r in jsonl(path)]
        return [(Path(r["source"]).name, r["frame"]) for r in csv.DictReader(path.open(newline=""))]

    full, out = tmp_path / f"full.{extension}", tmp_path / f"cut.{extension}"
    inputs = [str(shots / "selfie.jpg"), str(shots / "holiday.png"), str(shots / "clip.avi")]
    assert main(["predict", *inputs, "--weights", str(random_weights), "--out", str(full)]) == 0
    expected = records(full)
    assert len(expected) == 2 + 6  # two photos, then the video's frames
    lines = full.read_text().splitlines(keepends=True)
    header = 1 if extension == "csv" else 0
    # Killed in the middle of the video, while a line was being written.
    out.write_text("".join(lines[: header + 2 + 3]) + lines[header + 2 + 3][:20])
    capsys.readouterr()
    assert main(["predict", *inputs, "--weights", str(random_weights), "--out", str(out), "--resume"]) == 0
    # The video, which came last, was done again from its start, and the run said so; the photos were not done again.
    assert sorted(records(out)) == sorted(expected)
    assert records(out)[:2] == expected[:2]
    assert (f"clip.avi came last in {out} and may have been cut short: its 3 record(s) are dropped and it is "
            "processed again from its start") in capsys.readouterr().err


def test_resume_with_other_inputs_keeps_the_last_video_of_the_file(shots, random_weights, tmp_path, capsys):
    """A file whose last input is a video, resumed by a run that does not name that video: its records stay (they
    are only done again by a run that does it again)."""
    out = tmp_path / "video_then_photo.jsonl"
    assert main(["predict", str(shots / "clip.avi"), "--weights", str(random_weights), "--out", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["predict", str(shots / "selfie.jpg"), "--weights", str(random_weights), "--out", str(out),
                 "--resume"]) == 0
    assert out.read_bytes().startswith(before)  # the video's 6 records, kept whole
    assert [Path(r["source"]).name for r in jsonl(out)] == ["clip.avi"] * 6 + ["selfie.jpg"]
    assert (f"clip.avi came last in {out} and may have been cut short; it is not among this run's inputs, so its "
            "6 record(s) are kept as they are") in capsys.readouterr().err


def test_file_names_that_are_not_utf8(tmp_path, astronaut, random_weights):
    """Latin-1 names from an old archive, on a terminal that accepts only UTF-8: nothing fails, nothing is lost."""
    folder = tmp_path / "archive"
    folder.mkdir()
    raw = os.fsencode(folder)
    names = (b"caf\xe9.jpg", b"vid\xe9o.avi", b"d\xe9fect.png")
    photo, video, broken = (os.fsdecode(raw + b"/" + name) for name in names)
    Image.fromarray(astronaut).save(photo, format="JPEG")
    write_video(folder / "video.avi", moving_face_frames(astronaut, 4))  # OpenCV's writer crashes on such names
    os.rename(folder / "video.avi", video)
    Path(broken).write_bytes(b"not a PNG")
    Image.fromarray(astronaut).save(folder / "plain.jpg")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict",
           "PYTHONPATH": os.pathsep.join([str(Path(msfer.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    out, vis = tmp_path / "results.csv", tmp_path / "vis"
    done = subprocess.run([sys.executable, "-m", "msfer.cli", "predict", str(folder), "--weights",
                           str(random_weights), "--out", str(out), "--save-vis", str(vis)],
                          env=env, capture_output=True, timeout=600)
    assert done.returncode == 1, done.stderr.decode(errors="replace")  # 1: the broken file, and only it
    assert b"caf\\xe9.jpg: " in done.stdout  # the terminal line, escaped
    assert b"d\\xe9fect.png" in done.stderr and b"Traceback" not in done.stderr
    assert sorted(os.listdir(os.fsencode(vis))) == [b"caf\xe9.jpg.msfer.jpg", b"plain.jpg.msfer.jpg",
                                                    b"vid\xe9o.avi.msfer.mp4"]
    csv_rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert main(["predict", str(folder), "--weights", str(random_weights), "--out", str(tmp_path / "r.jsonl")]) == 1
    for rows in (csv_rows, jsonl(tmp_path / "r.jsonl")):
        by_name = {}
        for row in rows:
            by_name.setdefault(Path(row["source"]).name, []).append(row)
        assert set(by_name) == {"caf\\xe9.jpg", "vid\\xe9o.avi", "d\\xe9fect.png", "plain.jpg"}
        # source_hex gives the exact bytes back; plain names have none.
        assert os.fsdecode(bytes.fromhex(by_name["caf\\xe9.jpg"][0]["source_hex"])) == photo
        assert not by_name["plain.jpg"][0].get("source_hex")
        assert len(by_name["vid\\xe9o.avi"]) == 4 and by_name["d\\xe9fect.png"][0]["error"]


def test_heic_odd_extensions_and_skipped_files_are_never_silent(tmp_path, astronaut, random_weights, capsys):
    folder = tmp_path / "iphone"
    folder.mkdir()
    Image.fromarray(astronaut).save(folder / "IMG_0001.HEIC")  # what iPhones write, upper-case extension
    (folder / "notes.txt").write_text("a note")
    (folder / "IMG_0001.AAE").write_text("<plist/>")  # iPhone edit sidecar
    out = tmp_path / "iphone.jsonl"
    # The photo named twice (in its folder and by name) is processed once, and the second mention is named too.
    assert main(["predict", str(folder), str(folder / "IMG_0001.HEIC"), "--weights", str(random_weights),
                 "--out", str(out)]) == 0
    errors = capsys.readouterr().err
    assert "notes.txt: not an image or video" in errors and "IMG_0001.AAE: not an image or video" in errors
    assert "IMG_0001.HEIC: the same file as" in errors
    assert [(Path(r["source"]).name, len(r["faces"])) for r in jsonl(out)] == [("IMG_0001.HEIC", 1)]

    # A JPEG without an extension and an upper-case camcorder .MTS given by name are read by their content.
    unnamed = tmp_path / "IMG_0002"
    unnamed.write_bytes((tmp_path / "iphone" / "IMG_0001.HEIC").read_bytes())
    mts = tmp_path / "00001.MTS"
    import av

    with av.open(str(mts), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for image in moving_face_frames(astronaut, 3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    out = tmp_path / "given.jsonl"
    assert main(["predict", str(unnamed), str(mts), "--weights", str(random_weights), "--out", str(out)]) == 0
    records = jsonl(out)
    assert [(Path(r["source"]).name, r.get("frame")) for r in records] == [("IMG_0002", None), ("00001.MTS", 0),
                                                                         ("00001.MTS", 1), ("00001.MTS", 2)]

    # A run that finds nothing to do says so and fails; a file given by name that is no image or video is an error.
    only_notes = tmp_path / "notes"
    only_notes.mkdir()
    (only_notes / "readme.md").write_text("# nothing here")
    assert main(["predict", str(only_notes), "--weights", str(random_weights)]) == 1
    errors = capsys.readouterr().err
    assert "readme.md: not an image or video" in errors and "nothing to process" in errors
    assert main(["predict", str(only_notes / "readme.md"), "--weights", str(random_weights)]) == 1
    assert "not an image or video file" in capsys.readouterr().err


def test_broken_links_and_linked_folders_in_a_folder_are_named_never_silent(tmp_path, astronaut, random_weights,
                                                                           capsys):
    folder = tmp_path / "shots"
    folder.mkdir()
    Image.fromarray(astronaut).save(folder / "good.jpg", quality=90)
    (folder / "dangling.jpg").symlink_to("gone.jpg")
    (folder / "dangling.txt").symlink_to("gone.txt")  # no photo by its name: skipped, with the reason
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(astronaut).save(elsewhere / "other.jpg", quality=90)
    (folder / "linked").symlink_to(elsewhere)
    (folder / "mounted").symlink_to(tmp_path / "unmounted")  # a folder on a disk that is not there
    out = tmp_path / "out.jsonl"
    # A broken photo link fails like an unreadable photo: the run goes on and exits 1.
    assert main(["predict", str(folder), "--weights", str(random_weights), "--out", str(out)]) == 1
    errors = capsys.readouterr().err
    assert "dangling.jpg: broken symbolic link (its target gone.jpg does not exist)" in errors
    assert "dangling.txt: broken symbolic link" in errors  # named as what it is, whatever its name
    assert "linked: a symbolic link to a folder, not followed" in errors
    assert "mounted: broken symbolic link" in errors  # not "not an image or video file name extension"
    assert "1 input(s) could not be processed" in errors
    records = {Path(r["source"]).name: r for r in jsonl(out)}
    assert set(records) == {"good.jpg", "dangling.jpg"}
    assert len(records["good.jpg"]["faces"]) == 1 and "broken symbolic link" in records["dangling.jpg"]["error"]
    # Given by name, the same link gets the same message.
    assert main(["predict", str(folder / "dangling.jpg"), "--weights", str(random_weights)]) == 1
    assert "dangling.jpg: broken symbolic link" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_one_error_line(shots, random_weights, tmp_path, capsys):
    # Paths under a file: no folder can be made there, even by root (for whom chmod stops nothing).
    photo, video = shots / "selfie.jpg", shots / "clip.avi"
    before = digests(shots)
    runs = [("predict", [str(photo), "--out", str(photo / "x.jsonl")], photo / "x.jsonl"),
            ("predict", [str(photo), "--out", str(photo / "sub" / "x.csv")], photo / "sub" / "x.csv"),
            ("report", [str(video), "--out", str(video / "report")], video / "report")]
    for command, arguments, path in runs:
        assert main([command, *arguments, "--weights", str(random_weights)]) == 2
        err = capsys.readouterr().err
        assert err == f"msfer {command}: error: cannot write {path}: {photo if command == 'predict' else video} " \
                      "is a file, not a folder\n"
    assert main(["report", str(video), "--out", str(video), "--weights", str(random_weights)]) == 2
    assert capsys.readouterr().err == f"msfer report: error: --out {video} is a file; give a folder\n"
    # evaluate: refused before the evaluation's minutes, not with a traceback after them
    assert main(["evaluate", "--data", str(shots), "--format", "folder", "--out", str(photo / "eval"),
                 "--weights", str(random_weights)]) == 2
    assert capsys.readouterr().err == f"msfer evaluate: error: cannot write {photo / 'eval'}: {photo} is a file, " \
                                      "not a folder\n"
    assert digests(shots) == before


def test_an_annotated_copy_that_cannot_be_written_fails_that_input_only(shots, random_weights, tmp_path, capsys):
    vis, out = tmp_path / "vis", tmp_path / "results.jsonl"
    vis.mkdir()
    (vis / "a").write_text("mine")  # where the folder of a/same.jpg's copy would go
    (vis / "clip.avi.msfer.mp4").mkdir()  # where the video's copy would go
    before = digests(shots)
    assert main(["predict", str(shots), "--weights", str(random_weights), "--save-vis", str(vis),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "2 input(s) could not be processed" in err
    assert f"{shots / 'a' / 'same.jpg'}: no annotated copy: cannot write {vis / 'a' / 'same.jpg.msfer.jpg'}: " \
           f"{vis / 'a'} is a file, not a folder" in err
    assert f"{shots / 'clip.avi'}: no annotated copy: cannot write {vis / 'clip.avi.msfer.mp4'}: it is a folder" in err
    records = {os.path.relpath(record["source"], shots): record for record in jsonl(out)}
    assert sorted(name for name, record in records.items() if "error" in record) == ["a/same.jpg", "clip.avi"]
    assert sorted(name for name, record in records.items() if "faces" in record) == \
        ["b/same.jpg", "holiday.jpg", "holiday.png", "selfie.jpg"]  # one record each: no frames before the error
    assert sorted(os.path.relpath(name, vis) for name in digests(vis)) == \
        ["a", "b/same.jpg.msfer.jpg", "holiday.jpg.msfer.jpg", "holiday.png.msfer.jpg", "selfie.jpg.msfer.jpg"]
    assert (vis / "a").read_text() == "mine" and not any((vis / "clip.avi.msfer.mp4").iterdir())
    assert digests(shots) == before
