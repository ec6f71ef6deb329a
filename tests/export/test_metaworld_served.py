"""Done-when of issue 14, end to end (slow): a VLA trained on the embedded MetaWorld sample,
exported, served by a process that loads no model code, and evaluated closed loop through the
server, gives exactly the local checkpoint policy's per-episode results on the same seeds."""

import functools

import jax
import pytest

from tests.export.conftest import Server
from wam_jax import inference
from wam_jax.export import client, writer

TASKS = ("drawer-close-v3", "drawer-open-v3")


@pytest.mark.slow
def test_served_export_evaluates_exactly_like_the_checkpoint(tmp_path):
  from experiments.configs import vla_baseline
  from wam_jax.evaluation import evaluate
  from wam_jax.training import trainer
  cfg = vla_baseline.get_config("tiny")  # README command 1's recipe, fewer steps.
  cfg.train.steps = 200
  cfg.eval.at_end = False
  cfg.mesh.shape = (1, 1, 1)
  trainer.train(cfg, tmp_path / "run", devices=jax.devices()[:1])
  kwargs = dict(episodes_per_task=3, max_steps=120, execute_steps=4, num_workers=1, num_videos=0,
                **evaluate.render_settings(cfg.data), log=lambda s: None)
  local = evaluate.evaluate(functools.partial(inference.load_policy, tmp_path / "run"), TASKS, **kwargs)

  writer.export_policy(tmp_path / "run", tmp_path / "export", log=lambda s: None)
  server = Server(tmp_path / "export", tmp_path)
  try:
    assert client.health(server.address)["model_code_loaded"] is False
    remote = evaluate.evaluate(functools.partial(client.RemotePolicy, server.address), TASKS, **kwargs)
    assert client.health(server.address)["model_code_loaded"] is False
  finally:
    server.stop()
  assert remote["episodes"] == local["episodes"]  # task, seed, success, length, frozen fraction
  assert len(local["episodes"]) == len(TASKS) * 3
