"""Observation encoders shared by every family: images, text, proprio -> tokens [B, N, D]."""

import dataclasses

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


def _stem_strides(channels: tuple, strides: tuple) -> tuple:
  """One stride per stem convolution: ``strides``, or 2 for each when ``strides=()``."""
  strides = tuple(strides) or (2,) * len(channels)
  if len(strides) != len(channels):
    raise ValueError(f"model.stem_strides={strides} needs one stride per model.stem entry {tuple(channels)}")
  return strides


def conv_stem_levels(x_NHWC, channels: tuple, *, strides: tuple = (), prefix: str = "stem") -> list:
  """One 3x3 convolution + GELU per entry of ``channels``, stride ``strides[i]`` (default 2 each):
  [N, H, W, C] -> every level's output, [N, H/s_0, W/s_0, channels[0]], ... Call it inside a compact
  module: the convolutions become that module's submodules ``{prefix}_0``, ``{prefix}_1``, ... (the
  VLA's, the video predictor's and the plain CNN's trunks are this one function)."""
  levels = []
  for i, (c, s) in enumerate(zip(channels, _stem_strides(channels, strides))):
    x_NHWC = nn.gelu(layers.Conv(c, (3, 3), strides=s, names=(None, None, None, "embed"),
                                 name=f"{prefix}_{i}")(x_NHWC))
    levels.append(x_NHWC)
  return levels


def conv_stem(x_NHWC, channels: tuple, *, strides: tuple = (), prefix: str = "stem"):
  """``conv_stem_levels``' last level: [N, H, W, C] -> [N, H/prod(s), W/prod(s), channels[-1]]
  (3x3 stride-2 convolutions unless ``strides`` says otherwise)."""
  return conv_stem_levels(x_NHWC, channels, strides=strides, prefix=prefix)[-1]


def stem_downsampling(stem: tuple, strides: tuple = ()) -> int:
  """How much ``conv_stem(x, stem, strides=strides)`` shrinks each side of the image."""
  factor = 1
  for s in _stem_strides(stem, strides):
    factor *= s
  return factor


def spatial_softmax(features_NHWC, temperature_K=None):
  """Soft-argmax keypoints: each channel's softmax over the H x W grid -> its expected (x, y) in
  [-1, 1] (pixel centres): [N, H, W, K] -> [N, K, 2]. Sub-cell positions from a coarse map (Levine
  et al. 2016, "End-to-end training of deep visuomotor policies"; robomimic's image BC): a small,
  moving target (a 1-2 px goal dot) becomes two numbers instead of a fraction of one token.
  ``temperature_K`` [K] divides the logits (learned by the caller)."""
  n, h, w, k = features_NHWC.shape
  logits = features_NHWC.astype(jnp.float32)
  if temperature_K is not None:
    logits = logits / temperature_K
  attn_NKP = nn.softmax(logits.reshape(n, h * w, k).transpose(0, 2, 1), axis=-1)
  ys, xs = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing="ij")
  grid_P2 = jnp.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)
  return attn_NKP @ grid_P2


@dataclasses.dataclass(frozen=True)
class ImageFields:
  """How ``ImageTokenizer`` reads a frame before the patch embedding: the image fields of ``config.model``.

  stem: channels of one 3x3 convolution + GELU each (``conv_stem``); () embeds pixel patches (ViT).
  stem_strides: one stride per ``stem`` entry; () = 2 for each.
  keypoints: K > 0 adds one token per frame, K spatial-softmax keypoints of stem level ``keypoint_level``.
  keypoint_level: index into ``stem`` (0: the first convolution's map).
  flat_token: adds one token per frame, one matrix over all of the frame's patch features at once (the
    plain CNN's readout: every position keeps its own weights, so where a feature is stays legible
    without attention having to find it).

  One frozen (hashable) value, so the modules that build a tokenizer (``ObservationEncoder``,
  ``transition.TransitionEncoder``) carry one field and a new way of reading frames reaches every
  family without touching their construction sites.
  """
  stem: tuple = ()
  stem_strides: tuple = ()
  keypoints: int = 0
  keypoint_level: int = 0
  flat_token: bool = False

  def __post_init__(self):  # config values arrive as lists or numpy ints; keep the value hashable
    object.__setattr__(self, "stem", tuple(int(c) for c in self.stem))
    object.__setattr__(self, "stem_strides", tuple(int(c) for c in self.stem_strides))
    object.__setattr__(self, "keypoints", int(self.keypoints))
    object.__setattr__(self, "keypoint_level", int(self.keypoint_level))
    object.__setattr__(self, "flat_token", bool(self.flat_token))


