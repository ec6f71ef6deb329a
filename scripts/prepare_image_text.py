r"""Prepares the VLM's image-text pairs once (issue 13, stage 2), from the project's robot episodes.

  .venv/bin/python scripts/prepare_image_text.py            # video pool + Bridge sample, stage-1 tokenizer
  .venv/bin/python scripts/prepare_image_text.py --datasets=metaworld_demos --frames_per_episode=8

Each dataset is read through the registry from --data_dir (its train split;
and the val split, whole held-out episodes, of --val_datasets); ``bridge`` is read from
--bridge_dir (the real BridgeData V2 sample). The tokenizer is the language
model's (--tokenizer: the prepared corpus's tokenizer.json), so stage 2's text
ids are stage 1's. Output layout and questions: wam_jax/data/image_text.py;
written atomically to --out_dir.
"""

import os
import pathlib
import sys
import time
import types

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from wam_jax.data import image_text, pipeline, registry, rlds, text  # noqa: E402

_DATASETS = flags.DEFINE_list("datasets", ["metaworld_video_pool", "bridge"],
                              "Registry names; `bridge` is read from --bridge_dir.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Data root ('' -> $WAM_DATA_DIR, else ./wam_data: the trainer's).")
_BRIDGE_DIR = flags.DEFINE_string(
    "bridge_dir", str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/bridge_debug/bridge_dataset/1.0.0"),
    "The Bridge sample's dataset directory (RLDS).")
_VAL_DATASETS = flags.DEFINE_list(
    "val_datasets", ["metaworld_video_pool"],
    "Datasets whose val split is held out (accuracy = naming these tasks; Bridge's val instructions are "
    "free text never seen in training, so no answer could be exact).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "The stage-1 language model's tokenizer.json ('' -> "
                                 f"<data root>/{text.DEFAULT_DIRNAME}/tokenizer.json).")
_OUT_DIR = flags.DEFINE_string("out_dir", "", f"Output directory ('' -> <data root>/{image_text.DEFAULT_DIRNAME}); "
                               "prepared once: a finished one is kept (remove it to prepare again).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Frames are resized to S x S: config.data.image_size.")
_TEXT_LEN = flags.DEFINE_integer("text_len", 48, "Tokens per example (prompt + answer + EOS): config.data.text_len.")
_FRAMES = flags.DEFINE_integer("frames_per_episode", 4, "Evenly spaced frames taken from each episode.")


def main(argv):
  del argv
  t0 = time.perf_counter()
  root = pipeline.resolve_data_dir(types.SimpleNamespace(data_dir=_DATA_DIR.value))
  out_dir = pathlib.Path(_OUT_DIR.value or root / image_text.DEFAULT_DIRNAME)
  if text.is_prepared(out_dir):
    print(f"{out_dir} is prepared already (remove it to prepare again)")
    return
  readers = {"train": [], "val": []}
  for name in _DATASETS.value:
    spec = registry.get_spec(name)
    directory = (pathlib.Path(_BRIDGE_DIR.value) if name == "bridge"
                 else root / spec.directory)
    if not directory.exists():
      sys.exit(f"error: dataset {name!r}: {directory} does not exist")
    camera = next(iter(spec.cameras))
    for split in ("train", "val") if name in _VAL_DATASETS.value else ("train",):
      readers[split].append((name, rlds.RldsReader(directory, split, spec), camera))
  tokenizer = _TOKENIZER.value or root / text.DEFAULT_DIRNAME / "tokenizer.json"
  meta = image_text.prepare(readers, tokenizer, out_dir, image_size=_IMAGE_SIZE.value,
                            text_len=_TEXT_LEN.value, frames_per_episode=_FRAMES.value)
  for split, counts in meta["splits"].items():
    print(f"{split}: {counts['examples']} examples {counts['by_kind']} from {counts['by_dataset']}; "
          f"{len(counts['answers'])} distinct captions")
  print(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  app.run(main)
