"""examples/slurm_predict.sh, run as two tasks of a Slurm job array would run it: each task predicts its own shard
into its own file, the shards together are every input once, and a resubmitted task goes on where it stopped."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "slurm_predict.sh"


def task(args: list[str], index: int | None, count: int = 2, extra: str = "") -> subprocess.CompletedProcess:
    """The script as Slurm starts array task ``index`` of ``count`` (None: outside an array)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MSFER_ARGS": extra, "SLURM_CPUS_PER_TASK": "1"}
    env.pop("SLURM_ARRAY_TASK_ID", None)
    if index is not None:
        env.update(SLURM_ARRAY_TASK_ID=str(index), SLURM_ARRAY_TASK_COUNT=str(count))
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut) -> Path:
    folder = tmp_path_factory.mktemp("slurm_inputs")
    for k in range(3):
        Image.fromarray(np.roll(astronaut, 8 * k, axis=1)).save(folder / f"photo{k}.jpg", quality=90)
    return folder


def sources(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return [row["source"] for row in csv.DictReader(handle)]


def test_two_array_tasks_split_the_inputs_and_a_rerun_resumes(photos, random_weights, tmp_path):
    out, weights = tmp_path / "results", f"--weights {random_weights}"
    for index in (0, 1):
        done = task([str(photos), str(out)], index, extra=weights)
        assert done.returncode == 0, done.stderr[-2000:]
    parts = [sources(out / f"part-{index}.csv") for index in (0, 1)]
    assert sorted(set(parts[0]) | set(parts[1])) == sorted(str(p) for p in photos.glob("*.jpg"))
    assert not set(parts[0]) & set(parts[1]) and parts[0] and parts[1]
    before = (out / "part-0.csv").read_bytes()
    again = task([str(photos), str(out)], 0, extra=weights)  # requeued: nothing left to do, nothing lost
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "part-0.csv").read_bytes() == before


def test_outside_a_job_array_or_without_arguments_it_says_how_to_run_it(tmp_path):
    usage = task([], 0)
    assert usage.returncode == 2 and "usage: sbatch --array=0-N" in usage.stderr
    alone = task([str(tmp_path), str(tmp_path / "out")], None)
    assert alone.returncode != 0 and "run this as a job array" in alone.stderr
    assert not (tmp_path / "out").exists()
    gap = task([str(tmp_path), str(tmp_path / "out")], 2, count=2)  # --array=1-2: task 2 of 2 tasks
    assert gap.returncode == 2 and "number the tasks from 0 without gaps (--array=0-1)" in gap.stderr
