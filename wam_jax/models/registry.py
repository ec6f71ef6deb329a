"""Model families by config name, and the three functions the trainer needs.

Every family is a linen module with ``__call__(batch, train) -> (loss, metrics)``
and ``predict_actions(batch) -> [B, K, A]`` (normalized). The trainer and the
exported policy only ever call the functions below, so they never know which
family they run.
"""

import jax

from wam_jax.data.tokenizer import ByteTokenizer
from wam_jax.models import heads, matmul
from wam_jax.models.families.cnn_bc import CNNBC
from wam_jax.models.families.frame_autoencoder import FrameAutoencoderModel
from wam_jax.models.families.hybrid import HybridWAM
from wam_jax.models.families.idm import IDM
from wam_jax.models.families.latent_action import LatentActionFamily
from wam_jax.models.families.latent_policy import LatentPolicy
from wam_jax.models.families.lm import LanguageModel
from wam_jax.models.families.joint_wam import JointWAM
from wam_jax.models.families.video_wam import VideoWAM
from wam_jax.models.families.vla import VLA
from wam_jax.models.families.vlm import VisionLanguageModel

FAMILIES = {"vla": VLA, "video_wam": VideoWAM, "joint_wam": JointWAM, "frame_autoencoder": FrameAutoencoderModel,
            "idm": IDM, "latent_action": LatentActionFamily, "latent_policy": LatentPolicy, "lm": LanguageModel,
            "vlm": VisionLanguageModel, "hybrid": HybridWAM, "cnn_bc": CNNBC}


def check_model_config(model_cfg) -> None:
  """Names in config.model resolve (family, head): checked before any work starts."""
  if model_cfg.name not in FAMILIES:
    raise ValueError(f"config.model.name={model_cfg.name!r} is not a model family; known: {sorted(FAMILIES)}")
  if hasattr(FAMILIES[model_cfg.name], "check_config"):  # a family's own fields
    FAMILIES[model_cfg.name].check_config(model_cfg)
  if "head" in model_cfg:
    heads.check_head_config(model_cfg.head)


def build_model(config, num_datasets: int):
  check_model_config(config.model)
  name = config.model.name
  return FAMILIES[name](
      config=config.model, data_config=config.data, num_datasets=num_datasets,
      vocab_size=ByteTokenizer.vocab_size,
      dot_general=matmul.make_dot_general(config.train.compute_dtype))


def _rngs(rng):
  dropout, noise = jax.random.split(rng)
  return {"dropout": dropout, "noise": noise}


def init_params(model, rng, batch):
  """Boxed (logically partitioned) params; call under jit / eval_shape."""
  params_rng, rng = jax.random.split(rng)
  return model.init({"params": params_rng, **_rngs(rng)}, batch, train=False)["params"]


def loss_fn(model, params, batch, rng, train: bool = True):
  return model.apply({"params": params}, batch, train=train, rngs=_rngs(rng))


def predict_actions(model, params, batch, rng):
  return model.apply({"params": params}, batch, rngs=_rngs(rng), method="predict_actions")


def predict_latent_actions(model, params, batch, rng):
  """Latent actions of a latent-action model or latent policy: codes int [B, Q] or z [B, Q, Z]."""
  return model.apply({"params": params}, batch, rngs=_rngs(rng), method="predict_latent_actions")


def predicts_frames(model) -> bool:
  """Whether the model generates future frames: a family with ``predict_frames`` whose config
  trains a video objective (a family may set ``predicts_frames`` False, e.g. the joint WAM at
  video_weight = 0, which has no frame tokens at all)."""
  return hasattr(model, "predict_frames") and bool(getattr(model, "predicts_frames", True))


def predict_frames(model, params, batch, rng):
  """Frames a family generates for the batch's future frames: {camera: uint8 [B, F, H, W, 3]}."""
  return model.apply({"params": params}, batch, rngs=_rngs(rng), method="predict_frames")
