"""Diffusion action head: DDPM training with a cosine schedule, DDIM sampling.

Training (Ho et al. 2020, schedule of Nichol & Dhariwal 2021): t ~ U{0..T-1},
x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, and the denoiser predicts one of
  epsilon: eps,   v: sqrt(ab_t) eps - sqrt(1 - ab_t) x0,   x0: x0.
Sampling (Song et al. 2021, DDIM with eta 0): num_sampling_steps evenly spaced
steps from T-1 down to 0, each x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps_hat,
the only randomness being the initial noise (from the 'noise' rng). With
``clip_sample``, x0_hat is clipped to [-clip_range, clip_range] (the normalized
action range) at every step and eps_hat recomputed from it.
"""

import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.models.heads import checks
from wam_jax.models.heads.denoiser import DenoisingHead, check_denoiser_fields

PREDICTIONS = ("epsilon", "v", "x0")


def cosine_alpha_bar(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Cumulative signal fraction ab[t], t = 0..T-1 (DDPM step t+1), of the cosine schedule."""
  f = np.cos((np.arange(num_steps + 1) / num_steps + s) / (1 + s) * np.pi / 2) ** 2
  betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, max_beta)
  return np.cumprod(1.0 - betas)


def ddim_timesteps(num_train_steps: int, num_sampling_steps: int):
  """(t_i, t_prev_i) for the DDIM loop: descending, t_prev of the last step is -1 (ab = 1)."""
  ts = np.round(np.linspace(num_train_steps - 1, 0, num_sampling_steps)).astype(np.int32)
  return ts, np.concatenate([ts[1:], [-1]]).astype(np.int32)


class DiffusionHead(DenoisingHead):
  prediction: str = "epsilon"
  num_train_timesteps: int = 100
  clip_sample: bool = True
  clip_range: float = 1.0

  @property
  def alpha_bar(self) -> np.ndarray:
    return cosine_alpha_bar(self.num_train_timesteps)

  def tau(self, t_B):
    """Integer step -> the net's time input in (0, 1]."""
    return (t_B.astype(jnp.float32) + 1.0) / self.num_train_timesteps

  def draw_time(self, rng, batch: int):
    return jax.random.randint(rng, (batch,), 0, self.num_train_timesteps)

  def corrupt(self, x0_BKA, eps_BKA, t_B):
    ab = jnp.asarray(self.alpha_bar, jnp.float32)[t_B][:, None, None]
    x_t = jnp.sqrt(ab) * x0_BKA + jnp.sqrt(1.0 - ab) * eps_BKA
    target = {"epsilon": eps_BKA, "x0": x0_BKA,
              "v": jnp.sqrt(ab) * eps_BKA - jnp.sqrt(1.0 - ab) * x0_BKA}[self.prediction]
    return x_t, target, self.tau(t_B)

  def x0_and_eps(self, x_t, out, ab):
    """The net's output at signal fraction ab -> (x0_hat, eps_hat), x0_hat clipped if configured."""
    sa, sb = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
    if self.prediction == "epsilon":
      x0, eps = (x_t - sb * out) / sa, out
    elif self.prediction == "v":
      x0, eps = sa * x_t - sb * out, sb * x_t + sa * out
    else:
      x0, eps = out, (x_t - sa * out) / sb
    if self.clip_sample:
      x0 = jnp.clip(x0, -self.clip_range, self.clip_range)
      eps = (x_t - sa * x0) / sb
    return x0, eps

  def sample(self, readout_BKD):
    """[B, K, D] -> normalized actions [B, K, A] by num_sampling_steps DDIM steps."""
    self.check_shapes(readout_BKD)
    b = readout_BKD.shape[0]
    cond = self.net.condition(readout_BKD)
    ab = self.alpha_bar
    ts, prev = ddim_timesteps(self.num_train_timesteps, self.num_sampling_steps)
    ab_t = jnp.asarray(ab[ts], jnp.float32)
    ab_prev = jnp.asarray(np.where(prev >= 0, ab[np.maximum(prev, 0)], 1.0), jnp.float32)
    tau = self.tau(jnp.asarray(ts))

    def step(i, x_BKA):
      out = self.net(x_BKA, jnp.full((b,), tau[i]), cond)
      x0, eps = self.x0_and_eps(x_BKA, out, ab_t[i])
      return jnp.sqrt(ab_prev[i]) * x0 + jnp.sqrt(1.0 - ab_prev[i]) * eps

    x_BKA = jax.lax.fori_loop(0, self.num_sampling_steps, step, self.initial_noise(b))
    return jnp.clip(x_BKA, -self.clip_range, self.clip_range) if self.clip_sample else x_BKA


def check_config(cfg, prefix: str) -> None:
  check_denoiser_fields(cfg, prefix)
  checks.choice(prefix, cfg, "prediction", PREDICTIONS)
  checks.int_range(prefix, cfg, "num_train_timesteps", 2, 10_000)
  checks.positive(prefix, cfg, "clip_range")
  if cfg["num_sampling_steps"] > cfg["num_train_timesteps"]:
    raise ValueError(f"{prefix}.num_sampling_steps={cfg['num_sampling_steps']} exceeds "
                     f"{prefix}.num_train_timesteps={cfg['num_train_timesteps']}")
