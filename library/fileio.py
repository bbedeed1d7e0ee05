"""Atomic file writes: a reader never sees a half-written file, a crash leaves the previous one intact."""
import contextlib
import errno
import os
import tempfile

from .errors import UserError


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path in the same folder; on success fsync it and rename it over `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        raise UserError(f"could not save {path} (cannot create a file in {folder}): {describe_os_error(e)}") from e
    os.close(fd)
    _ordinary_permissions(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise UserError(f"could not save {path}: {describe_os_error(e)}; the previous file (if any) is "
                        f"unchanged") from e
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(folder)


def remove_abandoned_temp_files(folder, name_prefix):
    """Remove the hidden temp files/folders that atomic writes of `name_prefix*` left behind when their process
    was killed mid-save (`.<name>.<random>.tmp`, `.<name>.tmp-<random>`). Returns the names removed."""
    import shutil

    removed = []
    if not os.path.isdir(folder):
        return removed
    for entry in os.listdir(folder):
        rest = entry[len(name_prefix) + 1:]
        ours = entry.startswith("." + name_prefix) and rest[:1] in ("-", ".")  # not `.<name>2...` of another run
        if ours and (entry.endswith(".tmp") or ".tmp-" in entry):
            full = os.path.join(folder, entry)
            with contextlib.suppress(OSError):
                shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
                removed.append(entry)
    return removed


def describe_os_error(error):
    """The reason in words; a full disk or quota says so plainly (the usual cause of a failed save)."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({reason}); free some space and try again"
    return reason


def fsync_dir(folder):
    """Make a rename inside `folder` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _ordinary_permissions(path):
    """mkstemp creates 0600; saved models must be readable like any file the user writes (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.remove(path)
