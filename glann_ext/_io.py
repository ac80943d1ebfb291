"""File writes that a kill, a second process or a planted link cannot turn into lost or misplaced data.

* :func:`atomic_write`: temp file in the target's folder, fsync, ``os.replace``: a kill leaves the old file or
  the new one, and a link at the target is replaced, never followed.
* :func:`append_line`: appends without following a link (a planted one is replaced by a plain file).
* :func:`open_regular`, :func:`read_regular`: read a file of a run folder only if it is a regular file (a
  FIFO planted in its place would block the reader for ever; :class:`NotARegularFile`).
* :func:`ensure_dir`: a real folder (a link in its place is replaced).
* :func:`remove_stale_temps`: the temp files that killed atomic writes left behind (our names only, in the
  folders a run writes, and none a live writer holds locked).
* :class:`FolderLock`: one writer per folder (``fcntl.flock``, released by the OS when the process dies).
* :func:`folder_locked`: one writer per folder without a lock file (a flock on the folder itself).
* :func:`load_tensors_only`: reading a tensor file someone handed us without running code from it
  (:class:`UnsafeTensorFile` says why a file is refused).
* :func:`cache_root`: where downloads and the evaluators' weights are cached.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import hashlib
import os
import pickle
import re
import stat
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from .errors import RunFolderError

try:
    import fcntl
except ImportError:  # Windows: no flock; a run folder's temp files then go by name alone
    fcntl = None  # type: ignore[assignment]

TEMP_SUFFIX = ".tmp"
# atomic_write's temp names: mkstemp's "<name>.<8 random characters>.tmp"; nothing else is ever removed
TEMP_NAME = re.compile(r".+\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))
# the folders of a run folder that atomic_write writes into ("." is the run folder itself)
RUN_WRITE_FOLDERS = (".", "checkpoints", "checkpoints/step-*", "images")
LOCK_FILE = ".lock"
TORCH_ARCHIVE_MAGIC = b"PK\x03\x04"  # torch.save's zip archive; anything else is a bare pickle


@functools.cache  # one folder a process
def cache_root() -> Path:
    """``~/.cache/glann_ext``: downloaded data sets and the evaluators' trained weights. Where no home folder
    can be found (no ``$HOME`` and a user with no passwd entry, as in some containers), a fresh private
    folder under the temp dir (``mkdtemp``, mode 0700): shared with no other user, kept by no later process,
    and removed at exit when nothing was cached in it."""
    try:
        return Path.home() / ".cache" / "glann_ext"
    except RuntimeError:  # "Could not determine home directory"
        folder = Path(tempfile.mkdtemp(prefix="glann_ext-cache-"))
        atexit.register(_remove_if_empty, folder)
        return folder


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # something was cached in it (or it is gone): left as it is
        folder.rmdir()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Calls ``write(f)`` on a temporary file in ``path``'s folder, fsyncs it, then ``os.replace``s it
    onto ``path`` and fsyncs the folder: a kill at any moment leaves the old file or the new one, never a
    partial one, and a symbolic link at ``path`` is replaced by the file rather than followed. Creates
    missing parent folders; the file gets the usual permissions of a new file."""
    path = Path(path)
    nearest_folder(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the temp name is the target's (cut to 200 bytes: a legal 250-byte name plus the random part and
        # suffix would pass the 255 bytes a file system allows) and a random part
        prefix = os.fsdecode(os.fsencode(path.name)[:200]).encode("utf-8", "ignore").decode("utf-8", "ignore")
        fd, tmp = locked_temp(path.parent, prefix + ".")
    except OSError as exc:  # named by the file asked for, not by a folder on the way or the temp file
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    lock = os.dup(fd)  # the flock lives while either is open: past the file's close, until it is replaced
    try:
        usual_permissions(tmp)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = _first_cause(exc)
        if isinstance(cause, OSError):  # named by the file the caller asked for, not the temp file
            named = str(path) if cause.filename in (None, tmp) else cause.filename
            raise OSError(cause.errno, cause.strerror or str(cause), named) from exc
        if cause is not exc:  # a Ctrl-C that torch's archive writer turned into its own RuntimeError
            raise cause from None
        raise
    finally:
        os.close(lock)
    _fsync_dir(path.parent)
    return path


def usual_permissions(path: str | Path) -> None:
    """Give ``path`` the permissions a new file gets (0666 less the umask; ``mkstemp`` makes 0600), where the
    file system keeps permissions at all (one that refuses chmod, a FAT or CIFS mount, keeps its own)."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(PermissionError, NotImplementedError):
        os.chmod(path, 0o666 & ~umask)


def locked_temp(folder: str | Path, prefix: str) -> tuple[int, str]:
    """``mkstemp`` in ``folder``, with an exclusive ``flock`` held on it while the file is open: the mark by
    which :func:`remove_if_stale` (in another process, such as a training resumed while ``glann eval`` writes
    into the run folder) tells a temp file being written from one a killed writer left. On a file system
    without flock the file goes unmarked."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=folder)
        if fcntl is None:
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # no flock here: unmarked, and taken by name alone
            return fd, tmp
        if os.fstat(fd).st_nlink:  # not removed as stale between mkstemp and flock
            return fd, tmp
        os.close(fd)


# flock's answers for a lock another process holds (an NFS client's emulation may answer as fcntl does)
_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def remove_if_stale(path: Path) -> bool:
    """Delete ``path``, a :func:`locked_temp` file, unless a live writer holds its lock; the lock is taken
    before the unlink and held through it, so a writer between ``mkstemp`` and ``flock`` sees its file gone
    and starts another. Where the file system has no flock, by name alone. Whether it was removed."""
    fd = _open_to_lock(path)
    if fd is None:
        return False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in _HELD:  # a live writer's
                    return False
                # else no flock on this file system: by name alone, as before the mark
        path.unlink(missing_ok=True)
    except OSError:  # not ours to remove
        return False
    finally:
        os.close(fd)
    return True


def _open_to_lock(path: Path) -> int | None:
    """``path`` opened for writing where allowed (NFS's flock, an fcntl lock, is exclusive only on a file open
    for writing), else for reading; None when it is gone (replaced onto its target) or not ours to open."""
    for mode in (os.O_RDWR, os.O_RDONLY):
        try:
            return os.open(path, mode | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except PermissionError:
            continue
        except OSError:
            return None
    return None


def nearest_folder(path: str | Path) -> Path:
    """The nearest existing ancestor of ``path`` (the folder a write creates the missing ones in); a
    NotADirectoryError names it when it is a file (``--grid x.npy/a.png``), not the errno of a mkdir."""
    parent = Path(path).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{parent} is not a folder", str(path))
    return parent


def _first_cause(exc: BaseException) -> BaseException:
    """The KeyboardInterrupt or OSError behind ``exc`` (``exc`` itself, or one in its context chain: torch's
    archive writer replaces an exception raised in the file's ``write`` by a RuntimeError), else ``exc``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (KeyboardInterrupt, OSError)):
            return seen
        seen = seen.__context__
    return exc


def _fsync_dir(folder: Path) -> None:
    try:  # make a rename durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` and a newline to ``path``, creating it. A symbolic link at ``path`` is removed first
    (never followed), so nothing outside the folder is written; anything else that is not a regular file (a
    FIFO, a device) is :class:`NotARegularFile`, never written to or waited on."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads: opening it for writing would have waited
            raise NotARegularFile(path, "FIFO") from None
        raise
    with os.fdopen(fd, "a") as f:
        _require_regular(f.fileno(), path)
        f.write(line + "\n")


class NotARegularFile(OSError):
    """A FIFO, device, socket or folder where a run folder's file was expected. ``str()`` is the reason
    alone (callers add the path); ``filename`` is the path."""

    def __init__(self, path: str | Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"a {kind}, not a regular file", str(path))

    def __str__(self) -> str:
        return str(self.strerror)


_FILE_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISDIR, "folder"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))  # fmt: skip


def _require_regular(fd: int, path: str | Path) -> None:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFile(path, next((kind for test, kind in _FILE_KINDS if test(mode)), "special file"))


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for reading in binary mode (links followed), if it is a regular file; else
    :class:`NotARegularFile`. A FIFO planted in a run folder would otherwise block the reader for ever (its
    ``open`` waits for a writer), and a device could stream without end. The open itself never waits
    (``O_NONBLOCK``, cleared once the file is known to be regular)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        _require_regular(fd, path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _digest_of_open(f: BinaryIO, algorithm: str) -> str:
    """The hex digest of the open file ``f`` from its start, read in blocks of 1 MiB; ``f`` is left at its end."""
    digest = hashlib.new(algorithm)
    f.seek(0)
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def read_regular(path: str | Path, limit: int | None = None) -> bytes:
    """The bytes of ``path`` (:func:`open_regular`: a regular file, or :class:`NotARegularFile`); with a
    ``limit``, a file holding more bytes is an ``OSError`` (EFBIG) naming it, before it is read (a sparse
    terabyte planted in a run folder was read until memory ran out)."""
    with open_regular(path) as f:
        if limit is not None and os.fstat(f.fileno()).st_size > limit:
            raise OSError(errno.EFBIG, f"more than {limit:,} bytes, too large to be read", str(path))
        return f.read()


def ensure_dir(path: str | Path) -> Path:
    """``path`` as a real folder: created if missing, and a symbolic link in its place replaced by an empty
    folder (so later writes into it cannot land elsewhere)."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_stale_temps(folder: str | Path, subfolders: tuple[str, ...] = RUN_WRITE_FOLDERS) -> list[Path]:
    """Delete the temp files that interrupted :func:`atomic_write` calls left in ``folder``'s ``subfolders``
    (glob patterns; by default the folders a run writes). Only :func:`atomic_write`'s own temp names
    (``<name>.<8 random characters>.tmp``) are removed, never recursively and never through a link: other
    files, and other folders, are the user's; so is a temp file a live writer still holds (``glann eval``
    writing into a run folder while its training resumes): each :func:`atomic_write` locks its temp file
    (:func:`locked_temp`), and the lock dies with its process. Call it while holding the folder's
    :class:`FolderLock`. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for pattern in subfolders:
        places = [folder] if pattern == "." else folder.glob(pattern)
        for place in places:
            if not _real_folder_below(folder, place):
                continue
            for p in place.iterdir():
                regular = p.is_file() and not p.is_symlink()
                if TEMP_NAME.fullmatch(p.name) and regular and remove_if_stale(p):
                    removed.append(p)
    return removed


def _real_folder_below(folder: Path, place: Path) -> bool:
    """Whether ``place`` (``folder`` or a path below it) is a folder reached without passing a link: a linked
    ``checkpoints`` makes its ``step-*`` folders lie outside ``folder``, though none of them is a link."""
    for depth in range(len(place.relative_to(folder).parts) + 1):
        part = folder.joinpath(*place.relative_to(folder).parts[:depth])
        if (depth and part.is_symlink()) or not part.is_dir():
            return False
    return True


class FolderLock:
    """An exclusive lock on ``folder/.lock`` (``fcntl.flock``), held while the object is open.

    The OS releases it when the process dies, so a killed job never leaves the folder locked. A second
    writer gets :class:`~glann_ext.errors.RunFolderError` "run folder in use (pid N)" at once instead of
    waiting. Use as a context manager; ``with FolderLock(run): ...``.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> FolderLock:
        import fcntl

        # the folder itself may be a link the user made (a run kept elsewhere): followed, unlike links inside
        # it (ensure_dir), which only a planted link could be
        if self.folder.is_symlink() and not self.folder.is_dir():
            raise RunFolderError(
                f"{self.folder}: a link to {os.readlink(self.folder)}, which is not a folder"
            )
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        if path.is_symlink():
            path.unlink()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            _require_regular(fd, path)  # a FIFO or device cannot hold the holder's pid
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except NotARegularFile:
            os.close(fd)
            raise
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(f"{self.folder}: run folder in use (pid {holder})") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Drop the lock. A folder this lock created and nothing else wrote into is removed again, so a
        command that failed before writing anything leaves no trace."""
        if self.fd is None:
            return
        if self.created and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
            (self.folder / LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # another process wrote into it meanwhile: its folder now
                self.folder.rmdir()
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> FolderLock:  # noqa: PYI034 (typing.Self is Python 3.11+; we support 3.9)
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def folder_locked(folder: str | Path, busy: str) -> Iterator[Path]:
    """An exclusive ``fcntl.flock`` on the folder itself (made if missing, and removed again if left empty),
    held for the block; a second holder gets :class:`~glann_ext.errors.RunFolderError` ``"{folder}: {busy}"``
    at once. No lock file is written (a command that fails leaves the folder as it was), and a
    :class:`FolderLock` on the same folder is another lock. Where the file system cannot lock a folder (some
    network mounts; Windows, without ``fcntl``), the block runs unlocked."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # a guard, not a requirement
        yield folder
        return
    fd, held = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)), False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(f"{folder}: {busy}") from None
        yield folder
    finally:
        if created and held:  # a refused caller that also found it missing must not remove the holder's
            with contextlib.suppress(OSError):  # rmdir removes only an empty folder
                folder.rmdir()
        os.close(fd)  # closing drops the flock


