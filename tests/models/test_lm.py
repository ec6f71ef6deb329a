"""The language model (issue 13 stage 1) and its text path: masks, RoPE, scan, tokenizer, packing,
the 1b shape, and a 2-step run whose checkpoint carries the tokenizer. No network: the corpus is
made in tmp_path."""

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import lm as lm_configs
from wam_jax.data import pipeline, text
from wam_jax.models import layers, registry
from wam_jax.models.families import lm
from wam_jax.training import checkpoint as ckpt_lib
from wam_jax.training import trainer

DOCS = [(f"corpus/texts/doc_{i}.txt", t) for i, t in enumerate([
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n",
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n" * 3,
    "Of Man's first disobedience, and the fruit\nOf that forbidden tree whose mortal taste\n" * 2,
    "Brought death into the World, and all our woe,\nWith loss of Eden, till one greater Man\n",
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 2,
    "Fair is foul, and foul is fair:\nHover through the fog and filthy air.\n",
])]
VOCAB = 320


def tiny_config(vocab_size=VOCAB, seq_len=32, **model):
  cfg = lm_configs.get_config("tiny")
  cfg.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, **model)
  cfg.data.update(vocab_size=vocab_size, seq_len=seq_len)
  return cfg


def build(cfg):
  return registry.build_model(cfg, num_datasets=1)


def init(model, batch):
  return nn.unbox(registry.init_params(model, jax.random.key(0), batch))


def random_batch(b=2, n=16, vocab=VOCAB, seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (b, n + 1), 2, vocab)
  return {"tokens": tokens, "segment_ids": jnp.ones((b, n + 1), jnp.int32)}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("text") / "prepared"
  text.prepare(DOCS, out, vocab_size=VOCAB, seq_len=32, val_match=["doc_5"], log=lambda s: None)
  return out


def test_shapes_and_loss():
  model = build(tiny_config())
  batch = random_batch()
  params = init(model, batch)
  logits = model.apply({"params": params}, batch["tokens"][:, :-1], method="logits")
  assert logits.shape == (2, 16, VOCAB) and logits.dtype == jnp.float32
  loss, metrics = model.apply({"params": params}, batch, train=False)
  assert np.isfinite(loss) and abs(float(loss) - np.log(VOCAB)) < 1.5
  assert float(metrics["tokens"]) == 2 * 16
  np.testing.assert_allclose(metrics["perplexity"], np.exp(loss), rtol=1e-5)


def test_future_tokens_do_not_change_earlier_logits():
  model = build(tiny_config())
  batch = random_batch()
  params = init(model, batch)
  a = batch["tokens"][:, :-1]
  b = a.at[:, 9:].set((a[:, 9:] + 7) % VOCAB)
  la, lb = (model.apply({"params": params}, t, method="logits") for t in (a, b))
  np.testing.assert_allclose(la[:, :9], lb[:, :9], atol=1e-5)
  assert np.abs(la[:, 9:] - lb[:, 9:]).max() > 1e-3


def test_packed_documents_do_not_attend_across_boundaries():
  """Segment 2 (positions 6..) sees nothing of segment 1; padding (0) is never scored."""
  model = build(tiny_config())
  batch = random_batch(b=1)
  params = init(model, batch)
  seg = jnp.array([[1] * 6 + [2] * 8 + [0] * 3])
  a = batch["tokens"]
  b = a.at[:, :6].set((a[:, :6] + 5) % VOCAB)
  la, lb = (model.apply({"params": params}, t[:, :-1], seg[:, :-1], method="logits") for t in (a, b))
  np.testing.assert_allclose(la[:, 6:14], lb[:, 6:14], atol=1e-5)
  _, metrics = model.apply({"params": params}, {"tokens": a, "segment_ids": seg}, train=False)
  assert float(metrics["tokens"]) == 5 + 7  # within-segment targets only


def fit(model, params, batch, *, steps: int, learning_rate: float):
  """``steps`` Adam steps on one fixed batch: (params, the loss before each step)."""
  tx = optax.adam(learning_rate)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    (loss, _), g = jax.value_and_grad(lambda p: model.apply({"params": p}, batch, train=True), has_aux=True)(params)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(params, updates), opt, loss

  losses = []
  for _ in range(steps):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  return params, losses


