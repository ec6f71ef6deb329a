"""Converts a TFRecord RLDS dataset (TFDS layout) to ArrayRecord, once.

  .venv/bin/python scripts/convert_rlds.py --src DIR --dst DIR [--overwrite]
  .venv/bin/python scripts/convert_rlds.py --src DIR --dst DIR --runner=direct \
      [--beam_options='--direct_num_workers=2 --direct_running_mode=multi_processing']

Records are copied byte for byte (see wam_jax/data/rlds.py); the result opens
with ``tfds.builder_from_directory(dst).as_data_source(split)``. Without
--runner the copy runs in this process. With --runner (``direct``, or a Beam
runner such as DataflowRunner/FlinkRunner/SparkRunner with its options in
--beam_options) it is an Apache Beam pipeline, one element per shard,
resumable by shard: rerun the same command after a failure and finished shards
are skipped (wam_jax/data/convert_beam.py; needs ``pip install -e '.[beam]'``).
Both give byte-identical files. A --dst that is --src, contains it or lies
inside it (symlinks resolved) is refused before anything is read or deleted.
Bad arguments: one line on stderr, exit status 2.
"""

import shlex
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
_RUNNER = flags.DEFINE_string("runner", "", "'' converts in-process; 'direct' or a Beam runner name "
                              "runs the Beam pipeline (resumable by shard).")
_BEAM_OPTIONS = flags.DEFINE_string("beam_options", "", "Extra Beam pipeline options (one string).")
flags.mark_flags_as_required(["src", "dst"])


def main(argv):
  del argv
  try:
    if _RUNNER.value:
      from wam_jax.data import convert_beam
      r = convert_beam.convert(_SRC.value, _DST.value, runner=_RUNNER.value,
                               beam_args=shlex.split(_BEAM_OPTIONS.value), overwrite=_OVERWRITE.value)
    else:
      r = rlds.convert_to_array_record(_SRC.value, _DST.value, overwrite=_OVERWRITE.value)
  except ValueError as e:
    print(f"convert_rlds: {e}", file=sys.stderr)
    sys.exit(2)
  how = f"runner {_RUNNER.value}, {r['shards']} shards ({r['skipped']} already done)" if _RUNNER.value \
      else "in-process"
  print(f"{r['episodes']} episodes, {r['bytes'] / 2**20:.1f} MiB in {r['seconds']:.2f} s "
        f"({r['episodes'] / max(r['seconds'], 1e-9):.0f} episodes/s, "
        f"{r['bytes'] / 2**20 / max(r['seconds'], 1e-9):.0f} MiB/s; {how}) -> {_DST.value}")


if __name__ == "__main__":
  app.run(main)
