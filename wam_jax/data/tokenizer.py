"""Text tokenizers that need no download.

``ByteTokenizer`` maps UTF-8 bytes to ids 1..256 (0 is padding). It has no
vocabulary to build or ship, so the same ids come out at training, in exports
and on a robot; its spec (``to_dict``) is stored with every checkpoint.
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


def from_dict(spec: dict) -> ByteTokenizer:
  if spec.get("name") != "byte":
    raise ValueError(f"unknown tokenizer {spec.get('name')!r}; known: ['byte']")
  return ByteTokenizer(max_len=int(spec["max_len"]))
