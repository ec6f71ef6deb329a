"""The MetaWorld protocol as presets, the sweep harness and the report (shared/PROTOCOL.md).

  protocol.py  tasks, seeds, N, evaluation settings; the protocol datasets (resumable generation)
  sweep.py     a named, versioned list of cells; each (cell, seed) trained + evaluated in a subprocess
  report.py    finished runs -> results.csv, results.md, plots (never retrains)
"""