def image_fields(model_config) -> ImageFields:
  """``config.model``'s image fields (``ImageFields``), their defaults where a config lacks them."""
  return ImageFields(**{f.name: model_config.get(f.name, f.default) for f in dataclasses.fields(ImageFields)})


def stem_patches(x_BTHWC, patch: int, stem: tuple, *, strides: tuple = (), field: str = "model.patch_size",
                 prefix: str = "stem", keep_level: int = None):
  """Signed frames [B, T, H, W, C] -> the ``conv_stem``'s features cut into the same token grid as
  ``to_patches(x, patch)``: [B, T, (H/p)*(W/p), (p/f)^2 * stem[-1]] for the stem's downsampling f
  (2^L for L stride-2 convolutions). ``stem=()``: ``to_patches``. With ``keep_level=i`` also returns
  level i of the stem, [B*T, h_i, w_i, stem[i]] (what ``spatial_softmax`` reads)."""
  if not stem:
    if keep_level is not None:
      raise ValueError("model.keypoints needs a convolutional stem (model.stem) to read them from")
    return to_patches(x_BTHWC, patch, field)
  factor = stem_downsampling(stem, strides)
  if patch % factor:
    raise ValueError(f"{field}={patch} is not divisible by the stem's downsampling {factor} "
                     f"(model.stem={tuple(stem)}, model.stem_strides={tuple(strides) or 'all 2'})")
  b, t = x_BTHWC.shape[:2]
  levels = conv_stem_levels(x_BTHWC.reshape((b * t,) + x_BTHWC.shape[2:]), stem, strides=strides, prefix=prefix)
  x = levels[-1]
  tokens = to_patches(x.reshape((b, t) + x.shape[1:]), patch // factor, field)
  if keep_level is None:
    return tokens
  if not -len(levels) <= keep_level < len(levels):
    raise ValueError(f"model.keypoint_level={keep_level} is not a level of model.stem={tuple(stem)}")
  return tokens, levels[keep_level]


class ImageTokenizer(nn.Module):
  """ViT-style patch embedding with learned spatial and temporal position embeddings.

  [B, T, H, W, 3] -> tokens [B, T*N', D] and their mask [B, T*N'] from mask_BT; N = (H/p)*(W/p)
  for ``patch_size`` p whatever the stem, N' = N (+1 with keypoints). ``stem=()`` embeds each p x p
  pixel patch with one matrix (ViT). ``stem=(c1, c2, ..)`` first runs one 3x3 convolution + GELU per
  entry (c_i channels; stride 2, or ``stem_strides``), then embeds the remaining patch of features:
  a convolutional stem (Xiao et al. 2021, "Early convolutions help transformers see better") that
  gives each token local, translation-equivariant features at the same token count.
  ``keypoints=K`` adds one token per frame: K spatial-softmax keypoints (``spatial_softmax``) of a
  1x1 convolution of stem level ``keypoint_level``, their 2K coordinates embedded by one matrix.
  ``flat_token`` adds one token per frame: all N patches' features flattened and embedded by one
  matrix (the plain CNN's readout). All are ``image`` (``ImageFields``); extra tokens follow the
  patches in each frame, keypoints first.
  """
  width: int
  patch_size: int
  dot_general: layers.DotGeneral = None
  image: ImageFields = ImageFields()

  @nn.compact
  def __call__(self, frames_BTHWC, mask_BT):
    b, t = frames_BTHWC.shape[:2]
    k = self.image.keypoints
    out = stem_patches(to_signed_unit(frames_BTHWC), self.patch_size, self.image.stem,
                       strides=self.image.stem_strides, keep_level=self.image.keypoint_level if k else None)
    patches, level = out if k else (out, None)
    n = patches.shape[2]
    tok_BTND = layers.logical_dense(self.width, ("patch", "embed"), dot_general=self.dot_general,
                                    name="patch_embed")(patches)
    tok_BTND = tok_BTND + layers.learned_embedding(self, "pos", (n, self.width), ("length", "embed"))
    extra = []  # (name, features [B, T, 1, F]): one more token per frame each, after the patches
    if k:
      logits = layers.Conv(k, (1, 1), names=(None, None, None, None), name="keypoint_logits")(level)
      log_temp = self.param("keypoint_log_temperature", nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                            (k,))
      extra.append(("keypoint", spatial_softmax(logits, jnp.exp(log_temp)).reshape(b, t, 1, 2 * k)))
    if self.image.flat_token:
      extra.append(("flat", patches.reshape(b, t, 1, -1)))
    for name, features_BT1F in extra:  # each embedded by its own matrix, with its own learned position
      tok_BT1D = layers.logical_dense(self.width, (None, "embed"), dot_general=self.dot_general,
                                      name=f"{name}_embed")(features_BT1F)
      tok_BT1D = tok_BT1D + layers.learned_embedding(self, f"{name}_pos", (self.width,), ("embed",))
      tok_BTND = jnp.concatenate([tok_BTND, tok_BT1D.astype(tok_BTND.dtype)], axis=2)
    n += len(extra)
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


def masked_mean(x_BLD, mask_BL):
  """Mean over the valid positions: [B, L, D], [B, L] -> [B, D] (zeros where a row has none)."""
  m_BL = mask_BL.astype(x_BLD.dtype)
  return (x_BLD * m_BL[..., None]).sum(1) / jnp.maximum(m_BL.sum(1), 1.0)[:, None]


class ObservationEncoder(nn.Module):
  """All observation tokens of a batch: cameras, proprio, instruction, dataset id.

  Returns tokens [B, N, D] and mask [B, N]. Each camera has its own patch
  embedding; proprio is one token per history step. ``text_pool``: the instruction is one token,
  the mean of its (position-embedded) byte embeddings, instead of one token per byte (L of them):
  the plain CNN's task embedding, and L - 1 fewer tokens through every block.
  """
  width: int
  patch_size: int
  cameras: tuple
  vocab_size: int
  num_datasets: int
  dot_general: layers.DotGeneral = None
  image: ImageFields = ImageFields()  # each camera's ImageTokenizer: stem, strides, keypoints
  text_pool: bool = False

  @nn.compact
  def __call__(self, batch):
    history_mask = batch["history_mask"]
    tokens, masks = [], []
    for cam in self.cameras:
      t, m = ImageTokenizer(self.width, self.patch_size, self.dot_general, self.image, name=f"image_{cam}")(
          batch[f"image_{cam}"], history_mask)
      t = t + layers.learned_embedding(self, f"camera_{cam}", (self.width,), ("embed",))
      tokens.append(t)
      masks.append(m)
    proprio = layers.logical_dense(self.width, (None, "embed"), dot_general=self.dot_general,
                                   name="proprio")(batch["proprio"])
    proprio = proprio + layers.learned_embedding(self, "proprio_time", (proprio.shape[1], self.width), ("time", "embed"))
    tokens.append(proprio)
    masks.append(history_mask)
    text_BLD = TextTokenizer(self.width, self.vocab_size, name="text")(batch["language_tokens"])
    text_mask_BL = batch["language_mask"]
    if self.text_pool:
      text_BLD = masked_mean(text_BLD, text_mask_BL)[:, None]
      text_mask_BL = text_mask_BL.any(axis=1, keepdims=True)
    tokens.append(text_BLD)
    masks.append(text_mask_BL)
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
