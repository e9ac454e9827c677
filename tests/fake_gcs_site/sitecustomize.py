"""Registers tests/fake_gcs.py's fake `gs://` store at interpreter start-up when FAKE_GCS_ROOT is
set: a test puts this directory on PYTHONPATH to run commands as written (docs/multihost.md)."""
import os

if os.environ.get("FAKE_GCS_ROOT"):
  from tests import fake_gcs
  fake_gcs.register()
