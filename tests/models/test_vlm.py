"""The VLM (issue 13 stage 2): image-text pairs, the prefix-LM mask, learning to name a task from
the image, and the stage-1 -> stage-2 hand-off restoring exactly the language model's parameters.
Episodes are made in memory (two tasks whose frames differ in colour); the corpus in tmp_path."""

import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import vlm as vlm_configs
from tests.models.test_lm import DOCS, VOCAB, fit, tiny_config as lm_tiny_config
from wam_jax.data import image_text, pipeline, rlds, text
from wam_jax.models import registry
from wam_jax.models.families import vlm
from wam_jax.training import checkpoint as ckpt_lib
from wam_jax.training import trainer

TASKS = ("open the drawer", "press the button")
S, L = 16, 40


class FakeReader:
  """Episodes i: task i % 2, frames a flat colour per task (red / blue) with noise."""

  def __init__(self, n, seed=0):
    self.n, self.seed = n, seed

  def __len__(self):
    return self.n

  def decode(self, i, *, cameras=(), image_size=0):
    rng = np.random.default_rng(self.seed * 1000 + i)
    t = 12
    base = np.array([200, 30, 30] if i % 2 == 0 else [30, 30, 200], np.float32)
    frames = np.clip(base + rng.normal(0, 20, (t, image_size, image_size, 3)), 0, 255).astype(np.uint8)
    return rlds.Episode(frames={"primary": frames}, proprio=np.zeros((t, 4), np.float32), actions=None,
                        instruction=TASKS[i % 2])


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("text") / "prepared"
  text.prepare(DOCS + [("corpus/texts/robot.txt", " ".join(TASKS) * 4)], out, vocab_size=VOCAB, seq_len=32,
               val_match=["doc_5"], log=lambda s: None)
  return out


