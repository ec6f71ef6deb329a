"""Instruction tokenizers of the robot data path (fixed length L, 0 = padding).

``ByteTokenizer`` (the default) maps UTF-8 bytes to ids 1..256. It has no
vocabulary to build or ship, so the same ids come out at training, in exports
and on a robot. ``data.text_tokenizer`` = a ``tokenizer.json`` path instead
gives ``PaddedBpeTokenizer``: the language model's trained BPE (issue 13), for
a policy whose backbone is that LM (the hybrid WAM). Either spec (``to_dict``)
is stored with every checkpoint; ``from_dict`` rebuilds it.
"""

import dataclasses
from typing import Sequence

import numpy as np

PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  max_len: int = 64

  vocab_size = 257  # 256 byte values + pad.

  def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (ids int32 [L], mask bool [L]); text longer than max_len is cut."""
    raw = np.frombuffer(text.strip().lower().encode("utf-8"), np.uint8)[:self.max_len]
    ids = np.zeros((self.max_len,), np.int32)
    ids[:len(raw)] = raw.astype(np.int32) + 1
    return ids, ids != PAD_ID

  def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids, masks = zip(*(self.encode(t) for t in texts))
    return np.stack(ids), np.stack(masks)

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    return bytes((ids[ids != PAD_ID] - 1).astype(np.uint8).tolist()).decode("utf-8", "replace")

  def to_dict(self) -> dict:
    return {"name": "byte", "max_len": self.max_len}


class PaddedBpeTokenizer:
  """A trained BPE tokenizer (``wam_jax.data.text.TextTokenizer``) cut/padded to ``max_len``:
  ``encode(text) -> (ids int32 [L], mask bool [L])`` as ``ByteTokenizer``; no lower-casing."""

  def __init__(self, bpe, max_len: int):
    self.bpe, self.max_len = bpe, int(max_len)
    self.vocab_size = bpe.vocab_size

  def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    raw = self.bpe.encode(text.strip())[:self.max_len]
    ids = np.zeros((self.max_len,), np.int32)
    ids[:len(raw)] = raw
    mask = np.zeros((self.max_len,), bool)
    mask[:len(raw)] = True
    return ids, mask

  def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids, masks = zip(*(self.encode(t) for t in texts))
    return np.stack(ids), np.stack(masks)

  def decode(self, ids) -> str:
    return self.bpe.decode(ids)

  def to_dict(self) -> dict:
    return dict(self.bpe.to_dict(), name="bpe", max_len=self.max_len)


def from_dict(spec: dict):
  """A checkpoint's or export's tokenizer spec -> the tokenizer."""
  if spec.get("name") == "bpe" and "max_len" in spec:
    from wam_jax.data import text
    return PaddedBpeTokenizer(text.tokenizer_from_dict(spec), spec["max_len"])
  if spec.get("name") != "byte":
    raise ValueError(f"unknown tokenizer {spec.get('name')!r}; known: ['byte', 'bpe' (with max_len)]")
  return ByteTokenizer(max_len=int(spec["max_len"]))


def for_spec(wspec):
  """The instruction tokenizer of a ``windows.WindowSpec``: its ``text_tokenizer`` file, else bytes."""
  path = getattr(wspec, "text_tokenizer", "")
  if not path:
    return ByteTokenizer(wspec.max_text_len)
  from wam_jax.data import text
  import pathlib
  if not pathlib.Path(path).exists():
    raise ValueError(f"config.data.text_tokenizer={path!r} does not exist (a tokenizer.json from "
                     "scripts/prepare_text.py)")
  return PaddedBpeTokenizer(text.TextTokenizer.load(path), wspec.max_text_len)