def test_loss_falls_on_a_tiny_batch():
  model = build(tiny_config())
  batch = random_batch(b=4, n=16)
  _, losses = fit(model, init(model, batch), batch, steps=40, learning_rate=1e-2)
  assert losses[-1] < 0.3 * losses[0], losses


def test_rope_scores_depend_only_on_relative_position():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))

  def score(n, m):
    qn = layers.rope(q, jnp.array([[n]]), 10_000.0)
    km = layers.rope(k, jnp.array([[m]]), 10_000.0)
    return float((qn * km).sum())

  for n, m in ((5, 2), (9, 9), (3, 11)):
    for shift in (1, 17, 250):
      np.testing.assert_allclose(score(n + shift, m + shift), score(n, m), rtol=1e-4, atol=1e-5)
  assert abs(score(5, 2) - score(5, 4)) > 1e-3
  np.testing.assert_allclose(jnp.linalg.norm(layers.rope(q, jnp.array([[7]]), 10_000.0)), jnp.linalg.norm(q),
                             rtol=1e-6)


def test_scan_matches_unrolled():
  batch = random_batch()
  unrolled = build(tiny_config())
  scanned = build(tiny_config(scan=True, remat="dots_saveable"))
  params = init(unrolled, batch)
  scanned_params = dict(params, backbone=layers.stack_blocks(params["backbone"], 2))
  assert jax.tree.structure(scanned_params) == jax.tree.structure(init(scanned, batch))
  grad = lambda m, p: jax.value_and_grad(lambda p: m.apply({"params": p}, batch, train=True)[0])(p)  # noqa: E731
  (la, ga), (lb, gb) = grad(unrolled, params), grad(scanned, scanned_params)
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  ga = dict(ga, backbone=layers.stack_blocks(ga["backbone"], 2))
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, atol=2e-5)


def test_default_transformer_keeps_its_parameter_paths():
  """The options default to the original block: LayerNorm (scale + bias), GELU wi [D, F], block_i."""
  x = jnp.zeros((1, 3, 8))
  params = layers.Transformer(2, 2, 16).init(jax.random.key(0), x, train=False)["params"]
  assert sorted(params) == ["block_0", "block_1", "ln_final"]
  assert sorted(params["ln_final"]) == ["bias", "scale"]
  assert params["block_0"]["mlp"]["wi"]["kernel"].value.shape == (8, 16)


def test_tokenizer_round_trips_text_exactly():
  tok = text.TextTokenizer.train([t for _, t in DOCS], VOCAB)
  assert tok.vocab_size <= VOCAB
  for s in ("To be, or not to be", "  odd\tspacing\n\n and ünïcödé — “quotes” 🙂", "Zounds! 1623 A.D."):
    ids = tok.encode(s)
    assert ids.dtype == np.int32 and (ids >= 2).all()
    assert tok.decode(ids) == s
  again = text.tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
  np.testing.assert_array_equal(again.encode(DOCS[1][1]), tok.encode(DOCS[1][1]))