@pytest.fixture(scope="module")
def pairs_dir(corpus_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("pairs") / "image_text"
  image_text.prepare({"train": [("fake", FakeReader(8), "primary")], "val": [("fake", FakeReader(4, 1), "primary")]},
                     corpus_dir / "tokenizer.json", out, image_size=S, text_len=L, frames_per_episode=3,
                     log=lambda s: None)
  return out


def tiny_vlm_config(pairs_dir=None, vocab_size=VOCAB):
  cfg = vlm_configs.get_config("tiny")
  cfg.model.update(width=32, depth=2, num_heads=2, mlp_dim=64)
  cfg.model.vision.update(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8)
  cfg.data.update(image_size=S, text_len=L, vocab_size=vocab_size, text_dir=str(pairs_dir or ""))
  cfg.train.init_from = ""
  return cfg


def build_and_init(cfg, batch, seed=0):
  model = registry.build_model(cfg, num_datasets=1)
  return model, nn.unbox(jax.jit(lambda b: registry.init_params(model, jax.random.key(seed), b))(batch))


def one_batch(pairs_dir, split="train", batch_size=6):
  cfg = tiny_vlm_config(pairs_dir, json.loads((pairs_dir / "meta.json").read_text())["vocab_size"])
  data = pipeline.make_pipeline(cfg.data, split=split, batch_size=batch_size, seed=0, train=False)
  return cfg, data, {k: jnp.asarray(v) for k, v in next(data.iterator).items()}


def test_prefix_lm_mask():
  m = np.asarray(vlm.prefix_lm_mask(3, 4, jnp.array([4, 2])))
  assert m.shape == (2, 7, 7)
  assert m[:, :3, :3].all() and not m[:, :3, 3:].any()           # image sees image only
  assert m[0, 3:, :3].all()                                      # text sees the whole image
  np.testing.assert_array_equal(m[0, 3:, 3:], np.tril(np.ones((4, 4), bool)))  # causal text
  assert not m[1, :, 5:].any()                                   # padding keys never seen


def test_prepared_pairs_read_back_with_their_answers(pairs_dir):
  meta = json.loads((pairs_dir / "meta.json").read_text())
  assert meta["splits"]["train"]["by_kind"] == {"caption": 24, "progress": 24}
  assert not list(pairs_dir.parent.glob("*.tmp-*"))
  _, data, batch = one_batch(pairs_dir)
  chex.assert_shape(batch["image"], (6, S, S, 3))
  chex.assert_shape(batch["tokens"], (6, L))
  for i in range(6):
    start, length = int(batch["answer_start"][i]), int(batch["text_length"][i])
    answer = data.tokenizer.decode(np.asarray(batch["tokens"][i, start:length - 1])).strip()
    kind = image_text.KINDS[int(batch["kind"][i])]
    assert int(batch["tokens"][i, length - 1]) == text.EOS_ID
    assert answer in (TASKS if kind == "caption" else image_text.PROGRESS)
    assert data.tokenizer.decode(np.asarray(batch["tokens"][i, :start])) == image_text.PROMPTS[kind]


def test_too_long_answer_fails_naming_the_field(corpus_dir):
  tok = text.TextTokenizer.load(corpus_dir / "tokenizer.json")
  with pytest.raises(ValueError, match="data.text_len=8"):
    image_text.make_example(tok, "caption", "pick up the puck and place it at the goal", 8)


def test_text_sees_the_image_and_earlier_text_only(pairs_dir):
  cfg, _, batch = one_batch(pairs_dir)
  model, params = build_and_init(cfg, batch)
  hidden = jax.jit(lambda b: model.apply({"params": params}, b["image"][:, None], b["tokens"], b["text_length"],
                                         False, method="prefix_hidden")[0])
  h = hidden(batch)
  later = dict(batch, tokens=batch["tokens"].at[:, 10:].set(5))
  np.testing.assert_allclose(hidden(later)[:, :4 + 10], h[:, :4 + 10], atol=1e-5)  # 4 image tokens
  other_image = dict(batch, image=255 - batch["image"])
  assert np.abs(hidden(other_image)[:, 4:] - h[:, 4:]).max() > 1e-3


def test_learns_to_name_the_task_from_the_image(pairs_dir):
  """Both tasks share the prompt: only the image tells the captions apart. After training on the
  train split, every held-out caption is exactly right."""
  cfg, _, batch = one_batch(pairs_dir, batch_size=24)
  _, _, val = one_batch(pairs_dir, split="val", batch_size=24)
  model, params = build_and_init(cfg, batch)
  params, losses = fit(model, params, batch, steps=40, learning_rate=3e-3)
  assert losses[-1] < 0.2 * losses[0], losses
  _, metrics = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False))(params, val)
  assert float(metrics["caption_count"]) == 12
  assert float(metrics["caption_accuracy"]) == 1.0, metrics


@pytest.fixture(scope="module")
def lm_run(corpus_dir, tmp_path_factory):
  """A one-step stage-1 run on the corpus: (its config, its workdir)."""
  cfg = lm_tiny_config(vocab_size=json.loads((corpus_dir / "meta.json").read_text())["vocab_size"])
  cfg.data.text_dir = str(corpus_dir)
  cfg.train.update(steps=1, batch_size=2, warmup_steps=1, log_every=1, val_every=0, ckpt_every=1,
                   matmul_peak_gflops=100.0)
  cfg.mesh.shape = (1, 1, 1)
  workdir = tmp_path_factory.mktemp("lm_run")
  trainer.train(cfg, workdir, devices=jax.devices()[:1])
  return cfg, workdir


def saved_lm_params(lm_run):
  cfg, workdir = lm_run
  model = registry.build_model(cfg, num_datasets=1)
  fresh = nn.unbox(registry.init_params(model, jax.random.key(1), {
      "tokens": jnp.zeros((1, 33), jnp.int32), "segment_ids": jnp.ones((1, 33), jnp.int32)}))
  return jax.device_get(ckpt_lib.load_params_into(workdir, fresh))


