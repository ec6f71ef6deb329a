"""Converts a TFRecord RLDS dataset (TFDS layout) to ArrayRecord, once.

  .venv/bin/python scripts/convert_rlds.py --src DIR --dst DIR [--overwrite]

Records are copied byte for byte (see wam_jax/data/rlds.py); the result opens
with ``tfds.builder_from_directory(dst).as_data_source(split)``. A --dst that is
--src, contains it or lies inside it (symlinks resolved) is refused before
anything is read or deleted. Bad arguments: one line on stderr, exit status 2.
"""

import sys

from absl import app
from absl import flags

import os as _os  # noqa: E402
import sys as _sys  # noqa: E402
_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))  # run from a checkout too

from wam_jax.data import rlds

_SRC = flags.DEFINE_string("src", None, "TFRecord dataset version dir (has dataset_info.json).")
_DST = flags.DEFINE_string("dst", None, "Output dir, e.g. wam_data/bridge_dataset/1.0.0.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --dst.")
flags.mark_flags_as_required(["src", "dst"])


def main(argv):
  del argv
  try:
    r = rlds.convert_to_array_record(_SRC.value, _DST.value, overwrite=_OVERWRITE.value)
  except ValueError as e:
    print(f"convert_rlds: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"{r['episodes']} episodes, {r['bytes'] / 2**20:.1f} MiB in {r['seconds']:.2f} s "
        f"({r['episodes'] / max(r['seconds'], 1e-9):.0f} episodes/s, "
        f"{r['bytes'] / 2**20 / max(r['seconds'], 1e-9):.0f} MiB/s) -> {_DST.value}")


if __name__ == "__main__":
  app.run(main)
