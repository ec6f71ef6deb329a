"""Observation encoders shared by every family: images, text, proprio -> tokens [B, N, D]."""

import flax.linen as nn
import jax.numpy as jnp

from wam_jax.models import layers


def to_patches(x_BTHWC, patch: int, field: str = "model.patch_size"):
  """[B, T, H, W, C] -> [B, T, (H/p)*(W/p), p*p*C]: row-major p x p patches, values unchanged."""
  b, t, h, w, c = x_BTHWC.shape
  if h % patch or w % patch:
    raise ValueError(f"image size {h}x{w} is not divisible by {field}={patch}")
  x = x_BTHWC.reshape(b, t, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(b, t, (h // patch) * (w // patch), patch * patch * c)


def from_patches(x_BTNP, patch: int, height: int, width: int):
  """The inverse of ``to_patches``: [B, T, (H/p)*(W/p), p*p*C] -> [B, T, H, W, C]."""
  b, t, n, d = x_BTNP.shape
  gh, gw, c = height // patch, width // patch, d // (patch * patch)
  if gh * gw != n or c * patch * patch != d:
    raise ValueError(f"{n} patches of {d} values do not tile a {height}x{width} image at patch {patch}")
  x = x_BTNP.reshape(b, t, gh, gw, patch, patch, c).transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(b, t, height, width, c)


def to_signed_unit(frames):
  """uint8/float pixel values in [0, 255] -> float32 in [-1, 1] (what every model sees)."""
  return frames.astype(jnp.float32) / 127.5 - 1.0


def patchify(frames_BTHWC, patch: int):
  """[B, T, H, W, C] uint8/float -> [B, T, (H/p)*(W/p), p*p*C] float in [-1, 1]."""
  return to_patches(to_signed_unit(frames_BTHWC), patch)


def conv_stem(x_NHWC, channels: tuple, *, prefix: str = "stem"):
  """One 3x3 stride-2 convolution + GELU per entry of ``channels``: [N, H, W, C] -> [N, H/2^L,
  W/2^L, channels[-1]]. Call it inside a compact module: the convolutions become that module's
  submodules ``{prefix}_0``, ``{prefix}_1``, ... (the VLA's, the video predictor's and the plain
  CNN's trunks are this one function)."""
  for i, c in enumerate(channels):
    x_NHWC = nn.gelu(layers.Conv(c, (3, 3), strides=2, names=(None, None, None, "embed"),
                                 name=f"{prefix}_{i}")(x_NHWC))
  return x_NHWC


def stem_patches(x_BTHWC, patch: int, stem: tuple, *, field: str = "model.patch_size", prefix: str = "stem"):
  """Signed frames [B, T, H, W, C] -> the ``conv_stem``'s features cut into the same token grid as
  ``to_patches(x, patch)``: [B, T, (H/p)*(W/p), (p/2^L)^2 * stem[-1]]. ``stem=()``: ``to_patches``."""
  if not stem:
    return to_patches(x_BTHWC, patch, field)
  if patch % (2 ** len(stem)):
    raise ValueError(f"{field}={patch} is not divisible by 2^len(model.stem)={2 ** len(stem)}: "
                     "each stem convolution halves the image")
  b, t = x_BTHWC.shape[:2]
  x = conv_stem(x_BTHWC.reshape((b * t,) + x_BTHWC.shape[2:]), stem, prefix=prefix)
  return to_patches(x.reshape((b, t) + x.shape[1:]), patch // 2 ** len(stem), field)


class ImageTokenizer(nn.Module):
  """ViT-style patch embedding with learned spatial and temporal position embeddings.

  [B, T, H, W, 3] -> tokens [B, T*N, D] and their mask [B, T*N] from mask_BT; N = (H/p)*(W/p)
  for ``patch_size`` p whatever the stem. ``stem=()`` embeds each p x p pixel patch with one
  matrix (ViT). ``stem=(c1, c2, ..)`` first runs one 3x3 stride-2 convolution + GELU per entry
  (c_i channels), then embeds the remaining p/2^L x p/2^L patch of features: a convolutional
  stem (Xiao et al. 2021, "Early convolutions help transformers see better") that gives each
  token local, translation-equivariant features at the same token count.
  """
  width: int
  patch_size: int
  dot_general: layers.DotGeneral = None
  stem: tuple = ()

  @nn.compact
  def __call__(self, frames_BTHWC, mask_BT):
    b, t = frames_BTHWC.shape[:2]
    patches = stem_patches(to_signed_unit(frames_BTHWC), self.patch_size, tuple(self.stem))
    n = patches.shape[2]
    tok_BTND = layers.logical_dense(self.width, ("patch", "embed"), dot_general=self.dot_general,
                                    name="patch_embed")(patches)
    tok_BTND = tok_BTND + layers.learned_embedding(self, "pos", (n, self.width), ("length", "embed"))
    tok_BTND = tok_BTND + layers.learned_embedding(self, "time", (t, self.width), ("time", "embed"))[:, None]
    mask_BTN = jnp.broadcast_to(mask_BT[:, :, None], (b, t, n))
    return tok_BTND.reshape(b, t * n, self.width), mask_BTN.reshape(b, t * n)


class TextTokenizer(nn.Module):
  """Token ids [B, L] -> embeddings [B, L, D] (+ learned positions)."""
  width: int
  vocab_size: int

  @nn.compact
  def __call__(self, ids_BL):
    emb = nn.Embed(self.vocab_size, self.width, name="embed",
                   embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
    x = emb(ids_BL)
    return x + layers.learned_embedding(self, "pos", (ids_BL.shape[1], self.width), ("length", "embed"))


class ObservationEncoder(nn.Module):
  """All observation tokens of a batch: cameras, proprio, instruction, dataset id.

  Returns tokens [B, N, D] and mask [B, N]. Each camera has its own patch
  embedding; proprio is one token per history step.
  """
  width: int
  patch_size: int
  cameras: tuple
  vocab_size: int
  num_datasets: int
  dot_general: layers.DotGeneral = None
  stem: tuple = ()  # ImageTokenizer.stem: conv channels before the patch embedding

  @nn.compact
  def __call__(self, batch):
    history_mask = batch["history_mask"]
    tokens, masks = [], []
    for cam in self.cameras:
      t, m = ImageTokenizer(self.width, self.patch_size, self.dot_general, tuple(self.stem),
                            name=f"image_{cam}")(
          batch[f"image_{cam}"], history_mask)
      t = t + layers.learned_embedding(self, f"camera_{cam}", (self.width,), ("embed",))
      tokens.append(t)
      masks.append(m)
    proprio = layers.logical_dense(self.width, (None, "embed"), dot_general=self.dot_general,
                                   name="proprio")(batch["proprio"])
    proprio = proprio + layers.learned_embedding(self, "proprio_time", (proprio.shape[1], self.width), ("time", "embed"))
    tokens.append(proprio)
    masks.append(history_mask)
    tokens.append(TextTokenizer(self.width, self.vocab_size, name="text")(batch["language_tokens"]))
    masks.append(batch["language_mask"])
    dataset_tok = nn.Embed(self.num_datasets, self.width, name="dataset",
                           embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")))(
                               batch["dataset_id"])
    tokens.append(dataset_tok[:, None])
    masks.append(jnp.ones_like(batch["dataset_id"], bool)[:, None])
    return jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1)


class VisionEncoder(nn.Module):
  """A small ViT and a two-layer MLP projector: frames [B, T, S, S, 3] -> tokens [B, T*N, out_width].

  The VLM's image side (``families/vlm.py``) and the hybrid's (``families/hybrid.py``):
  patch embedding with spatial/temporal positions, ``depth`` bidirectional blocks of
  ``width``, then ``out_width`` (the language model's width) through GELU.
  """
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  out_width: int
  dot_general: layers.DotGeneral = None

  @nn.compact
  def __call__(self, frames_BTHWC, mask_BT=None, *, train: bool = False):
    if mask_BT is None:
      mask_BT = jnp.ones(frames_BTHWC.shape[:2], bool)
    tok_BND, mask_BN = ImageTokenizer(self.width, self.patch_size, self.dot_general, name="patches")(
        frames_BTHWC, mask_BT)
    tok_BND = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, 0.0, self.dot_general, name="vit")(
        tok_BND, mask_BN, train=train)
    h = nn.gelu(layers.logical_dense(self.out_width, ("embed", "mlp"), dot_general=self.dot_general,
                                     name="proj_in")(tok_BND))
    return layers.logical_dense(self.out_width, ("mlp", "embed"), dot_general=self.dot_general,
                                name="proj_out")(h), mask_BN
