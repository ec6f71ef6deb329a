"""Cutting training windows (batch.py samples) out of decoded episodes.

An episode is prepared once (``prepare_episode``: frames resized, proprio and
actions normalized and zero-padded, instruction tokenized); a window at step
``t`` is then pure indexing (``cut_window``):

* history frames/proprio at t-h+1..t; steps before 0 repeat step 0 and have
  ``history_mask`` False;
* future frames and proprio at t+k, t+2k, ..., t+F*k, clamped to the last step,
  with ``future_mask`` False past the end;
* actions a_t..a_{t+H-1}, zero past the end with ``action_mask`` False; an
  action-free dataset gives zeros and an all-False ``action_mask``.

Every step of every episode is a valid window start. A camera in
``data.cameras`` that a dataset lacks (e.g. Bridge has no wrist camera) gives
all-zero frames; masks are unaffected (models see black frames).

``WindowSource`` maps a flat window index to a sample, holding prepared
episodes in a byte-bounded LRU cache. ``make_inference_inputs`` runs the same
preparation on one live observation history (``history_inputs`` pads a policy's
last observations like a window at an episode start), so a policy sees exactly
what training saw: the same resize (``rlds.resize_frames``) of frames at the
resolution they were recorded at, and zeros for a camera the dataset lacks.
"""

import collections
import dataclasses
import pathlib
from typing import Mapping, Optional, Sequence

import numpy as np

from wam_jax.data import batch as batch_lib
from wam_jax.data import registry
from wam_jax.data import registry_files
from wam_jax.data import rlds
from wam_jax.data import tokenizer as tokenizer_lib


