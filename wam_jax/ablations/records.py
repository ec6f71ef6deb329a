"""Run records: what a finished sweep run measured, small enough to commit, so seeds add up across machines.

A sweep's run directories (checkpoints, logs, videos) stay on the machine that trained them; a
session's machine does not outlive the session. The protocol's three seeds of five methods take
longer than one session, so every finished run leaves a *record* beside the sweep's committed
report, and the report, the claims and the harness read the records as finished runs:

  experiments/results/<sweep>/records/v<version>/sweep.json            the sweep's cells (as <workdir>/sweep.json)
  experiments/results/<sweep>/records/v<version>/<cell>/seed_<s>.json  one run

A record (~15 KB) holds its provenance (``source``: "run", or how it was rebuilt), the commit(s)
it ran, the training columns of the report (steps, batch, FLOPs, examples/s, wall time), the last
held-out ``val/*`` metrics, and per evaluation ("" = the training one, else an extra evaluation's
name) every episode (task, seed, success, length), latency, eval time and the rollout-consistency
summary. An episode's ``task`` may be None: a record rebuilt from a pooled table that kept the
run's total but not its per-task split (``report.aggregate`` and ``compare`` then leave it out of
per-task numbers and say so).

``experiments/report.py DIR --out=experiments/results/<sweep>`` writes the records of DIR's runs
and reads the ones already there: a run finished on this machine replaces its record, a recorded
run not on this machine is reported from its record. ``experiments/ablations.py`` skips a
recorded run unless a run it is about to do needs its checkpoint (a pretraining stage).
"""

import json
import math
import os
import pathlib
import re
from typing import Optional

REPO = pathlib.Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "results"  # <sweep>/records/v<version>/ under it


def records_dir(sweep: str, version: int, root=None) -> pathlib.Path:
  """Where the records of ``sweep`` v``version`` live (``root``: default experiments/results)."""
  return pathlib.Path(root or RESULTS) / sweep / "records" / f"v{version}"


def parse_workdir_name(name: str) -> Optional[tuple[str, int]]:
  """(sweep, version) of a sweep workdir named ``<sweep>_v<version>`` (as claims.py names them), else None."""
  m = re.fullmatch(r"(.+)_v(\d+)", name)
  return (m.group(1), int(m.group(2))) if m else None


def path(rdir: pathlib.Path, cell: str, seed: int) -> pathlib.Path:
  return rdir / cell / f"seed_{seed}.json"


def _write(p: pathlib.Path, data) -> None:
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = p.with_name(p.name + ".tmp")
  tmp.write_text(json.dumps(data, sort_keys=True) + "\n")  # one line: a record is read by code, diffed whole
  os.replace(tmp, p)


def write_meta(rdir: pathlib.Path, meta: dict) -> None:
  _write(rdir / "sweep.json", meta)


def read_meta(rdir: pathlib.Path) -> Optional[dict]:
  p = rdir / "sweep.json"
  return json.loads(p.read_text()) if p.exists() else None


def write(rdir: pathlib.Path, record: dict) -> pathlib.Path:
  p = path(rdir, record["cell"], int(record["seed"]))
  _write(p, record)
  return p


def load_all(rdir: pathlib.Path, meta: dict) -> list[dict]:
  """The records of ``meta``'s sweep and version in ``rdir``, cells in sweep order, then seeds.
  A record of another sweep or version there is an error that names the file."""
  out = []
  for cell in meta["cells"]:
    for p in sorted((rdir / cell["name"]).glob("seed_*.json"), key=lambda q: int(q.stem[5:])):
      rec = json.loads(p.read_text())
      if (rec.get("sweep"), rec.get("version")) != (meta["name"], meta["version"]):
        raise ValueError(f"{p}: a record of {rec.get('sweep')} v{rec.get('version')}, not of "
                         f"{meta['name']} v{meta['version']}: records of a sweep version live under "
                         "its own records/v<version>/")
      out.append(rec)
  return out


def recorded(rdir: Optional[pathlib.Path]) -> dict:
  """{(cell, seed): the names of its recorded evaluations ("" = the training one)} of the records in
  ``rdir`` ({} for None or no such directory)."""
  if rdir is None or not rdir.is_dir():
    return {}
  return {(p.parent.name, int(p.stem[5:])): set(json.loads(p.read_text())["evals"])
          for p in rdir.glob("*/seed_*.json")}


def walls(rdir: Optional[pathlib.Path]) -> dict:
  """{cell: [wall seconds of each recorded run]} of the records in ``rdir`` ({} if none): what a
  run of the cell took on the machines that finished it, for the harness's estimates."""
  out = {}
  if rdir is None or not rdir.is_dir():
    return out
  for p in sorted(rdir.glob("*/seed_*.json")):
    wall = json.loads(p.read_text()).get("wall_seconds")
    if isinstance(wall, (int, float)) and math.isfinite(wall) and wall > 0:  # rebuilt records may hold NaN
      out.setdefault(p.parent.name, []).append(float(wall))
  return out


def compact_episodes(episodes) -> list[dict]:
  """The per-episode fields the report and the claims use (the rest stays in results.json)."""
  keep = ("task", "seed", "success", "length")
  return [{k: e[k] for k in keep if k in e} for e in episodes]
