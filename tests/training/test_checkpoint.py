"""Checkpointer retention and atomicity, on a small pytree (no training)."""

import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.training import checkpoint as ckpt_lib


def _state(step):
  return {"w": jnp.full((4, 3), float(step)), "step": jnp.asarray(step, jnp.int32)}


def _abstract():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _state(0))


def test_keep_last_and_keep_every(tmp_path):
  ckpt = ckpt_lib.Checkpointer(tmp_path, keep_last=2, keep_every=3)
  for step in range(1, 8):
    ckpt.save(step, _state(step), None, {"note": step})
  ckpt.close()
  reader = ckpt_lib.Checkpointer(tmp_path, read_only=True)
  assert reader.all_steps() == [3, 6, 7]
  state, assets, step = reader.restore(_abstract())
  assert step == 7 and assets == {"note": 7}
  np.testing.assert_array_equal(state["w"], np.full((4, 3), 7.0))


def test_unfinished_save_is_not_a_checkpoint(tmp_path):
  ckpt = ckpt_lib.Checkpointer(tmp_path, keep_last=3)
  ckpt.save(1, _state(1), None, {})
  ckpt.close()
  # What a save killed mid-write leaves behind: an uncommitted temporary step directory.
  (tmp_path / "2.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
  reader = ckpt_lib.Checkpointer(tmp_path, read_only=True)
  state, _, step = reader.restore(_abstract())
  assert step == 1 and int(state["step"]) == 1


def test_empty_directory_restores_nothing(tmp_path):
  assert ckpt_lib.Checkpointer(tmp_path).restore(_abstract()) is None