def _name_of_open_file(f: BinaryIO, path: str | Path) -> str:
    """A name that opens the file ``f`` has open (Linux's ``/proc/self/fd``, the BSDs' and macOS's
    ``/dev/fd``), so a file put in ``path``'s place after it was checked is not the one read; ``path`` itself
    where the system has neither."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        name = f"{folder}/{f.fileno()}"
        if os.path.exists(name):
            return name
    return str(path)


class UnsafeTensorFile(Exception):
    """A file :func:`load_tensors_only` does not load; its text says why, as one phrase for the caller's
    own error."""


BARE_PICKLE = "not a torch.save archive; a bare pickle is never loaded"
HOLDS_OBJECTS = "it holds objects other than tensors and plain values, and loading those can run code"
NOT_TORCH = "not a torch.save file (neither a zip archive nor a pickle of protocol 2 or later)"
PICKLE_PROTOCOL_2 = b"\x80"  # the first byte of every pickle of protocol 2 or later: a legacy torch.save file


def load_tensors_only(
    path: str | Path, *, map_location: Any = "cpu", mmap: bool = False, archive_only: bool = True
) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain values only, so no code in the file runs.

    :class:`UnsafeTensorFile` for a file that is not a torch.save file at all (an empty one, a text file: it
    starts neither as a zip archive nor as a pickle of protocol 2+), for a file holding other objects, and for
    a bare pickle unless
    ``archive_only`` is False (a legacy torch file of tensors, such as torchvision's older weights). torch's
    own message for such a file suggests ``weights_only=False``, and its notice about a bare pickle's
    protocol asks the user to file an issue with torch: neither reaches the user. :class:`NotARegularFile`
    for a FIFO or device in the file's place (:func:`open_regular`). Every other error of ``torch.load``
    (``OSError``, ``RuntimeError``, ``EOFError`` for a damaged file) propagates."""
    with open_regular(path) as f:
        return _load_open_tensors(f, path, map_location, mmap, archive_only)


