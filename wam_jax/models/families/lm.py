"""Family 4, stage 1: a decoder-only language model on the shared transformer.

Token embedding -> causal ``layers.Transformer`` (RoPE, RMSNorm, SwiGLU by
default: ``config.model`` fields) -> logits through the transposed embedding
(tied; ``tie_embeddings=False`` adds an ``unembed`` [D, V] matrix).

Batches are packed rows (``wam_jax.data.text``): ``tokens`` and
``segment_ids`` int32 [B, N + 1]. Inputs are row[:-1], targets row[1:]. A
position attends to earlier positions of its own segment only, and is scored
only if its target is in the same segment (so the first token of a document
is never predicted from the previous document, and padding is never scored).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from wam_jax.models import layers


class LanguageModel(nn.Module):
  config: object        # config.model
  data_config: object   # config.data (vocab_size, seq_len)
  num_datasets: int = 1
  vocab_size: int = 0   # the robot families' byte vocabulary: unused, data.vocab_size is the LM's
  dot_general: layers.DotGeneral = None

  @staticmethod
  def check_config(model_cfg) -> None:
    for field, value, known in (("norm", model_cfg.norm, layers.NORMS),
                                ("activation", model_cfg.activation, layers.ACTIVATIONS),
                                ("remat", model_cfg.remat, tuple(layers.REMAT_POLICIES))):
      if value not in known:
        raise ValueError(f"config.model.{field}={value!r}; known: {known}")
    if model_cfg.width % model_cfg.num_heads:
      raise ValueError(f"config.model.width={model_cfg.width} is not divisible by "
                       f"config.model.num_heads={model_cfg.num_heads}")

  def setup(self):
    cfg = self.config
    v = int(self.data_config.vocab_size)
    self.embed = self.param("embed", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
                            (v, cfg.width))
    self.backbone = layers.Transformer(
        cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.dropout, self.dot_general, norm=cfg.norm,
        activation=cfg.activation, rope_max_wavelength=cfg.rope_max_wavelength, scan=cfg.scan, remat=cfg.remat)
    if not cfg.tie_embeddings:
      self.unembed = layers.logical_dense(v, ("embed", "vocab"), dot_general=self.dot_general, use_bias=False)

  def embed_tokens(self, tokens_BN):
    """Token ids [B, N] -> embeddings [B, N, D] (the unit-variance table)."""
    x_BND = jnp.take(self.embed, tokens_BN, axis=0)
    return nn.with_logical_constraint(x_BND, ("batch", "length", "embed"))

  def unembed_hidden(self, x_BND):
    """Final hidden states [B, N, D] -> float32 logits [B, N, V]."""
    if self.config.tie_embeddings:  # scaled so tied logits start O(1) with the unit-variance table
      dot = self.dot_general or jax.lax.dot_general
      b, n, d = x_BND.shape
      logits = dot(x_BND.reshape(b * n, d), self.embed, (((1,), (1,)), ((), ()))).reshape(b, n, -1)
      logits = logits / jnp.sqrt(d).astype(logits.dtype)
    else:
      logits = self.unembed(x_BND)
    return logits.astype(jnp.float32)

  def logits(self, tokens_BN, segment_ids_BN=None, train: bool = False):
    """Next-token logits float32 [B, N, V] for tokens [B, N] (segments: attention stays within each)."""
    mask_BNN = None
    if segment_ids_BN is not None:
      mask_BNN = segment_ids_BN[:, :, None] == segment_ids_BN[:, None, :]
    x_BND = self.backbone(self.embed_tokens(tokens_BN), mask_BNN, train=train, causal=True)
    return self.unembed_hidden(x_BND)

  def __call__(self, batch, train: bool = True):
    """Next-token cross-entropy over scored positions: (loss, metrics)."""
    tokens, segments = batch["tokens"], batch["segment_ids"]
    inputs_BN, targets_BN = tokens[:, :-1], tokens[:, 1:]
    seg_in, seg_tgt = segments[:, :-1], segments[:, 1:]
    weight_BN = ((seg_in == seg_tgt) & (seg_tgt > 0)).astype(jnp.float32)
    logits_BNV = self.logits(inputs_BN, seg_in, train)
    nll_BN = -jnp.take_along_axis(jax.nn.log_softmax(logits_BNV), targets_BN[..., None], axis=-1)[..., 0]
    count = weight_BN.sum()
    loss = (nll_BN * weight_BN).sum() / jnp.maximum(count, 1.0)
    correct = (logits_BNV.argmax(-1) == targets_BN).astype(jnp.float32)
    metrics = {"nll": loss, "perplexity": jnp.exp(loss),
               "accuracy": (correct * weight_BN).sum() / jnp.maximum(count, 1.0),
               "tokens": count, "loss_weight": count}
    return loss, metrics

  def predict_actions(self, batch):
    raise NotImplementedError("the language model predicts tokens, not actions (stage 1 of issue 13)")


def non_embedding_params(params) -> int:
  """Parameters outside the token embedding and the untied output matrix (the LM-size convention)."""
  flat = jax.tree_util.tree_leaves_with_path(params)
  return sum(leaf.size for path, leaf in flat
             if not any(getattr(k, "key", None) in ("embed", "unembed") for k in path[:1]))
