"""Image-text pairs for the VLM (issue 13, stage 2), made from the project's own robot episodes.

``scripts/prepare_image_text.py`` reads RLDS episodes (the MetaWorld video pool,
demos, the real Bridge sample) through the registry, picks a few frames per
episode and writes question/answer examples with the *stage-1* tokenizer into
``image_text_dir(config.data)``::

  tokenizer.json        the language model's BPE tokenizer (copied: the VLM's text ids are the LM's)
  train.array_record    one example per record: header, tokens, image (layout: ``encode_record``)
  val.array_record      held-out episodes only (each source dataset's own ``val`` split)
  meta.json             image_size, text_len, vocab_size, examples per split / kind / dataset

Two kinds of question per frame (``KINDS``), both answerable only from the image:

  caption   "Q: What is the robot doing? A:" -> the episode's instruction
            (names the task: on the 50-task video pool, 50 answers)
  progress  "Q: How far along is the task? A:" -> "just started" | "halfway" | "nearly done"
            (the frame's third of the episode: read from the arm and the object)

A batch holds ``image`` uint8 [B, S, S, 3], ``tokens`` int32 [B, L] (prompt,
answer, EOS, then PAD), ``text_length`` int32 [B] (tokens before the PAD),
``answer_start`` int32 [B] (index of the first answer token) and ``kind`` int32
[B]. The model scores the answer and its EOS only; an answer is right when every
one of its tokens is the argmax under teacher forcing, which is exactly when
greedy decoding would produce it.
"""

import dataclasses
import json
import pathlib
import shutil
from typing import Callable, Sequence

import grain
import numpy as np

from wam_jax.data import text

KINDS = ("caption", "progress")
PROMPTS = {"caption": "Q: What is the robot doing? A:", "progress": "Q: How far along is the task? A:"}
PROGRESS = ("just started", "halfway", "nearly done")
DEFAULT_DIRNAME = "image_text"
_HEADER = 3  # uint16 words before the tokens: kind, text_length, answer_start