def text_tokenizer_path(data_cfg) -> str:
  """``data.text_tokenizer`` resolved: '' (UTF-8 bytes), an absolute path, or a path under the data
  root (``data.data_dir``, else $WAM_DATA_DIR, else ./wam_data), as registry directories are; so a
  run reads the same tokenizer whatever its working directory."""
  path = str(data_cfg.get("text_tokenizer", ""))
  if not path or pathlib.Path(path).is_absolute():
    return path
  from wam_jax.data import pipeline  # pylint: disable=g-import-not-at-top  (pipeline imports this module)
  return str(pipeline.resolve_data_dir(data_cfg) / path)


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """The window geometry and padding sizes, read from the data config."""
  cameras: tuple[str, ...]
  image_size: int
  history: int         # h (T).
  future_offset: int   # k.
  num_future: int      # F.
  action_horizon: int  # H (K).
  action_dim: int      # A.
  proprio_dim: int     # P.
  max_text_len: int    # L.
  text_tokenizer: str = ""  # "" = bytes; a tokenizer.json (text_tokenizer_path) = the LM BPE (data/tokenizer.py)

  @classmethod
  def from_config(cls, data_cfg) -> "WindowSpec":
    return cls(cameras=tuple(data_cfg.cameras), image_size=int(data_cfg.image_size),
               history=int(data_cfg.history), future_offset=int(data_cfg.future_offset),
               num_future=int(data_cfg.num_future), action_horizon=int(data_cfg.action_horizon),
               action_dim=int(data_cfg.action_dim), proprio_dim=int(data_cfg.proprio_dim),
               max_text_len=int(data_cfg.max_text_len), text_tokenizer=text_tokenizer_path(data_cfg))

  def element_spec(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Key -> (shape, dtype) of a batch of ``batch_size`` windows."""
    b, s = batch_size, self.image_size
    spec = {}
    for cam in self.cameras:
      spec[batch_lib.image_key(cam)] = ((b, self.history, s, s, 3), np.dtype(np.uint8))
      spec[batch_lib.future_image_key(cam)] = ((b, self.num_future, s, s, 3), np.dtype(np.uint8))
    spec.update(
        history_mask=((b, self.history), np.dtype(bool)),
        future_mask=((b, self.num_future), np.dtype(bool)),
        proprio=((b, self.history, self.proprio_dim), np.dtype(np.float32)),
        future_proprio=((b, self.num_future, self.proprio_dim), np.dtype(np.float32)),
        actions=((b, self.action_horizon, self.action_dim), np.dtype(np.float32)),
        action_mask=((b, self.action_horizon), np.dtype(bool)),
        action_dim_mask=((b, self.action_dim), np.dtype(bool)),
        language_tokens=((b, self.max_text_len), np.dtype(np.int32)),
        language_mask=((b, self.max_text_len), np.dtype(bool)),
        dataset_id=((b,), np.dtype(np.int32)),
        step=((b,), np.dtype(np.int32)))
    return spec


@dataclasses.dataclass
class PreparedEpisode:
  """Model-ready arrays of one episode (T steps).

  frames: camera -> uint8 [T, S, S, 3] for every requested camera (zeros if
  absent); proprio float32 [T, P]; actions float32 [T, A] or None;
  action_dim_mask bool [A]; tokens int32 [L]; token_mask bool [L].
  """
  frames: dict
  proprio: np.ndarray
  actions: Optional[np.ndarray]
  action_dim_mask: np.ndarray
  tokens: np.ndarray
  token_mask: np.ndarray

  @property
  def length(self) -> int:
    return len(self.proprio)

  @property
  def nbytes(self) -> int:
    return rlds.episode_nbytes(self)


def _pad_last(x: np.ndarray, dim: int, what: str, dataset: str) -> np.ndarray:
  if x.shape[-1] > dim:
    raise ValueError(f"dataset {dataset!r}: {what} has {x.shape[-1]} dims, more than "
                     f"data.{what}_dim={dim}")
  out = np.zeros(x.shape[:-1] + (dim,), np.float32)
  out[..., :x.shape[-1]] = x
  return out


def prepare_episode(episode: rlds.Episode, wspec: WindowSpec, normalizer, dataset: str,
                    tokenizer: tokenizer_lib.ByteTokenizer) -> PreparedEpisode:
  """Resize, normalize, pad and tokenize one decoded episode."""
  t, s = episode.length, wspec.image_size
  frames = {}
  for cam in wspec.cameras:
    if cam in episode.frames:
      frames[cam] = rlds.resize_frames(episode.frames[cam], s)
    else:
      frames[cam] = np.zeros((t, s, s, 3), np.uint8)
  proprio = _pad_last(normalizer.normalize_proprio(episode.proprio, dataset),
                      wspec.proprio_dim, "proprio", dataset)
  action_dim_mask = np.zeros((wspec.action_dim,), bool)
  actions = None
  if episode.actions is not None:
    actions = _pad_last(normalizer.normalize_actions(episode.actions, dataset),
                        wspec.action_dim, "action", dataset)
    action_dim_mask[:episode.actions.shape[-1]] = True
  tokens, token_mask = tokenizer.encode(episode.instruction)
  return PreparedEpisode(frames, proprio, actions, action_dim_mask, tokens, token_mask)


def cut_window(ep: PreparedEpisode, t: int, wspec: WindowSpec, dataset_id: int) -> dict:
  """The window starting at step ``t`` as an unbatched dict of batch.py keys."""
  last = ep.length - 1
  hist = np.arange(t - wspec.history + 1, t + 1)
  history_mask = hist >= 0
  hist = np.maximum(hist, 0)
  fut = t + wspec.future_offset * np.arange(1, wspec.num_future + 1)
  future_mask = fut <= last
  fut = np.minimum(fut, last)
  act = np.arange(t, t + wspec.action_horizon)
  sample = {}
  for cam in wspec.cameras:
    sample[batch_lib.image_key(cam)] = ep.frames[cam][hist]
    sample[batch_lib.future_image_key(cam)] = ep.frames[cam][fut]
  actions = np.zeros((wspec.action_horizon, wspec.action_dim), np.float32)
  action_mask = np.zeros((wspec.action_horizon,), bool)
  if ep.actions is not None:
    action_mask = act <= last
    n = int(action_mask.sum())
    actions[:n] = ep.actions[t:t + n]
  sample.update(
      history_mask=history_mask, future_mask=future_mask, proprio=ep.proprio[hist],
      future_proprio=ep.proprio[fut],
      actions=actions, action_mask=action_mask, action_dim_mask=ep.action_dim_mask,
      language_tokens=ep.tokens, language_mask=ep.token_mask,
      dataset_id=np.int32(dataset_id), step=np.int32(t))
  return sample


class WindowSource:
  """Flat window index -> sample dict, for one dataset split.

  Windows are ordered episode by episode. Prepared episodes are kept in an LRU
  cache bounded by ``cache_bytes`` (each Grain worker has its own).
  """

  def __init__(self, reader: rlds.RldsReader, wspec: WindowSpec, normalizer,
               dataset_id: int, *, cache_bytes: int = 1 << 30):
    self.reader = reader
    self.wspec = wspec
    self.normalizer = normalizer
    self.dataset_id = dataset_id
    self.cache_bytes = cache_bytes
    self.tokenizer = tokenizer_lib.for_spec(wspec)
    lengths = reader.episode_lengths()
    # Window w is step w - starts[e] of episode e = searchsorted(ends, w, "right"): memory per
    # episode, not per step (a 27M-step dataset would otherwise hold 430 MB of indices per worker).
    self.ends = np.cumsum(lengths, dtype=np.int64)
    self._cache = collections.OrderedDict()
    self._cached_bytes = 0

  def __getstate__(self):
    state = dict(self.__dict__)
    state.update(_cache=collections.OrderedDict(), _cached_bytes=0)
    return state

  def __len__(self) -> int:
    return int(self.ends[-1]) if len(self.ends) else 0

  def episode(self, index: int) -> PreparedEpisode:
    ep = self._cache.get(index)
    if ep is not None:
      self._cache.move_to_end(index)
      return ep
    raw = self.reader.decode(index, cameras=self.wspec.cameras, image_size=self.wspec.image_size)
    ep = prepare_episode(raw, self.wspec, self.normalizer, self.reader.spec.name, self.tokenizer)
    self._cache[index] = ep
    self._cached_bytes += ep.nbytes
    while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
      _, old = self._cache.popitem(last=False)
      self._cached_bytes -= old.nbytes
    return ep

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"window {index} of {len(self)} (dataset {self.reader.spec.name!r})")
    e = int(np.searchsorted(self.ends, index, side="right"))
    step = index - (int(self.ends[e - 1]) if e else 0)
    return cut_window(self.episode(e), step, self.wspec, self.dataset_id)

  __call__ = __getitem__  # Usable as a grain ``map`` over window indices.


def make_inference_inputs(frames_by_camera: Mapping[str, np.ndarray], proprio: np.ndarray,
                          history_mask: np.ndarray, instruction: str, data_cfg, normalizer,
                          dataset_name: str) -> dict:
  """One live observation history -> an unbatched model input dict.

  Args:
    frames_by_camera: camera -> uint8 [T, H, W, 3], T = data.history, oldest
      first (pad by repeating the first frame, like training does), at the
      resolution the dataset's frames were recorded at (for MetaWorld:
      data.metaworld.resolution), resized here like training frames. Cameras
      of data.cameras the dataset lacks are zeros, as in training, whatever is
      given for them; a camera the dataset has must be given.
    proprio: raw float32 [T, P_raw] (the dataset's proprio, before slicing
      by ``proprio_dims``: the registry slice is applied here too).
    history_mask: bool [T], False for padded steps.
    instruction: the task text.
  Returns:
    batch.py keys for the observation side: image_<cam> [T, S, S, 3],
    history_mask [T], proprio [T, P], action_dim_mask [A], language_tokens
    [L], language_mask [L], dataset_id [] (no actions, future frames or step).
    Add a leading batch axis (``x[None]``) before calling a model.
  """
  registry_files.load_all(data_cfg.get("registry_files", ""))  # A checkpoint's own entries.
  spec = registry.get_spec(dataset_name)
  wspec = WindowSpec.from_config(data_cfg)
  names = [item.name for item in registry.expand_mixture(data_cfg.mixture)]
  dataset_id = names.index(dataset_name) if dataset_name in names else 0
  proprio = np.asarray(proprio, np.float32)
  history_mask = np.asarray(history_mask, bool)
  t = wspec.history
  if proprio.ndim != 2 or len(proprio) != t or history_mask.shape != (t,):
    raise ValueError(f"expected proprio [T={t}, P] and history_mask [{t}], got "
                     f"{list(proprio.shape)} and {list(history_mask.shape)}")
  cameras = [cam for cam in wspec.cameras if cam in spec.cameras]  # The rest: zeros.
  for cam in cameras:
    if cam not in frames_by_camera:
      raise ValueError(f"camera {cam!r}: dataset {dataset_name!r} has it and the model was "
                       f"trained on it, but the observation has no {batch_lib.image_key(cam)!r} "
                       f"frames (got cameras {sorted(frames_by_camera)})")
    f = np.asarray(frames_by_camera[cam])
    if f.dtype != np.uint8 or f.ndim != 4 or len(f) != t or f.shape[-1] != 3:
      raise ValueError(f"frames_by_camera[{cam!r}] must be uint8 [T={t}, H, W, 3], "
                       f"got {f.dtype}{list(f.shape)}")
  proprio = spec.proprio_from_vector(proprio)  # The registry's slice (composite proprio: an error).
  episode = rlds.Episode(frames={c: np.asarray(frames_by_camera[c]) for c in cameras},
                         proprio=proprio, actions=None, instruction=instruction)
  ep = prepare_episode(episode, wspec, normalizer, dataset_name,
                       tokenizer_lib.for_spec(wspec))
  out = {batch_lib.image_key(cam): ep.frames[cam] for cam in wspec.cameras}
  dim_mask = np.zeros((wspec.action_dim,), bool)
  dim_mask[:normalizer.action_dim(dataset_name)] = True
  out.update(history_mask=history_mask, proprio=ep.proprio, action_dim_mask=dim_mask,
             language_tokens=ep.tokens, language_mask=ep.token_mask,
             dataset_id=np.int32(dataset_id))
  return out


def history_inputs(observations: Sequence[Mapping], instruction: str, data_cfg, normalizer,
                   dataset_name: str) -> dict:
  """A policy's recent observations -> the unbatched model inputs (``make_inference_inputs``).

  Args:
    observations: obs dicts, oldest first, the last one now: {"image_<cam>":
      uint8 [H, W, 3], "proprio": float [P_raw]}. The last data.history are
      used; fewer are padded by repeating the oldest with ``history_mask``
      False, as a training window at an episode start. A camera missing from
      the observations is zeros if the dataset lacks it (as in training).
  """
  h = int(data_cfg.history)
  past = list(observations)[-h:]
  if not past:
    raise ValueError("history_inputs needs at least one observation")
  pad = h - len(past)
  past = [past[0]] * pad + past
  frames = {cam: np.stack([o[batch_lib.image_key(cam)] for o in past]) for cam in data_cfg.cameras
            if all(batch_lib.image_key(cam) in o for o in past)}
  proprio = np.stack([np.asarray(o["proprio"], np.float32) for o in past])
  return make_inference_inputs(frames, proprio, np.arange(h) >= pad, instruction, data_cfg,
                               normalizer, dataset_name)