def test_stage_1_to_stage_2_hand_off_restores_exactly_the_language_model(lm_run, pairs_dir, tmp_path):
  _, lm_dir = lm_run
  lm_saved = saved_lm_params(lm_run)
  cfg, _, batch = one_batch(pairs_dir)
  _, fresh = build_and_init(cfg, batch, seed=5)
  loaded = jax.device_get(ckpt_lib.load_params_into(lm_dir, fresh))
  assert set(loaded) == {"embed", "backbone", "vision"}
  chex.assert_trees_all_close(loaded["backbone"], lm_saved["backbone"])
  chex.assert_trees_all_close(loaded["embed"], lm_saved["embed"])
  chex.assert_trees_all_close(loaded["vision"], jax.device_get(fresh["vision"]))  # the ViT stays fresh
  assert np.abs(loaded["embed"] - np.asarray(fresh["embed"])).max() > 1e-3         # the LM's table, not init
  # The same hand-off through the trainer: stage 2 runs from the stage-1 run.
  cfg.train.update(steps=1, batch_size=4, warmup_steps=1, log_every=1, val_every=1, val_batches=1, ckpt_every=1,
                   matmul_peak_gflops=100.0, init_from=str(lm_dir))
  cfg.mesh.shape = (1, 1, 1)
  result = trainer.train(cfg, tmp_path / "vlm", devices=jax.devices()[:1])
  assert result["step"] == 1 and np.isfinite(result["val_caption_nll"])


def test_path_map_moves_a_subtree_and_drops_the_rest(lm_run):
  """init_from_map='backbone/=vlm/backbone/': only the renamed subtree lands; nothing else does."""
  assert ckpt_lib.parse_path_map("=vlm/, a/b=c/") == (("", "vlm/"), ("a/b", "c/"))
  with pytest.raises(ValueError, match="init_from_map"):
    ckpt_lib.parse_path_map("backbone")
  saved = saved_lm_params(lm_run)
  target = {"vlm": {"backbone": jax.tree.map(jnp.zeros_like, saved["backbone"]),
                    "embed": jnp.zeros_like(saved["embed"])}}
  moved = jax.device_get(ckpt_lib.load_params_into(lm_run[1], target, path_map="backbone/=vlm/backbone/"))
  chex.assert_trees_all_close(moved["vlm"]["backbone"], saved["backbone"])
  assert not np.any(moved["vlm"]["embed"])  # not named by the map: left as it was


def test_stage_2_to_stage_3_hand_off_puts_the_vlm_under_vlm(lm_run, pairs_dir, tmp_path):
  """init_from=<stage-2 run>, init_from_map='=vlm/': the hybrid's vlm/ subtree is the VLM's
  saved parameters; the world module and the action expert keep their fresh values."""
  from experiments.configs import hybrid as hybrid_configs
  from wam_jax.data import fake_batch
  cfg, _, batch = one_batch(pairs_dir)
  cfg.train.update(steps=1, batch_size=4, warmup_steps=1, log_every=1, val_every=0, ckpt_every=1,
                   matmul_peak_gflops=100.0)
  cfg.mesh.shape = (1, 1, 1)
  trainer.train(cfg, tmp_path / "vlm", devices=jax.devices()[:1])
  _, vlm_fresh = build_and_init(cfg, batch, seed=3)
  vlm_saved = jax.device_get(ckpt_lib.load_params_into(tmp_path / "vlm", vlm_fresh))
  hcfg = hybrid_configs.get_config("tiny")
  hcfg.model.vlm = cfg.model.copy_and_resolve_references()
  hcfg.model.vlm.update(vocab_size=cfg.data.vocab_size, scan=False)
  hcfg.model.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  hcfg.model.expert.update(width=16, mlp_dim=32)
  hcfg.data.update(text_tokenizer="", image_size=S, max_text_len=8, action_horizon=4)
  hbatch = {k: jnp.asarray(v) for k, v in fake_batch.make_batch(hcfg, 2).items()}
  _, fresh = build_and_init(hcfg, hbatch, seed=4)
  loaded = jax.device_get(ckpt_lib.load_params_into(tmp_path / "vlm", fresh, path_map="=vlm/"))
  chex.assert_trees_all_close(loaded["vlm"], vlm_saved)
  rest = lambda t: {k: v for k, v in t.items() if k != "vlm"}  # noqa: E731
  chex.assert_trees_all_close(rest(loaded), rest(jax.device_get(fresh)))
