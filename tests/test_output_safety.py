"""What a run of msfer does to its output when it is not alone: one writer per output, a full disk, a resumed
run's exit status and summary, and names with control characters."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from small_filesystem import SOURCE, msfer_command

from msfer.cli import main


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")]),
            "PYTHONIOENCODING": "utf-8"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut) -> Path:
    """20 photos of a face, each a little different."""
    folder = tmp_path_factory.mktemp("photos")
    for index in range(20):
        Image.fromarray(astronaut[index:, index:]).save(folder / f"photo{index:02d}.jpg", quality=90)
    return folder


def stopped_mid_run(command: list[str], out: Path) -> subprocess.Popen:
    """A real msfer run, started and stopped (SIGSTOP) once it has written its first record to ``out``."""
    run = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out.exists() and out.read_text(encoding="utf-8").count("\n") >= 1):
        assert run.poll() is None, f"the first run ended before it wrote a record: {run.stderr.read()}"
        assert time.monotonic() < deadline, "the first run wrote nothing in 300 s"
        time.sleep(0.005)
    os.kill(run.pid, signal.SIGSTOP)
    assert run.poll() is None, "the first run ended before it could be stopped: give it more photos"
    return run


def test_a_second_predict_on_the_same_out_is_refused_while_the_first_runs(photos, random_weights, tmp_path, capsys):
    out = tmp_path / "all.jsonl"
    first = stopped_mid_run(msfer_command("predict", str(photos), "--weights", str(random_weights), "--out", str(out),
                                          "--batch-size", "1"), out)
    try:
        written = out.read_bytes()
        # The same command started twice, a shard given the same file, a resume, an overwrite: all refused.
        for extra in ([], ["--num-shards", "2", "--shard-index", "1"], ["--resume"], ["--overwrite"]):
            assert main(["predict", str(photos), "--weights", str(random_weights), "--out", str(out), *extra]) == 2
            assert capsys.readouterr().err == (f"msfer predict: error: --out {out} is being written by another "
                                               "msfer run: wait for it to end, or give this run another --out\n")
            assert out.read_bytes() == written  # the refused run wrote nothing, not even a header
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    records = jsonl(out)  # every line whole
    assert sorted(Path(r["source"]).name for r in records) == sorted(p.name for p in photos.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["all.jsonl"]  # the lock file went with the run

    # Once it has ended, the rule for an existing --out applies again; --resume finds nothing left to do.
    assert main(["predict", str(photos), "--weights", str(random_weights), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["predict", str(photos), "--weights", str(random_weights), "--out", str(out), "--resume"]) == 0
    assert jsonl(out) == records


def holding(path: Path, folder: bool = False) -> subprocess.Popen:
    """Another process that holds ``path`` as a run of msfer does (msfer.files.sole_writer), until its stdin closes."""
    code = ("import sys\nfrom pathlib import Path\nfrom msfer.files import sole_writer\n"
            "with sole_writer(Path(sys.argv[1]), folder=sys.argv[2] == 'folder'):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path), "folder" if folder else "file"],
                              env=environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0


def test_annotate_and_report_refuse_an_output_another_run_holds(photos, random_weights, astronaut, tmp_path, capsys):
    from test_inference_predict import moving_face_frames, write_video

    dataset = tmp_path / "dataset" / "happy"
    dataset.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (dataset / name).write_bytes((photos / "photo00.jpg").read_bytes())
    regions = tmp_path / "regions.jsonl"
    holder = holding(regions)
    try:
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert main(["annotate", str(dataset.parent), "--format", "folder", "--out", str(regions), *extra]) == 2
            assert capsys.readouterr().err == (f"msfer annotate: error: --out {regions} is being written by another "
                                               "msfer run: wait for it to end, or give this run another --out\n")
        assert not regions.exists()
    finally:
        release(holder)
    assert main(["annotate", str(dataset.parent), "--format", "folder", "--out", str(regions)]) == 0
    assert len(jsonl(regions)) == 2
    capsys.readouterr()

    video, report = tmp_path / "clip.avi", tmp_path / "report"
    write_video(video, moving_face_frames(astronaut, 3))
    report.mkdir()
    holder = holding(report, folder=True)
    try:
        assert main(["report", str(video), "--out", str(report), "--weights", str(random_weights)]) == 2
        assert capsys.readouterr().err == (f"msfer report: error: --out {report} is being written by another msfer "
                                           "run: wait for it to end, or give this run another --out\n")
        assert not any(report.iterdir())
    finally:
        release(holder)
    assert main(["report", str(video), "--out", str(report), "--weights", str(random_weights)]) == 0
    assert (report / "report.html").is_file()


def test_an_empty_existing_out_is_an_existing_out(photos, random_weights, tmp_path, capsys):
    # Another run may have just made it: writing it anew would drop what that run writes next.
    out = tmp_path / "results.csv"
    out.touch()
    assert main(["predict", str(photos / "photo00.jpg"), "--weights", str(random_weights), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b""
    assert main(["predict", str(photos / "photo00.jpg"), "--weights", str(random_weights), "--out", str(out),
                 "--resume"]) == 0
    assert out.read_text().startswith("source,frame,time,face,")


def test_annotate_overwrite_onto_an_image_of_its_dataset_is_refused_before_anything_is_removed(photos, tmp_path,
                                                                                              capsys):
    dataset = tmp_path / "dataset" / "happy"
    dataset.mkdir(parents=True)
    photo = dataset / "a.jpg"
    photo.write_bytes((photos / "photo00.jpg").read_bytes())
    assert main(["annotate", str(dataset.parent), "--format", "folder", "--out", str(photo), "--overwrite"]) == 2
    assert "never writes onto a file it reads" in capsys.readouterr().err
    assert photo.read_bytes() == (photos / "photo00.jpg").read_bytes()


@pytest.mark.parametrize("case", ["annotated copies", "records"])
def test_a_full_disk_stops_predict_with_one_line_and_resume_finishes_every_photo(photos, random_weights, tmp_path,
                                                                                 case):
    """On a real file system that fills mid-run: with the annotated copies (each about 80 KB) on it beside a CSV,
    or only JSON Lines records (about 1.6 KB each, in one 4 KB page)."""
    import csv

    from small_filesystem import on_small_filesystem

    def records(path: Path) -> list[dict]:
        if path.suffix == ".jsonl":
            return jsonl(path)
        return list(csv.DictReader(path.open(encoding="utf-8", newline="")))

    copies = case == "annotated copies"
    disk, after = tmp_path / "disk", tmp_path / "after"
    out, vis = disk / ("results.csv" if copies else "results.jsonl"), disk / "vis"
    done = on_small_filesystem(disk, 250_000 if copies else 4096,
                               msfer_command("predict", str(photos), "--weights", str(random_weights), "--out",
                                             str(out), *(["--save-vis", str(vis)] if copies else [])), after)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    error = done.stderr.rstrip().splitlines()[-1]
    assert error.startswith(f"msfer predict: error: cannot write {vis if copies else out}")
    assert error.endswith(f": No space left on device; {out} keeps every input finished before it: make room and "
                          "run the same command with --resume to do the rest")
    # The file ends with whole records, none of them an error: the photo being done when the disk filled has none.
    assert (after / out.name).read_bytes().endswith(b"\r\n" if copies else b"}\n")
    kept = records(after / out.name)
    assert 0 < len(kept) < 20 and not any(record.get("error") for record in kept)
    assert not list(after.rglob(".msfer-*"))  # no temporary copy left on the full disk
    if copies:  # a copy for every photo with a record, and for none other
        assert sorted(p.name for p in (after / "vis").iterdir()) == \
            sorted(Path(row["source"]).name + ".msfer.jpg" for row in kept)

    # With room again, --resume does the rest: every photo once, with its face, no error.
    resumed = tmp_path / out.name
    resumed.write_bytes((after / out.name).read_bytes())
    assert main(["predict", str(photos), "--weights", str(random_weights), "--out", str(resumed), "--resume",
                 *(["--save-vis", str(after / "vis")] if copies else [])]) == 0
    final = records(resumed)
    assert sorted(Path(record["source"]).name for record in final) == sorted(p.name for p in photos.iterdir())
    assert not any(record.get("error") for record in final)
    if copies:
        assert len(list((after / "vis").iterdir())) == 20


def test_a_full_disk_stops_annotate_with_one_line_and_resume_finishes(photos, tmp_path):
    from small_filesystem import on_small_filesystem

    dataset = tmp_path / "dataset" / "happy"
    dataset.mkdir(parents=True)
    for photo in sorted(photos.iterdir()):
        (dataset / photo.name).write_bytes(photo.read_bytes())
    disk, after = tmp_path / "disk", tmp_path / "after"
    done = on_small_filesystem(disk, 4096, msfer_command("annotate", str(dataset.parent), "--format", "folder",
                                                         "--out", str(disk / "regions.jsonl"), "--batch-size", "2"),
                               after)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.rstrip().splitlines()[-1] == \
        f"msfer annotate: error: cannot write {disk / 'regions.jsonl'}: No space left on device"
    text = (after / "regions.jsonl").read_text()
    assert text.endswith("\n") and 0 < len(jsonl(after / "regions.jsonl")) < 20  # whole batches only
    regions = tmp_path / "regions.jsonl"
    regions.write_text(text)
    assert main(["annotate", str(dataset.parent), "--format", "folder", "--out", str(regions), "--resume"]) == 0
    assert sorted(Path(record["id"]).name for record in jsonl(regions)) == sorted(p.name for p in photos.iterdir())


def test_report_refuses_a_folder_it_cannot_write_before_processing_the_video(astronaut, random_weights, tmp_path):
    from small_filesystem import on_small_filesystem
    from test_inference_predict import moving_face_frames, write_video

    video = tmp_path / "clip.avi"
    write_video(video, moving_face_frames(astronaut, 3))
    prepared = tmp_path / "prepared"
    (prepared / "report").mkdir(parents=True)
    disk = tmp_path / "disk"
    for folder in (disk / "report", disk / "new" / "report"):  # an existing folder, and one to be made
        done = on_small_filesystem(disk, 65536, msfer_command("report", str(video), "--out", str(folder),
                                                              "--weights", str(random_weights)),
                                   tmp_path / "after", read_only=True, prepare=prepared)
        assert done.returncode == 2
        # The one line, and nothing before it: no progress of the video's frames.
        assert done.stderr == f"msfer report: error: cannot write {folder}: Read-only file system\n"


CONTROL_NAMES = ["cr\rin name.jpg", "new\nline.jpg", "tab\there.jpg", "esc\x1b[31mred.jpg"]


@pytest.fixture
def named(tmp_path, photos) -> Path:
    """Photos whose names hold control characters (Linux allows every byte but NUL and /), and a plain one."""
    folder = tmp_path / "named"
    folder.mkdir()
    for name in [*CONTROL_NAMES, "plain.jpg"]:
        (folder / name).write_bytes((photos / "photo00.jpg").read_bytes())
    return folder


def test_names_with_control_characters_never_reach_the_terminal_raw(named, random_weights, tmp_path, capsys):
    (named / "broken\nphoto.jpg").write_bytes(b"not a JPEG")
    out = tmp_path / "results.jsonl"
    assert main(["predict", str(named), str(named / "gone\rmissing.jpg"), "--weights", str(random_weights),
                 "--out", str(out)]) == 1
    shown = capsys.readouterr()
    for raw in ["cr\rin", "new\nline", "tab\there", "\x1b", "broken\nphoto", "gone\rmissing"]:
        assert raw not in shown.out and raw not in shown.err
    for escaped in ["cr\\rin name.jpg: ", "new\\nline.jpg: ", "tab\\there.jpg: ", "esc\\x1b[31mred.jpg: "]:
        assert escaped in shown.out  # the photo's line, on one line
    assert "broken\\nphoto.jpg" in shown.err and "gone\\rmissing.jpg" in shown.err
    # In the records too, each name is on one line, with its exact bytes beside it.
    records = jsonl(out)
    by_name = {os.fsdecode(bytes.fromhex(r["source_hex"])) if "source_hex" in r else r["source"]: r for r in records}
    assert set(by_name) == {str(named / name) for name in [*CONTROL_NAMES, "plain.jpg", "broken\nphoto.jpg"]} | \
        {str(named / "gone\rmissing.jpg")}
    assert by_name[str(named / "new\nline.jpg")]["source"] == str(named / "new\\nline.jpg")


def test_csv_resume_reads_a_carriage_return_inside_a_quoted_name_as_written(named, random_weights, tmp_path):
    import csv

    out = tmp_path / "results.csv"
    assert main(["predict", str(named), "--weights", str(random_weights), "--out", str(out)]) == 0
    written = out.read_bytes()
    assert main(["predict", str(named), "--weights", str(random_weights), "--out", str(out), "--resume"]) == 0
    assert out.read_bytes() == written  # nothing done again, nothing rewritten

    # A file whose names are written raw in quoted fields (as msfer wrote them before it escaped control characters,
    # or another writer of the same columns): a carriage return inside a name is part of it, not a line end.
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    raw = out.with_name("raw.csv")
    with raw.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, rows[0].keys())
        writer.writeheader()
        for row in rows:
            if row["source_hex"]:
                row = {**row, "source": os.fsdecode(bytes.fromhex(row["source_hex"])), "source_hex": ""}
            writer.writerow(row)
    before = raw.read_bytes()
    assert b'cr\rin name.jpg"' in before  # the raw carriage return, inside quotes
    assert main(["predict", str(named), "--weights", str(random_weights), "--out", str(raw), "--resume"]) == 0
    assert raw.read_bytes() == before  # every photo found in it: not done again, the file not altered


def test_resume_writes_a_missing_inputs_error_once_and_exits_1_while_the_output_holds_errors(photos, random_weights,
                                                                                             tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a JPEG")
    gone, out = tmp_path / "gone.jpg", tmp_path / "results.jsonl"
    run = ["predict", str(broken), str(photos / "photo00.jpg"), str(photos / "photo01.jpg"), str(gone),
           "--weights", str(random_weights), "--out", str(out)]
    assert main(run) == 1
    complete = out.read_text()
    # Killed after the missing file's and the broken photo's error records and one photo's result.
    lines = complete.splitlines(keepends=True)
    assert [Path(json.loads(line)["source"]).name for line in lines] == ["gone.jpg", "broken.jpg", "photo00.jpg",
                                                                         "photo01.jpg"]
    out.write_text("".join(lines[:3]))
    capsys.readouterr()
    for _ in range(3):  # resumed, and resumed again with nothing left to do
        assert main([*run, "--resume"]) == 1  # the output holds two errors, whichever run wrote them
        err = capsys.readouterr().err
        assert "also holds the error records of 2 input(s) from before this run" in err
        assert "gone.jpg: no such file" in err  # still said, but not written again
        assert sorted(Path(r["source"]).name for r in jsonl(out)) == ["broken.jpg", "gone.jpg", "photo00.jpg",
                                                                      "photo01.jpg"]
    assert out.read_text() == complete


def test_every_run_with_out_ends_with_one_closing_line(photos, random_weights, astronaut, tmp_path, capsys,
                                                       monkeypatch):
    from test_inference_predict import moving_face_frames, write_video

    import msfer.inference.predict

    monkeypatch.setattr(msfer.inference.predict, "ECHO_LIMIT", 5)  # a bulk run: no line per photo
    video = tmp_path / "clip.avi"
    write_video(video, moving_face_frames(astronaut, 4))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a JPEG")
    out = tmp_path / "results.jsonl"
    capsys.readouterr()
    assert main(["predict", str(photos), str(video), str(broken), "--weights", str(random_weights),
                 "--out", str(out)]) == 1
    shown = capsys.readouterr().out.splitlines()
    records = jsonl(out)
    faces = sum(len(r.get("faces", [])) for r in records)
    assert faces >= 20 + 4
    assert shown == [f"22 inputs, 4 video frames, {faces} faces, 1 error -> {out}"]  # the one line, and only it

    # Resumed: the whole file, and what this run added.
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:10]))
    assert main(["predict", str(photos), str(video), str(broken), "--weights", str(random_weights),
                 "--out", str(out), "--resume"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == f"22 inputs (12 in this run), 4 video frames, {faces} faces, " \
                                                      f"1 error -> {out}"

    report = tmp_path / "report"
    assert main(["report", str(video), "--out", str(report), "--weights", str(random_weights)]) == 0
    frames = jsonl(report / "frames.jsonl")
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"1 input, 4 video frames, {sum(len(f['faces']) for f in frames)} faces, 0 errors -> {report / 'report.html'}"

    dataset = tmp_path / "dataset" / "happy"
    dataset.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (dataset / name).write_bytes((photos / "photo00.jpg").read_bytes())
    (dataset / "c.jpg").write_bytes(b"not a JPEG")
    regions = tmp_path / "regions.jsonl"
    assert main(["annotate", str(dataset.parent), "--format", "folder", "--out", str(regions)]) == 0
    found = sum(record["faces"] or 0 for record in jsonl(regions) if record["status"] != "unreadable")
    assert capsys.readouterr().out.splitlines()[-1] == f"3 inputs, {found} faces, 1 error -> {regions}"


def test_a_resumed_run_exits_1_for_an_error_record_written_before_the_kill(photos, random_weights, tmp_path, capsys):
    broken, out = tmp_path / "broken.jpg", tmp_path / "results.csv"
    broken.write_bytes(b"not a JPEG")
    run = ["predict", str(broken), str(photos / "photo00.jpg"), "--weights", str(random_weights), "--out", str(out)]
    assert main(run) == 1
    header, error_row, _ = out.read_bytes().split(b"\r\n", 2)
    out.write_bytes(header + b"\r\n" + error_row + b"\r\n")  # killed after the broken photo's record
    capsys.readouterr()
    assert main([*run, "--resume"]) == 1  # this run's photo was fine; the file's broken one is not
    captured = capsys.readouterr()
    assert "could not be processed" not in captured.err
    assert f"{out} also holds the error records of 1 input(s) from before this run" in captured.err
    assert captured.out.splitlines()[-1] == f"2 inputs (1 in this run), 1 face, 1 error -> {out}"


def test_an_outputs_lock_file_is_no_input_of_a_run_over_its_folder(tmp_path, astronaut):
    from msfer.files import sole_writer
    from msfer.inference.predict import collect_inputs

    Image.fromarray(astronaut).save(tmp_path / "a.jpg")
    with sole_writer(tmp_path / "results.jsonl"):
        found = collect_inputs([tmp_path])
    assert [item.path.name for item in found.items] == ["a.jpg"]
    assert found.skipped == []  # the hidden lock file beside --out is neither processed nor reported


def test_a_full_disk_while_writing_an_annotated_video_stops_the_run_instead_of_failing_the_video(astronaut):
    from msfer.files import DiskFullError
    from msfer.inference.predict import _write_annotated
    from msfer.inference.video import VideoFrame

    class FullDisk:  # the annotated-video writer on a full file system
        def write(self, rgb, seconds):
            raise DiskFullError("cannot write v.msfer.mp4: No space left on device")

    with pytest.raises(DiskFullError):  # not the per-input MsferError that --resume would never retry
        _write_annotated(FullDisk(), VideoFrame(3, 0.1, astronaut, [], True), 0.1, Path("v.mp4"))


def test_a_yaml_error_is_one_line_naming_where(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("sets:\n  - name: a\n    name: b\n")
    assert main(["benchmark", str(suite)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "\\n" not in error
    assert error.endswith("the key 'name' is given twice in one mapping at line 3, column 5")