def test_packing_round_trips_documents():
  docs = [np.arange(2, 2 + n, dtype=np.int32) for n in (3, 10, 1, 7)]
  rows = list(text.pack(docs, row_len=8))
  assert all(t.shape == (8,) and s.shape == (8,) for t, s in rows)
  assert len(rows) == -(-sum(len(d) + 1 for d in docs) // 8)
  for got, want in zip(text.unpack(rows), docs):
    np.testing.assert_array_equal(got, want)
  t, s = rows[0]  # doc 0 (3 + EOS) then the start of doc 1
  np.testing.assert_array_equal(s, [1, 1, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(rows[1][1][:1], [1])  # doc 1 continues as the next row's segment 1
  assert (rows[-1][1][-1] == 0) and (rows[-1][0][-1] == text.PAD_ID)


def test_prepared_corpus_reads_back_through_the_pipeline(corpus_dir):
  meta = json.loads((corpus_dir / "meta.json").read_text())
  assert meta["splits"]["val"]["documents"] == ["corpus/texts/doc_5.txt"]
  assert not list(corpus_dir.parent.glob("*.tmp-*"))  # written atomically
  cfg = tiny_config(vocab_size=meta["vocab_size"])
  cfg.data.text_dir = str(corpus_dir)
  data = pipeline.make_pipeline(cfg.data, split="train", batch_size=1, seed=0, train=False)
  rows = [(b["tokens"][0], b["segment_ids"][0]) for b in data.iterator]
  assert len(rows) == meta["splits"]["train"]["rows"]
  decoded = [data.tokenizer.decode(d) for d in text.unpack(rows)]
  assert decoded == [t for n, t in DOCS if not n.endswith("doc_5.txt")]
  with pytest.raises(ValueError, match="config.data.seq_len=64"):
    cfg.data.seq_len = 64
    pipeline.make_pipeline(cfg.data, split="train", batch_size=1, seed=0, train=False)


def test_1b_preset_has_about_1_2b_non_embedding_params():
  cfg = lm_configs.get_config("1b")
  model = build(cfg)
  batch = {k: jax.ShapeDtypeStruct((1,) + v.shape[1:], v.dtype)
           for k, v in trainer.abstract_batch(cfg.data, cfg.train.batch_size).items()}
  shapes = jax.eval_shape(lambda b: init(model, b), batch)
  n = lm.non_embedding_params(shapes)
  total = sum(x.size for x in jax.tree.leaves(shapes))
  print(f"lm.py:1b: {n / 1e9:.3f}B non-embedding params, {total / 1e9:.3f}B total "
        f"(vocab {cfg.data.vocab_size}, seq_len {cfg.data.seq_len})")
  assert 1.15e9 < n < 1.3e9
  assert shapes["backbone"]["blocks"]["block"]["mlp"]["wi"]["kernel"].shape == (24, 2048, 2, 5632)


def test_two_step_run_saves_the_tokenizer_with_the_checkpoint(corpus_dir, tmp_path):
  meta = json.loads((corpus_dir / "meta.json").read_text())
  cfg = tiny_config(vocab_size=meta["vocab_size"])
  cfg.data.text_dir = str(corpus_dir)
  cfg.train.update(steps=2, batch_size=2, warmup_steps=1, log_every=1, val_every=2, val_batches=2,
                   ckpt_every=2, matmul_peak_gflops=100.0)
  cfg.mesh.shape = (1, 1, 1)
  result = trainer.train(cfg, tmp_path, devices=jax.devices()[:1])
  assert result["step"] == 2 and np.isfinite(result["val_nll"])
  assets, _ = ckpt_lib.Checkpointer(tmp_path / "checkpoints", read_only=True).restore_assets()
  restored = text.tokenizer_from_dict(assets["tokenizer"])
  assert restored.to_json() == (corpus_dir / "tokenizer.json").read_text()
  assert (tmp_path / "tokenizer.json").read_text() == restored.to_json()
  assert restored.decode(restored.encode(DOCS[0][1])) == DOCS[0][1]


def test_unknown_data_kind_fails_naming_the_field():
  cfg = tiny_config()
  cfg.data.kind = "audio"
  with pytest.raises(ValueError, match="config.data.kind"):
    trainer.check_config(cfg, 1)


@pytest.mark.slow  # ~1 min: two short trainings
def test_sharded_scanned_step_matches_single_device():
  """FSDP x tensor over 8 devices with scan + remat: every parameter's logical names map to the mesh."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 host devices (tests/conftest.py sets XLA_FLAGS)")
  from tests import sharded_steps
  cfg = tiny_config(scan=True, remat="full", tie_embeddings=False)
  cfg.train.update(batch_size=8, warmup_steps=1, compute_dtype="float32")
  batches = [jax.device_get(random_batch(b=8, n=32, seed=i)) for i in range(2)]
  state = sharded_steps.assert_sharded_matches_single_device(cfg, batches, shape=(2, 2, 2))
  wi = state.params["backbone"]["blocks"]["block"]["mlp"]["wi"]["kernel"]
  assert wi.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None, "tensor")


def test_flops_with_scanned_layers_count_every_layer():
  """XLA's cost analysis counts a scan's body once; the trainer counts the unrolled step."""
  from wam_jax.training import sharding
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])

  def flops(scan):
    cfg = tiny_config(scan=scan)
    cfg.train.batch_size = 4
    spec = trainer.abstract_batch(cfg.data, 4)
    run = trainer.setup_training(cfg, mesh, spec, num_datasets=1)
    return run.step_flops(run.train_step.lower(run.abstract_state, spec).compile(), spec)

  np.testing.assert_allclose(flops(True), flops(False), rtol=0.05)
