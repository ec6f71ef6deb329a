"""Text for the language model: a trained subword tokenizer, packed sequences, the Grain pipeline.

Prepared once by ``scripts/prepare_text.py`` into ``text_dir(config.data)``::

  tokenizer.json        byte-level BPE (the ``tokenizers`` package): exact round trip
  train.array_record    one record per packed row: tokens and segment ids [2, R]
  val.array_record      (R = data.seq_len + 1: inputs are row[:-1], targets row[1:])
  meta.json             seq_len, vocab_size, record dtype, documents and rows per split

Packing: every document is encoded, followed by EOS, and the documents are
laid end to end and cut into rows of R tokens. ``segment_ids`` number the
documents within a row from 1 (0 = padding at the end of the last row); the
model attends and predicts only within a segment, so a row never mixes
documents. Val holds whole documents (every edition of a held-out play), so
its perplexity is on text the model never saw.

ArrayRecord rather than a .npy memmap: it is the format the robot data path
already reads (``rlds.py``), Grain's ArrayRecordDataSource gives random access
by row (global shuffle, sharding by process, an iterator state that resumes
exactly), and the prepared split is a single file per split whatever its size.
"""

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import shutil
import tarfile
import tempfile
from typing import Iterable, Iterator, Optional, Sequence

import grain
import numpy as np

PAD_ID, EOS_ID = 0, 1
SPECIAL_TOKENS = ("<pad>", "<eos>")  # ids 0 and 1
DEFAULT_DIRNAME = "shakespeare_text"


def _tokenizers():
  try:
    import tokenizers
  except ImportError as e:
    raise ImportError("the language-model data path needs the `tokenizers` package: "
                      "pip install -e '.[lm]'") from e
  return tokenizers


# ----------------------------------------------------------------------------
# Tokenizer.
# ----------------------------------------------------------------------------
class TextTokenizer:
  """A trained byte-level BPE tokenizer: ``encode(text) -> int32 [L]`` and back, exactly."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.vocab_size = tokenizer.get_vocab_size()

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int) -> "TextTokenizer":
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return cls(tok)

  @classmethod
  def from_json(cls, text: str) -> "TextTokenizer":
    return cls(_tokenizers().Tokenizer.from_str(text))

  @classmethod
  def load(cls, path) -> "TextTokenizer":
    return cls.from_json(pathlib.Path(path).read_text())

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids, np.int32) for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in np.asarray(ids)], skip_special_tokens=True)

  def to_json(self) -> str:
    return self.tokenizer.to_str()

  def save(self, path) -> None:
    pathlib.Path(path).write_text(self.to_json())

  def to_dict(self) -> dict:
    """The checkpoint asset: the whole tokenizer, so a checkpoint decodes without the data dir."""
    return {"name": "bpe", "vocab_size": self.vocab_size, "json": self.to_json()}


def tokenizer_from_dict(spec: dict) -> TextTokenizer:
  """The tokenizer saved in a checkpoint's assets (``assets["tokenizer"]``)."""
  if spec.get("name") != "bpe":
    raise ValueError(f"tokenizer {spec.get('name')!r} is not a trained text tokenizer (expected 'bpe')")
  return TextTokenizer.from_json(spec["json"])


