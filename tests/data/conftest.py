"""Fixtures for the data tests (helpers live in synthetic.py)."""

from tests.data.synthetic import bridge_ar_root, syn_data_dir  # noqa: F401  (fixtures)
