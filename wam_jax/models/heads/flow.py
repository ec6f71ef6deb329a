"""Flow-matching action head (conditional flow matching on the straight path, as pi0).

Time runs from t = 1 (noise) to t = 0 (actions), openpi's convention:
x_t = t eps + (1 - t) x0, and the denoiser predicts the velocity
u = dx_t/dt = eps - x0. Training times come from ``timestep_distribution``:
``uniform`` on [t_min, 1], or ``beta``: t = t_min + (1 - t_min) u with
u ~ Beta(beta_alpha, beta_beta) (pi0: Beta(1.5, 1), t_min 0.001, which puts
more weight on the noisy end). Sampling integrates dx/dt = v from t = 1 to 0
with num_sampling_steps Euler steps, starting from noise drawn from the
'noise' rng: deterministic given that rng.
"""

import jax
import jax.numpy as jnp

from wam_jax.models.heads import checks
from wam_jax.models.heads.denoiser import DenoisingHead, check_denoiser_fields

TIMESTEP_DISTRIBUTIONS = ("uniform", "beta")


class FlowHead(DenoisingHead):
  timestep_distribution: str = "beta"
  beta_alpha: float = 1.5
  beta_beta: float = 1.0
  t_min: float = 0.001

  def draw_time(self, rng, batch: int):
    if self.timestep_distribution == "beta":
      u = jax.random.beta(rng, self.beta_alpha, self.beta_beta, (batch,))
    else:
      u = jax.random.uniform(rng, (batch,))
    return self.t_min + (1.0 - self.t_min) * u

  def corrupt(self, x0_BKA, eps_BKA, t_B):
    t = t_B[:, None, None]
    return t * eps_BKA + (1.0 - t) * x0_BKA, eps_BKA - x0_BKA, t_B

  def sample(self, readout_BKD):
    """[B, K, D] -> normalized actions [B, K, A] by num_sampling_steps Euler steps."""
    self.check_shapes(readout_BKD)
    b = readout_BKD.shape[0]
    cond = self.net.condition(readout_BKD)
    dt = 1.0 / self.num_sampling_steps

    def step(i, x_BKA):
      t = 1.0 - i * dt
      return x_BKA - dt * self.net(x_BKA, jnp.full((b,), t, jnp.float32), cond)

    return jax.lax.fori_loop(0, self.num_sampling_steps, step, self.initial_noise(b))


def check_config(cfg, prefix: str) -> None:
  check_denoiser_fields(cfg, prefix)
  checks.choice(prefix, cfg, "timestep_distribution", TIMESTEP_DISTRIBUTIONS)
  checks.positive(prefix, cfg, "beta_alpha")
  checks.positive(prefix, cfg, "beta_beta")
  t_min = cfg["t_min"]
  if not 0.0 <= t_min < 1.0:
    raise ValueError(f"{prefix}.t_min={t_min!r} must be in [0, 1)")