# ----------------------------------------------------------------------------
# Packing and records.
# ----------------------------------------------------------------------------
def pack(docs: Iterable[np.ndarray], row_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Documents (token ids, without EOS) -> rows (tokens [row_len], segment_ids [row_len]).

  Each document gets an EOS and keeps one segment id per row it touches
  (numbered from 1 within a row); the last row is padded with PAD_ID / 0.
  """
  tokens = np.full(row_len, PAD_ID, np.int32)
  segments = np.zeros(row_len, np.int32)
  fill, seg = 0, 0
  for doc in docs:
    doc = np.append(np.asarray(doc, np.int32), EOS_ID)
    seg += 1
    while len(doc):
      take = min(row_len - fill, len(doc))
      tokens[fill:fill + take], segments[fill:fill + take] = doc[:take], seg
      fill, doc = fill + take, doc[take:]
      if fill == row_len:
        yield tokens.copy(), segments.copy()
        tokens[:], segments[:], fill = PAD_ID, 0, 0
        seg = 1 if len(doc) else 0  # a document continuing into the next row is its segment 1
  if fill:
    yield tokens, segments


def unpack(rows: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
  """Inverse of ``pack`` for rows in order: the documents' token ids (EOS removed)."""
  docs, current = [], []
  for tokens, segments in rows:
    for t, s in zip(tokens, segments):
      if s == 0:
        continue
      if t == EOS_ID:
        docs.append(np.asarray(current, np.int32))
        current = []
      else:
        current.append(t)
  return docs


def record_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def encode_record(tokens: np.ndarray, segments: np.ndarray, dtype) -> bytes:
  return np.stack([tokens, segments]).astype(dtype).tobytes()


def decode_record(record: bytes, dtype, row_len: int) -> dict:
  row = np.frombuffer(record, dtype).reshape(2, row_len).astype(np.int32)
  return {"tokens": row[0], "segment_ids": row[1]}


# ----------------------------------------------------------------------------
# Preparing a corpus (scripts/prepare_text.py).
# ----------------------------------------------------------------------------
def read_archive(path, members: str = "/texts/") -> list[tuple[str, str]]:
  """(name, text) of the ``*.txt`` files under a ``texts/`` folder of a source archive, sorted by
  name; ``metadata.txt`` and exact duplicates (the same text under two names) are skipped."""
  docs, seen = [], set()
  with tarfile.open(path) as tar:
    for m in sorted(tar.getmembers(), key=lambda m: m.name):
      if not (m.isfile() and m.name.endswith(".txt") and members in m.name) or m.name.endswith("/metadata.txt"):
        continue
      text = tar.extractfile(m).read().decode("utf-8", "replace").replace("\r\n", "\n")
      digest = hashlib.sha256(text.encode()).hexdigest()
      if digest not in seen:
        seen.add(digest)
        docs.append((m.name, text))
  return docs


def split_documents(docs, val_match: Sequence[str]):
  """(train docs, val docs): a document is val if its name contains any of ``val_match``."""
  is_val = lambda name: any(v and v in pathlib.Path(name).name for v in val_match)  # noqa: E731
  train = [d for d in docs if not is_val(d[0])]
  val = [d for d in docs if is_val(d[0])]
  if not train or not val:
    raise ValueError(f"val_documents={list(val_match)} leaves {len(train)} train and {len(val)} val "
                     "documents; both must be non-empty")
  return train, val


@contextlib.contextmanager
def atomic_directory(out_dir):
  """Yields a temporary sibling of ``out_dir`` to fill; renamed to ``out_dir`` only if the block
  finishes, removed if it raises, so a half-written directory is never read. ``out_dir`` must not
  exist yet."""
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists():
    raise FileExistsError(f"{out_dir} exists; remove it to prepare again")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
  try:
    yield tmp
    tmp.rename(out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def prepare(docs: Sequence[tuple[str, str]], out_dir, *, vocab_size: int, seq_len: int,
            val_match: Sequence[str], source: str = "", log=print) -> dict:
  """Trains the tokenizer on the train documents and writes ``out_dir`` atomically
  (built in a temporary sibling directory, renamed at the end). Returns meta.json's content."""
  from array_record.python.array_record_module import ArrayRecordWriter
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists():
    raise FileExistsError(f"{out_dir} exists; remove it to prepare again")
  train_docs, val_docs = split_documents(docs, val_match)
  log(f"documents: {len(train_docs)} train, {len(val_docs)} val "
      f"({sum(len(t) for _, t in val_docs) / 1e6:.2f} MB held out: {[pathlib.Path(n).name for n, _ in val_docs]})")
  tok = TextTokenizer.train((t for _, t in train_docs), vocab_size)
  log(f"tokenizer: byte-level BPE, {tok.vocab_size} tokens")
  dtype, row_len = record_dtype(tok.vocab_size), seq_len + 1
  with atomic_directory(out_dir) as tmp:
    splits = {}
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
      ids = tok.encode_batch([t for _, t in split_docs])
      writer = ArrayRecordWriter(str(tmp / f"{split}.array_record"), "group_size:1")
      rows = 0
      for tokens, segments in pack(ids, row_len):
        writer.write(encode_record(tokens, segments, dtype))
        rows += 1
      writer.close()
      n_tokens = int(sum(len(i) + 1 for i in ids))
      splits[split] = {"documents": [n for n, _ in split_docs], "rows": rows, "tokens": n_tokens,
                       "chars": int(sum(len(t) for _, t in split_docs))}
      log(f"{split}: {len(split_docs)} documents, {n_tokens} tokens "
          f"({splits[split]['chars'] / n_tokens:.2f} chars/token), {rows} rows of {row_len}")
    tok.save(tmp / "tokenizer.json")
    meta = {"seq_len": seq_len, "row_len": row_len, "vocab_size": tok.vocab_size, "dtype": dtype.name,
            "pad_id": PAD_ID, "eos_id": EOS_ID, "source": source, "splits": splits}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
  log(f"wrote {out_dir}")
  return meta


# ----------------------------------------------------------------------------
# The pipeline the trainer calls when config.data.kind == "text".
# ----------------------------------------------------------------------------
def text_dir(data_cfg) -> pathlib.Path:
  """data.text_dir, else <data root>/shakespeare_text (data root: data.data_dir, $WAM_DATA_DIR, ./wam_data)."""
  from wam_jax.data import pipeline
  return pathlib.Path(data_cfg.text_dir) if data_cfg.get("text_dir") else pipeline.resolve_data_dir(data_cfg) / DEFAULT_DIRNAME


def is_prepared(directory) -> bool:
  """Whether ``directory`` is a finished prepared directory (text or image-text): its meta.json is
  written inside ``atomic_directory``, so it exists only once everything else does."""
  return (pathlib.Path(directory) / "meta.json").exists()


def read_prepared_meta(directory, data_cfg, fields, *, what: str, script: str) -> dict:
  """meta.json of a prepared directory, each of ``fields`` checked against config.data (the
  error names the field and the fix)."""
  directory = pathlib.Path(directory)
  if not is_prepared(directory):
    raise ValueError(f"data.kind={data_cfg.get('kind')!r}: no prepared {what} in {directory}; run "
                     f"python scripts/{script} --out_dir={directory}")
  meta = json.loads((directory / "meta.json").read_text())
  for field in fields:
    if int(data_cfg[field]) != meta[field]:
      raise ValueError(f"config.data.{field}={data_cfg[field]} but {directory} ({what}) was prepared "
                       f"with {field}={meta[field]}; set --config.data.{field}={meta[field]} or prepare again")
  return meta


def load_meta(data_cfg) -> dict:
  """meta.json of the prepared corpus, checked against data.seq_len and data.vocab_size."""
  return read_prepared_meta(text_dir(data_cfg), data_cfg, ("seq_len", "vocab_size"), what="corpus",
                            script="prepare_text.py")


def abstract_batch_shapes(data_cfg, batch_size: int) -> dict:
  """{key: (shape, dtype)} of one batch."""
  row = (batch_size, int(data_cfg.seq_len) + 1)
  return {"tokens": (row, np.dtype(np.int32)), "segment_ids": (row, np.dtype(np.int32))}


@dataclasses.dataclass(frozen=True)
class _Decode(grain.transforms.Map):
  dtype: str
  row_len: int

  def map(self, record):
    return decode_record(record, self.dtype, self.row_len)


def make_pipeline(data_cfg, *, split: str, batch_size: int, seed: int, train: bool,
                  process_index: int = 0, process_count: int = 1, normalizer=None):
  """Batches {tokens, segment_ids: int32 [B, seq_len + 1]} of packed rows.

  train: this process's rows, shuffled every epoch, repeated. Eval: one pass
  in order (every held-out row once per evaluation; the trainer stops at the
  end or after train.val_batches).
  """
  del normalizer  # text is not normalized
  meta = load_meta(data_cfg)
  directory = text_dir(data_cfg)
  return record_pipeline(directory, split, _Decode(meta["dtype"], meta["row_len"]),
                         abstract_batch_shapes(data_cfg, batch_size), batch_size=batch_size, seed=seed,
                         seed_word=13, train=train, process_index=process_index, process_count=process_count,
                         what="rows")


def record_pipeline(directory, split: str, decode: grain.transforms.Map, shapes: dict, *, batch_size: int,
                    seed: int, seed_word: int, train: bool, process_index: int, process_count: int, what: str):
  """The Grain pipeline over ``<directory>/<split>.array_record`` shared by the prepared data kinds:
  this process's records, shuffled (seed from [seed, seed_word]) and repeated when ``train``, else
  one pass in order; ``decode`` maps a record to a dict of ``shapes`` (one batch: {key: (shape, dtype)})."""
  from wam_jax.data import pipeline
  directory = pathlib.Path(directory)
  source = grain.sources.ArrayRecordDataSource([str(directory / f"{split}.array_record")])
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if len(ds) < batch_size:
    raise ValueError(f"split {split!r} of {directory}: {len(ds)} {what} for process {process_index}, "
                     f"fewer than one batch of {batch_size}")
  if train:
    ds = ds.shuffle(seed=int(np.random.SeedSequence([seed, seed_word]).generate_state(1)[0])).repeat()
  ds = ds.map(decode)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=2 * batch_size))
  ds = ds.batch(batch_size, drop_remainder=True)
  spec = {k: pipeline.ArraySpec(shape, dtype) for k, (shape, dtype) in shapes.items()}
  return pipeline.Pipeline(iterator=iter(ds), normalizer=None, tokenizer=TextTokenizer.load(directory / "tokenizer.json"),
                           dataset_names=(directory.name,), element_spec=spec)
