"""TFRecord -> ArrayRecord conversion as an Apache Beam pipeline (any runner).

The in-process converter (``rlds.convert_to_array_record``) copies shard after
shard in one Python loop. Here each source shard is one Beam element, copied
by ``rlds.convert_shard`` (the same code, so the output is byte-identical) on
whichever worker Beam gives it: the DirectRunner on one machine, Dataflow,
Flink or Spark for the full Open-X mixture. Output shards map one-to-one to
input shards and keep their records in source order, so the result does not
depend on scheduling.

Resumable by shard: shards land in ``<dst>.partial/`` (a stable name) through
a per-attempt temporary file renamed into place, then a ``<name>.done`` marker
with its record count. A rerun skips every shard with a marker; the driver
checks the markers against dataset_info.json, writes the metadata and renames
``<dst>.partial`` to ``<dst>``. On a cluster, --src and --dst must be paths
every worker sees (a shared or mounted filesystem).

apache-beam is optional: ``pip install -e '.[beam]'``.
"""

import json
import os
import pathlib
import shutil
import time
import uuid
from typing import Sequence

from wam_jax.data import rlds

DONE = ".done"


def partial_dir(dst) -> pathlib.Path:
  dst = pathlib.Path(dst)
  return dst.with_name(f"{dst.name}.partial")


def convert_one(job: rlds.ShardJob, partial: str) -> dict:
  """Copies one shard into ``partial`` unless its marker says it is done.

  Returns {"name", "records", "bytes", "skipped"}.
  """
  partial = pathlib.Path(partial)
  marker = partial / (job.name + DONE)
  if marker.exists():
    return dict(json.loads(marker.read_text()), skipped=True)
  tmp = partial / f".{job.name}.tmp-{uuid.uuid4().hex}"
  try:
    count, nbytes = rlds.convert_shard(job, tmp)
    os.replace(tmp, partial / job.name)
  finally:
    if tmp.exists():
      tmp.unlink()
  result = {"name": job.name, "records": count, "bytes": nbytes}
  marker_tmp = marker.with_name(f".{marker.name}.tmp-{uuid.uuid4().hex}")
  marker_tmp.write_text(json.dumps(result))
  os.replace(marker_tmp, marker)  # The marker appears only once the shard is complete.
  return dict(result, skipped=False)


def _pipeline_options(runner: str, beam_args: Sequence[str]):
  from apache_beam.options.pipeline_options import PipelineOptions
  name = {"direct": "DirectRunner"}.get(runner.lower(), runner)
  return PipelineOptions(list(beam_args), runner=name)


def convert(src, dst, *, runner: str = "direct", beam_args: Sequence[str] = (),
            overwrite: bool = False) -> dict:
  """Converts ``src`` (TFRecord RLDS) into ``dst`` (ArrayRecord) with Beam.

  Args:
    runner: "direct" (this machine) or a Beam runner name (DataflowRunner,
      FlinkRunner, SparkRunner...).
    beam_args: extra Beam pipeline options, e.g. ["--direct_num_workers=2",
      "--direct_running_mode=multi_processing"] or a cluster's project/region.
    overwrite: replace an existing ``dst`` (the partial dir is always resumed).
  Returns {"episodes", "bytes", "seconds", "shards", "skipped"}.
  """
  try:
    import apache_beam as beam
  except ImportError:
    raise ValueError("--runner needs apache-beam: pip install -e '.[beam]' "
                     "(or convert in-process without --runner)") from None
  info, jobs = rlds.plan_conversion(src, dst, overwrite=overwrite)
  partial = partial_dir(dst)
  rlds.check_disjoint(src, partial)
  partial.mkdir(parents=True, exist_ok=True)
  for stale in partial.glob(".*.tmp-*"):  # Left by a killed attempt.
    stale.unlink()
  already = {j.name for j in jobs if (partial / (j.name + DONE)).exists()}
  start = time.perf_counter()
  with beam.Pipeline(options=_pipeline_options(runner, beam_args)) as p:
    _ = (p
         | "shards" >> beam.Create([j for j in jobs if j.name not in already])
         | "spread" >> beam.Reshuffle()
         | "copy" >> beam.Map(convert_one, str(partial)))
  episodes = nbytes = 0
  for job in jobs:
    marker = partial / (job.name + DONE)
    if not marker.exists():
      raise ValueError(f"shard {job.name} was not converted (no {marker}); rerun to resume")
    done = json.loads(marker.read_text())
    if job.expected >= 0 and done["records"] != job.expected:
      raise ValueError(f"{marker}: {done['records']} records, dataset_info says {job.expected}")
    episodes, nbytes = episodes + done["records"], nbytes + done["bytes"]
  for marker in partial.glob("*" + DONE):
    marker.unlink()
  rlds.finish_conversion(src, info, partial, dst)
  return dict(episodes=episodes, bytes=nbytes, seconds=time.perf_counter() - start,
              shards=len(jobs), skipped=len(already))


def clean_partial(dst) -> None:
  shutil.rmtree(partial_dir(dst), ignore_errors=True)
