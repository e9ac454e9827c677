"""A fake `gs://` object store for tests: no network, no gcsfs.

`register(root)` makes fsspec's `gcs`/`gs` protocol (what `etils.epath` uses for `gs://` when
TensorFlow is absent) a local directory: `gs://bucket/key` is the file `root/bucket/key`. It
behaves like an object store where that matters here: an object written through `open` appears
only when its writer closes it (whole, never half-written), and there is no rename (GCS has none:
a test passing on this store does not depend on one). Subprocesses get it through
tests/fake_gcs_site/sitecustomize.py with FAKE_GCS_ROOT set.
"""
import os
import uuid

import fsspec
from fsspec.implementations import local

ENV = "FAKE_GCS_ROOT"


class FakeGCS(local.LocalFileSystem):
  """`gs://bucket/key` -> `$FAKE_GCS_ROOT/bucket/key`, objects visible once closed, no rename."""

  protocol = ("gs", "gcs")
  root_marker = ""

  def __init__(self, *args, **kwargs):
    kwargs.pop("finalize_on_close", None)  # gcsfs's option, as epath passes it
    super().__init__(*args, auto_mkdir=True, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = os.fspath(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        return os.path.join(os.environ[ENV], path[len(prefix):]).rstrip("/")
    return path.rstrip("/") if path.startswith(os.environ[ENV]) else path

  def _open(self, path, mode="rb", block_size=None, **kwargs):
    if "w" not in mode and "a" not in mode:
      return super()._open(path, mode, block_size, **kwargs)
    if "a" in mode:
      raise NotImplementedError("fake gs://: objects cannot be appended to")
    path = self._strip_protocol(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return _Upload(path, mode)

  def mv(self, *args, **kwargs):
    raise NotImplementedError("fake gs://: an object store has no rename")

  rename = mv


class _Upload:
  """A file that becomes its object on close (a kill before that leaves nothing behind)."""

  def __init__(self, path, mode):
    self._path = path
    self._tmp = os.path.join(os.environ[ENV], f".uploads-{uuid.uuid4().hex}")
    self._f = open(self._tmp, mode)  # pylint: disable=consider-using-with

  def write(self, data):
    return self._f.write(data)

  def close(self):
    if not self._f.closed:
      self._f.close()
      os.replace(self._tmp, self._path)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def register(root=None):
  """Registers the fake for `gs://` in this process (root: FAKE_GCS_ROOT, else the argument)."""
  if root is not None:
    os.environ[ENV] = os.fspath(root)
  fsspec.register_implementation("gcs", FakeGCS, clobber=True)
  fsspec.register_implementation("gs", FakeGCS, clobber=True)
  from etils.epath import backend  # pylint: disable=import-outside-toplevel
  backend.fsspec_backend._get_filesystem.cache_clear()  # epath caches filesystems by name
