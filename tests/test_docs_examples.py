"""Every shell and Python example in docs/*.md and README.md runs as written.

Each page's examples run in order (a later one may read what an earlier one wrote) in a fresh
folder holding the files the pages name: ``photo.jpg``, ``holiday/``, ``clip.mp4``,
``interview.mp4`` and the dataset ``faces/``. An example that cannot run there (it needs a real
dataset, a webcam, a GPU, hours, or it serves until stopped) is preceded by the line
``<!-- not run: REASON -->``, which the reader sees in the page's source; nothing else skips one.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py", "python3"}
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->$")


@dataclass
class Example:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str  # "shell" or "python"
    code: str
    not_run: str | None  # the stated reason, or None: it runs


def examples(page: Path) -> list[Example]:
    """The shell and Python blocks of ``page``, with the not-run reason of each marked one."""
    found, lines = [], page.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
        language = fence.group(1).lower()
        kind = "shell" if language in SHELL else "python" if language in PYTHON else None
        if kind:
            marker = NOT_RUN.match(lines[index - 1].strip()) if index else None
            found.append(Example(page, index + 1, kind, "\n".join(lines[index + 1 : end]) + "\n",
                                 marker.group(1) if marker else None))
        index = end + 1
    return found


def test_every_not_run_marker_gives_a_reason_and_stands_right_before_an_example():
    for page in PAGES:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if "not run" in line and line.strip().startswith("<!--"):
                where = f"{page.name}:{number}"
                marker = NOT_RUN.match(line.strip())
                assert marker and marker.group(1), f"{where}: write it as <!-- not run: REASON -->"
                fence = FENCE.match(lines[number]) if number < len(lines) else None
                assert fence and fence.group(1).lower() in SHELL | PYTHON, \
                    f"{where}: a not-run marker must stand on the line right before a bash or python block"


def test_the_readme_keeps_the_test_command_that_ci_runs():
    # .ci/run runs the README's test command; the two must not drift apart.
    command = "bash scripts/install.sh --dev && .venv/bin/python -m pytest -q"
    assert command in (ROOT / "README.md").read_text()
    assert command in (ROOT / ".ci" / "run").read_text()


@pytest.fixture(scope="module")
def workspace_template(tmp_path_factory) -> Path:
    """The files the examples name, made from the bundled sample photo (a few hundred kB in all)."""
    av = pytest.importorskip("av")
    root = tmp_path_factory.mktemp("docs_workspace")
    photo = Image.open(ROOT / "src" / "msfer" / "samples" / "astronaut.jpg").convert("RGB")
    photo.save(root / "photo.jpg", quality=95)
    (root / "holiday").mkdir()
    photo.save(root / "holiday" / "beach.jpg", quality=90)
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((384, 384)).save(root / "holiday" / "mirror.png")
    # Videos: 10 frames of 320 x 240 with the face drifting right, H.264 at 10 frames/s.
    head = np.asarray(photo.crop((100, 0, 360, 300)).resize((130, 150)))
    with av.open(str(root / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for k in range(10):
            frame = np.full((240, 320, 3), 90, np.uint8)
            frame[40:190, 60 + 6 * k : 190 + 6 * k] = head
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    shutil.copy(root / "clip.mp4", root / "interview.mp4")
    # faces/: a folder dataset, <split>/<class>/*.jpg, whole photos with one face each.
    variants = {"happy": [photo, photo.rotate(8)], "neutral": [photo.convert("L").convert("RGB"), photo.rotate(-8)]}
    for split in ("train", "val"):
        for name, images in variants.items():
            (root / "faces" / split / name).mkdir(parents=True)
            for i, image in enumerate(images if split == "train" else images[:1]):
                image.resize((256, 256)).save(root / "faces" / split / name / f"{i}.jpg", quality=90)
    return root


def pages_with_runnable_examples() -> list[Path]:
    return [page for page in PAGES if any(e.not_run is None for e in examples(page))]


@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with_runnable_examples(), ids=lambda page: page.name)
def test_the_examples_of_a_page_run(page, workspace_template, tmp_path, monkeypatch):
    workspace = tmp_path / "work"
    shutil.copytree(workspace_template, workspace)
    monkeypatch.chdir(workspace)
    # `msfer` and `python` in a shell example are this environment's, as after scripts/install.sh.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MPLBACKEND": "Agg"}
    for example in examples(page):
        if example.not_run is not None:
            continue
        where = f"{page.relative_to(ROOT)}:{example.line}"
        if example.language == "shell":
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", example.code], cwd=workspace, env=env,
                                    capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, \
                f"{where} failed ({result.returncode}):\n{example.code}\n{result.stderr[-3000:]}"
        else:
            # In this process: the models' imports are paid once for every Python example.
            try:
                exec(compile(example.code, where, "exec"), {"__name__": "__main__"})
            except Exception as error:
                raise AssertionError(f"{where} failed: {error!r}\n{example.code}") from error
