"""Exported policies: artifact writer, loader, policy server and client.

``load`` (and everything it imports) is import-light: no model code, no Orbax.
``export_policy`` imports model code, so it is loaded only when called.
"""

from wam_jax.export.loader import Artifact, ExportedPolicy, load  # noqa: F401


def export_policy(*args, **kwargs):
  """``wam_jax.export.writer.export_policy`` (imported on first use: it pulls in model code)."""
  from wam_jax.export import writer  # pylint: disable=g-import-not-at-top
  return writer.export_policy(*args, **kwargs)