def progress_answer(step: int, length: int) -> str:
  """The third of the episode step ``step`` of ``length`` falls in."""
  return PROGRESS[min(3 * step // max(length, 1), 2)]


def make_example(tok: text.TextTokenizer, kind: str, answer: str, text_len: int):
  """(tokens int32 [text_len], text_length, answer_start) for one question of ``kind``.
  Raises ValueError if prompt + answer + EOS does not fit ``text_len``."""
  prompt = tok.encode(PROMPTS[kind])
  ans = tok.encode(" " + answer.strip())
  ids = np.concatenate([prompt, ans, [text.EOS_ID]]).astype(np.int32)
  if len(ids) > text_len:
    raise ValueError(f"{kind} answer {answer!r} needs {len(ids)} tokens; data.text_len={text_len} "
                     "(prepare with a larger --text_len)")
  out = np.full(text_len, text.PAD_ID, np.int32)
  out[:len(ids)] = ids
  return out, len(ids), len(prompt)


def encode_record(image_SS3: np.ndarray, tokens: np.ndarray, kind: int, length: int, answer_start: int) -> bytes:
  header = np.asarray([kind, length, answer_start], np.uint16)
  return header.tobytes() + tokens.astype(np.uint16).tobytes() + np.ascontiguousarray(image_SS3, np.uint8).tobytes()


def decode_record(record: bytes, image_size: int, text_len: int) -> dict:
  words = np.frombuffer(record, np.uint16, count=_HEADER + text_len)
  image = np.frombuffer(record, np.uint8, offset=2 * (_HEADER + text_len)).reshape(image_size, image_size, 3)
  return {"image": image, "tokens": words[_HEADER:].astype(np.int32), "kind": np.int32(words[0]),
          "text_length": np.int32(words[1]), "answer_start": np.int32(words[2])}


def episode_examples(episode, tok, *, camera: str, frames_per_episode: int, text_len: int):
  """[(image uint8 [S, S, 3], tokens, kind index, text_length, answer_start)] of one episode:
  ``frames_per_episode`` evenly spaced frames, one caption (if it has an instruction) and one
  progress question each."""
  frames = episode.frames[camera]
  t = len(frames)
  steps = np.unique(np.linspace(0, t - 1, frames_per_episode).round().astype(int))
  out = []
  for s in steps:
    answers = [("progress", progress_answer(int(s), t))]
    if episode.instruction:
      answers.insert(0, ("caption", episode.instruction))
    for kind, answer in answers:
      tokens, length, start = make_example(tok, kind, answer, text_len)
      out.append((frames[s], tokens, KINDS.index(kind), length, start))
  return out


def prepare(readers: dict, tokenizer_path, out_dir, *, image_size: int, text_len: int,
            frames_per_episode: int, log: Callable = print) -> dict:
  """Writes ``out_dir`` atomically (a temporary sibling, renamed at the end).

  readers: {split: [(dataset name, RldsReader, camera)]}; frames are resized to
  ``image_size``. Returns meta.json's content.
  """
  from array_record.python.array_record_module import ArrayRecordWriter
  tok = text.TextTokenizer.load(tokenizer_path)
  with text.atomic_directory(out_dir) as tmp:
    splits = {}
    for split, sources in readers.items():
      writer = ArrayRecordWriter(str(tmp / f"{split}.array_record"), "group_size:1")
      counts = {"examples": 0, "by_kind": dict.fromkeys(KINDS, 0), "by_dataset": {}, "answers": {}}
      for name, reader, camera in sources:
        n = len(reader)
        for i in range(n):
          ep = reader.decode(i, cameras=(camera,), image_size=image_size)
          if camera not in ep.frames:
            raise ValueError(f"dataset {name!r} has no camera {camera!r} (episode {i})")
          for image, tokens, kind, length, start in episode_examples(
              ep, tok, camera=camera, frames_per_episode=frames_per_episode, text_len=text_len):
            writer.write(encode_record(image, tokens, kind, length, start))
            counts["examples"] += 1
            counts["by_kind"][KINDS[kind]] += 1
            counts["by_dataset"][name] = counts["by_dataset"].get(name, 0) + 1
            if kind == 0:
              counts["answers"][ep.instruction] = counts["answers"].get(ep.instruction, 0) + 1
          if (i + 1) % 100 == 0 or i + 1 == n:
            log(f"{split}: {name} {i + 1}/{n} episodes, {counts['examples']} examples so far")
      writer.close()
      splits[split] = counts
    shutil.copy(tokenizer_path, tmp / "tokenizer.json")
    meta = {"image_size": image_size, "text_len": text_len, "vocab_size": tok.vocab_size,
            "frames_per_episode": frames_per_episode, "kinds": list(KINDS), "prompts": PROMPTS,
            "splits": splits}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
  log(f"wrote {out_dir}")
  return meta


# ----------------------------------------------------------------------------
# The pipeline the trainer calls when config.data.kind == "image_text".
# ----------------------------------------------------------------------------
def image_text_dir(data_cfg) -> pathlib.Path:
  """data.text_dir, else <data root>/image_text."""
  from wam_jax.data import pipeline
  return (pathlib.Path(data_cfg.text_dir) if data_cfg.get("text_dir")
          else pipeline.resolve_data_dir(data_cfg) / DEFAULT_DIRNAME)


def load_meta(data_cfg) -> dict:
  """meta.json of the prepared pairs, checked against data.image_size, text_len and vocab_size."""
  return text.read_prepared_meta(image_text_dir(data_cfg), data_cfg, ("image_size", "text_len", "vocab_size"),
                                 what="pairs", script="prepare_image_text.py")


def abstract_batch_shapes(data_cfg, batch_size: int) -> dict:
  s, n = int(data_cfg.image_size), int(data_cfg.text_len)
  i32 = np.dtype(np.int32)
  return {"image": ((batch_size, s, s, 3), np.dtype(np.uint8)), "tokens": ((batch_size, n), i32),
          "kind": ((batch_size,), i32), "text_length": ((batch_size,), i32), "answer_start": ((batch_size,), i32)}


@dataclasses.dataclass(frozen=True)
class _Decode(grain.transforms.Map):
  image_size: int
  text_len: int

  def map(self, record):
    return decode_record(record, self.image_size, self.text_len)


def make_pipeline(data_cfg, *, split: str, batch_size: int, seed: int, train: bool,
                  process_index: int = 0, process_count: int = 1, normalizer=None):
  """Batches of examples (module docstring). train: shuffled, repeated; eval: one pass in order."""
  del normalizer
  meta = load_meta(data_cfg)
  return text.record_pipeline(image_text_dir(data_cfg), split, _Decode(meta["image_size"], meta["text_len"]),
                              abstract_batch_shapes(data_cfg, batch_size), batch_size=batch_size, seed=seed,
                              seed_word=17, train=train, process_index=process_index,
                              process_count=process_count, what="examples")


def answer_vocabulary(meta: dict) -> Sequence[str]:
  """The distinct caption answers of the train split (the task names a model can give)."""
  return sorted(meta["splits"]["train"]["answers"])
