"""Files that appear only once complete: the one way run outputs are written.

`atomic_open(path)` writes under a temporary name in the same directory, flushes to disk and
renames over `path`. A kill, a full disk (ENOSPC) or an exception in the caller leaves `path` as it
was (absent, or its previous content) and no temporary file behind.
"""
import contextlib
import os


@contextlib.contextmanager
def atomic_open(path, newline=None, binary=False):
  """A text file (UTF-8), or a binary one, that replaces `path` atomically when the `with` block
  ends."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with (open(tmp, "wb") if binary else
          open(tmp, "w", encoding="utf-8", newline=newline)) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text_atomic(path, text):
  with atomic_open(path) as f:
    f.write(text)
