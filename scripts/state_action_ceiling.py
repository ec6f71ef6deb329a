r"""How much of the actions does the robot's own state determine? A least-squares ceiling for IDMs.

  .venv/bin/python scripts/state_action_ceiling.py --config=experiments/configs/idm_wam.py:idm_mt10_n2

Fits, on the train split of the config's first mixture dataset, one linear map from the proprio at
steps t+l (l in ``--lags``; 0 and ``data.future_offset`` by default: what an IDM with
``model.use_future_proprio`` reads) to each action of the chunk a_t..a_t+K-1, and reports its mean
|error| on the val split in the run's normalized units (``data.normalization``, as the IDM's
``val/sampled_action_l1``), per action dimension, beside predicting the train mean. A state that
pins the actions gives ~0; MetaWorld's hand follows its mocap target with a lag, so it does not.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from wam_jax.data import pipeline, registry, rlds  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config (its data section is read).")
_LAGS = flags.DEFINE_list("lags", [], "Proprio steps t+l read (default: 0 and data.future_offset).")


def _episodes(data_cfg, name: str, split: str) -> list:
  spec = registry.get_spec(name)
  reader = rlds.RldsReader(pipeline.dataset_dir(data_cfg, name), split, spec)
  return [reader.decode(e) for e in range(len(reader))]


def _rows(episodes, normalizer, name, lags, horizon):
  x, y = [], []
  lo, hi = -min(lags + [0]), max(lags + [horizon - 1])
  for ep in episodes:
    p = ep.proprio
    a = normalizer.normalize_actions(ep.actions, name)
    for t in range(lo, ep.length - hi):
      x.append(np.concatenate([p[t + l] for l in lags] + [[1.0]]))
      y.append(a[t:t + horizon])
  return np.asarray(x, np.float64), np.asarray(y, np.float64)


def main(argv):
  del argv
  data = _CONFIG.value.data
  name = data.mixture[0][0]
  lags = [int(l) for l in _LAGS.value] or [0, int(data.future_offset)]
  normalizer = pipeline.make_normalizer(data)
  horizon = int(data.action_horizon)
  xt, yt = _rows(_episodes(data, name, data.train_split), normalizer, name, lags, horizon)
  xv, yv = _rows(_episodes(data, name, data.val_split), normalizer, name, lags, horizon)
  w, *_ = np.linalg.lstsq(xt, yt.reshape(len(yt), -1), rcond=None)
  err = np.abs(xv @ w - yv.reshape(len(yv), -1)).reshape(yv.shape)
  mean = np.abs(yt.mean(0) - yv)
  print(f"{name}: proprio at t+{lags} -> a_t..a_t+{horizon - 1}; {len(xt)} train / {len(xv)} val windows")
  print(f"  val L1, linear in the state: {err.mean():.3f}  per dim {np.round(err.mean((0, 1)), 3).tolist()}"
        f"  per chunk step {np.round(err.mean((0, 2)), 3).tolist()}")
  print(f"  val L1, the train mean:      {mean.mean():.3f}  per dim {np.round(mean.mean((0, 1)), 3).tolist()}")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
