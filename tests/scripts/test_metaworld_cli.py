"""The command-line entry points end to end, with worker processes (slow: spawn start-up)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(*args):
  env = dict(os.environ, MUJOCO_GL="egl")
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)


@pytest.mark.slow
def test_make_dataset_script_with_two_workers(tmp_path):
  proc = _run("scripts/make_metaworld_dataset.py", "--tasks=reach-v3,drawer-close-v3",
              "--episodes_per_task=3", "--resolution=32", f"--out={tmp_path}",
              "--video_episodes_per_task=2", "--video_tasks=button-press-v3", "--num_workers=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "episodes/min" in proc.stdout
  demos = tfds.builder_from_directory(str(tmp_path / "metaworld_demos" / "1.0.0"))
  assert demos.info.splits["train"].num_examples == 4 and demos.info.splits["val"].num_examples == 2
  video = tfds.builder_from_directory(str(tmp_path / "metaworld_video" / "1.0.0"))
  assert video.as_data_source("train")[0]["episode_metadata"]["task"] == b"button-press-v3"


@pytest.mark.slow
def test_eval_script(tmp_path):
  proc = _run("experiments/eval.py", "--policy=expert", "--tasks=drawer-close-v3", "--episodes=3",
              "--num_workers=2", "--resolution=32", f"--out={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["mean"]["success_rate"] == 1.0
  proc = _run("experiments/eval.py", "--tasks=drawer-clos-v3")
  assert proc.returncode != 0 and "valid v3 tasks" in proc.stderr
  proc = _run("experiments/eval.py", "--policy=checkpoint")
  assert proc.returncode != 0 and "--workdir" in proc.stderr
