"""Family 4, stage 2: a vision-language model = the stage-1 language model + a ViT and projector.

The sequence is the image's projected patch tokens, then the text (prompt,
answer, EOS; ``wam_jax.data.image_text``) as token embeddings of the language
model. Attention is prefix-LM: image tokens see each other (bidirectional),
text tokens see the whole image and the text before them. Rotary positions run
over the whole sequence. The loss is next-token cross-entropy on the answer and
its EOS only.

Parameters keep the language model's paths (``embed``, ``backbone/...``), so
``train.init_from=<stage-1 run>`` restores exactly those and leaves ``vision``
fresh (tested); stage 3 (``families/hybrid.py``) holds this module's
parameters under ``vlm/`` (``train.init_from_map='=vlm/'``).

Validation reports, per question kind (``image_text.KINDS``): ``<kind>_nll``
(the caption loss for ``caption``) and ``<kind>_accuracy``, the fraction of
examples whose every answer token is the argmax under teacher forcing (exactly:
greedy decoding would produce the answer), with ``<kind>_correct`` /
``<kind>_count`` so a ratio over batches is exact.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from wam_jax.data import image_text
from wam_jax.models import encoders
from wam_jax.models.families.lm import LanguageModel


class VisionLanguageModel(LanguageModel):

  @staticmethod
  def check_config(model_cfg) -> None:
    LanguageModel.check_config(model_cfg)
    v = model_cfg.vision
    if v.width % v.num_heads:
      raise ValueError(f"config.model.vision.width={v.width} is not divisible by "
                       f"config.model.vision.num_heads={v.num_heads}")

  def setup(self):
    super().setup()
    v = self.config.vision
    self.vision = encoders.VisionEncoder(v.width, v.depth, v.num_heads, v.mlp_dim, v.patch_size,
                                         self.config.width, self.dot_general)

  def prefix_hidden(self, images_BTHWC, tokens_BL, text_length_B, train: bool, return_kvs: bool = False):
    """Backbone outputs over [image tokens; text]: (hidden [B, I + L, D], image tokens I), and with
    ``return_kvs`` every layer's keys and values third (``layers.LayerKV``, [L, B, H, I + L, K] each:
    the hybrid's action expert attends to them)."""
    img_BID, _ = self.vision(images_BTHWC, train=train)
    i, l = img_BID.shape[1], tokens_BL.shape[1]
    x_BND = jnp.concatenate([img_BID, self.embed_tokens(tokens_BL)], axis=1)
    mask_BNN = prefix_lm_mask(i, l, text_length_B)
    if return_kvs:
      hidden, kvs = self.backbone(x_BND, mask_BNN, train=train, return_kvs=True)
      return hidden, i, kvs
    return self.backbone(x_BND, mask_BNN, train=train), i

  def __call__(self, batch, train: bool = True):
    """Answer-token cross-entropy: (loss, metrics)."""
    tokens = batch["tokens"]
    hidden, i = self.prefix_hidden(batch["image"][:, None], tokens, batch["text_length"], train)
    logits_BLV = self.unembed_hidden(hidden[:, i:-1])   # position j predicts token j + 1
    targets_BL = tokens[:, 1:]
    t = jnp.arange(1, tokens.shape[1])[None]
    weight_BL = ((t >= batch["answer_start"][:, None]) & (t < batch["text_length"][:, None])).astype(jnp.float32)
    nll_BL = -jnp.take_along_axis(jax.nn.log_softmax(logits_BLV), targets_BL[..., None], axis=-1)[..., 0]
    count = weight_BL.sum()
    loss = (nll_BL * weight_BL).sum() / jnp.maximum(count, 1.0)
    right_BL = logits_BLV.argmax(-1) == targets_BL
    exact_B = jnp.all(right_BL | (weight_BL == 0), axis=1).astype(jnp.float32)
    nll_B = (nll_BL * weight_BL).sum(1) / jnp.maximum(weight_BL.sum(1), 1.0)
    metrics = {"nll": loss, "perplexity": jnp.exp(loss), "answer_accuracy": exact_B.mean(),
               "token_accuracy": (right_BL * weight_BL).sum() / jnp.maximum(count, 1.0),
               "tokens": count, "loss_weight": count}
    for k, kind in enumerate(image_text.KINDS):
      is_k = (batch["kind"] == k).astype(jnp.float32)
      n = is_k.sum()
      metrics.update({f"{kind}_nll": (nll_B * is_k).sum() / jnp.maximum(n, 1.0),
                      f"{kind}_accuracy": (exact_B * is_k).sum() / jnp.maximum(n, 1.0),
                      f"{kind}_correct": (exact_B * is_k).sum(), f"{kind}_count": n})
    return loss, metrics

  def predict_actions(self, batch):
    raise NotImplementedError("the VLM answers questions about images, it does not act (stage 2 of "
                              "issue 13; the hybrid WAM of stage 3 acts)")


def prefix_lm_mask(num_image: int, num_text: int, text_length_B):
  """[B, N, N] (N = I + L): query n may attend key m. Image queries see the image; text query j
  sees the image and text keys <= j; keys past a row's text_length are never seen."""
  n = num_image + num_text
  pos = jnp.arange(n)
  is_img = pos < num_image
  key_valid_BN = is_img[None] | (pos[None] - num_image < text_length_B[:, None])
  allowed_NN = is_img[None, :] | (~is_img[:, None] & (pos[None, :] <= pos[:, None]))
  return allowed_NN[None] & key_valid_BN[:, None, :]