class FileChangedWhileRead(OSError):
    """The file :func:`load_tensors_with_digest` read was written to while it read it."""


def load_tensors_with_digest(
    path: str | Path, algorithm: str, *, map_location: Any = "cpu", archive_only: bool = True
) -> tuple[Any, str]:
    """:func:`load_tensors_only` of ``path``, and the hex digest (``hashlib``'s ``algorithm``) of the bytes
    it loaded. Both read one open file, so a file put in ``path``'s place between a digest and a load (two
    opens) cannot split them, and :class:`FileChangedWhileRead` when the file was written in place meanwhile
    (its size or modification times moved: ``torch.save`` over it truncates and rewrites the same file)."""
    with open_regular(path) as f:
        before = _write_stamp(f)
        digest = _digest_of_open(f, algorithm)
        loaded = _load_open_tensors(f, path, map_location, False, archive_only)
        if _write_stamp(f) != before:
            raise FileChangedWhileRead(f"{path}: the file changed while it was read")
        return loaded, digest


def _write_stamp(f: BinaryIO) -> tuple[int, int, int]:
    """What a write to the open file ``f`` changes: its size, modification and status-change times (ns)."""
    st = os.fstat(f.fileno())
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _load_open_tensors(
    f: BinaryIO, path: str | Path, map_location: Any, mmap: bool, archive_only: bool
) -> Any:
    """:func:`load_tensors_only`'s checks and load, on ``f`` (``path``'s open file) from its start."""
    f.seek(0)
    head = f.read(len(TORCH_ARCHIVE_MAGIC))
    if head != TORCH_ARCHIVE_MAGIC and not head.startswith(PICKLE_PROTOCOL_2):
        raise UnsafeTensorFile(NOT_TORCH)  # a text file, an image: not "objects that could run code"
    if archive_only and head != TORCH_ARCHIVE_MAGIC:
        raise UnsafeTensorFile(BARE_PICKLE)
    f.seek(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        try:  # torch maps only a file named by a path: one naming the open file checked above
            return torch.load(
                _name_of_open_file(f, path) if mmap else f,
                map_location=map_location,
                weights_only=True,
                mmap=mmap,
            )
        except pickle.UnpicklingError:
            raise UnsafeTensorFile(HOLDS_OBJECTS) from None
