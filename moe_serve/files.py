"""Files that appear only once complete: the one way run outputs are written, on a local disk or
an object store (`gs://`, `s3://`, ... through `etils.epath` and fsspec).

`atomic_open(path)` on a local path writes under a temporary name in the same directory, flushes
to disk and renames over `path`. On an object store it writes the whole object once, when the
`with` block ends without an exception (an object is never visible half-written there). Either
way a kill, a full disk (ENOSPC) or an exception in the caller leaves `path` as it was (absent, or
its previous content); locally a kill can leave the temporary `PATH.tmpTAG` (TAG: the writer's
`tag`, by default its process id) for its writer to remove (experiments/sweep.py).

The other helpers (join, exists, listdir, ...) take either kind of path, so code written with them
runs unchanged on a `gs://` workdir.
"""
import contextlib
import io
import os
import shutil

_SCHEME = "://"


def is_local(path):
  """Whether `path` is a local file (not `scheme://...`; `file://` counts as local)."""
  path = os.fspath(path)
  return _SCHEME not in path or path.startswith("file://")


def _local(path):
  path = os.fspath(path)
  return path[len("file://"):] if path.startswith("file://") else path


def epath(path):
  """`path` as an `etils.epath.Path` (imported on first use: local runs never need it)."""
  from etils import epath as epath_lib  # pylint: disable=import-outside-toplevel
  return epath_lib.Path(os.fspath(path))


def join(path, *names):
  """`os.path.join` that keeps `gs://bucket/...` a URL."""
  if is_local(path):
    return os.path.join(os.fspath(path), *names)
  return "/".join([os.fspath(path).rstrip("/")] + [n.strip("/") for n in names])


def exists(path):
  return os.path.exists(_local(path)) if is_local(path) else epath(path).exists()


def isfile(path):
  return os.path.isfile(_local(path)) if is_local(path) else epath(path).is_file()


def isdir(path):
  return os.path.isdir(_local(path)) if is_local(path) else epath(path).is_dir()


def makedirs(path):
  """Creates a directory and its parents if missing (object stores have no directories: a
  no-op there beyond what the store's library does)."""
  if is_local(path):
    os.makedirs(_local(path), exist_ok=True)
  else:
    epath(path).mkdir(parents=True, exist_ok=True)


def listdir(path):
  """Names in a directory (sorted); [] if it does not exist."""
  if is_local(path):
    return sorted(os.listdir(_local(path))) if os.path.isdir(_local(path)) else []
  p = epath(path)
  return sorted(c.name for c in p.iterdir()) if p.exists() else []


def remove(path):
  """Removes a file or a whole directory tree; nothing if it is gone already."""
  if is_local(path):
    local = _local(path)
    if os.path.isdir(local):
      shutil.rmtree(local, ignore_errors=True)
    elif os.path.lexists(local):
      with contextlib.suppress(FileNotFoundError):
        os.remove(local)
  else:
    p = epath(path)
    with contextlib.suppress(FileNotFoundError):
      if p.is_dir():
        p.rmtree()
      elif p.exists():
        p.unlink()


def open_read(path, binary=False, newline=None, errors=None):
  """A file for reading, local or remote (text: UTF-8, decoding `errors` as in `open`)."""
  if is_local(path):
    return (open(_local(path), "rb") if binary else
            open(_local(path), encoding="utf-8", newline=newline, errors=errors))
  f = epath(path).open("rb")
  return f if binary else io.TextIOWrapper(f, encoding="utf-8", newline=newline, errors=errors)


def read_text(path):
  with open_read(path) as f:
    return f.read()


def tmp_name(path, tag=None):
  """The temporary name `atomic_open` writes `path` under locally."""
  return f"{_local(path)}.tmp{os.getpid() if tag is None else tag}"


@contextlib.contextmanager
def atomic_open(path, newline=None, binary=False, tag=None):
  """A text file (UTF-8), or a binary one, that replaces `path` atomically when the `with` block
  ends. `tag` names the local temporary (default: the process id)."""
  if not is_local(path):
    buf = io.BytesIO() if binary else io.StringIO(newline=newline)
    yield buf
    data = buf.getvalue()
    with epath(path).open("wb") as f:  # one whole object, written once
      f.write(data if binary else data.encode("utf-8"))
    return
  path = _local(path)
  tmp = tmp_name(path, tag)
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


def write_text_atomic(path, text, tag=None):
  with atomic_open(path, tag=tag) as f:
    f.write(text)


@contextlib.contextmanager
def local_dir(path):
  """A local directory standing in for `path` (e.g. for a library that only writes local files,
  like TensorBoard's writer): `path` itself if local; else a temporary directory whose files are
  uploaded to `path`, each as one whole object, when the `with` block ends."""
  if is_local(path):
    makedirs(path)
    yield _local(path)
    return
  import tempfile  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory(prefix="moe_serve-") as tmp:
    yield tmp
    upload_tree(tmp, path)


def upload_tree(local, dest):
  """Copies every file under local directory `local` to `dest` (each file one whole object)."""
  for root, _, names in os.walk(local):
    rel = os.path.relpath(root, local)
    folder = dest if rel == "." else join(dest, *rel.split(os.sep))
    if names:
      makedirs(folder)
    for name in names:
      target = join(folder, name)
      with open(os.path.join(root, name), "rb") as src, atomic_open(target, binary=True) as f:
        f.write(src.read())


_DOWNLOADS = {}  # remote directory -> its local copy (one per process)


def local_copy(path, log=print):
  """A local directory holding `path`'s files (for readers that need local files: Orbax
  checkpoints, safetensors): `path` itself if local; else a copy downloaded once per process
  into a temporary directory (kept until the process ends)."""
  if is_local(path):
    return _local(path)
  if path not in _DOWNLOADS:
    import tempfile  # pylint: disable=import-outside-toplevel
    local = tempfile.mkdtemp(prefix="moe_serve-params-")
    count, todo = 0, [(epath(path), local)]
    while todo:  # a walk by listings (object stores refuse recursive globs)
      folder, into = todo.pop()
      for src in folder.iterdir():
        dst = os.path.join(into, src.name)
        if src.is_dir():
          todo.append((src, dst))
          continue
        os.makedirs(into, exist_ok=True)
        with src.open("rb") as f_in, open(dst, "wb") as f_out:
          shutil.copyfileobj(f_in, f_out)
        count += 1
    if not count:
      raise FileNotFoundError(f"{path}: no files there")
    log(f"model: {path} copied to {local} ({count} files)")
    _DOWNLOADS[path] = local
  return _DOWNLOADS[path]
