"""One compile worker of an image build, run by the env's own interpreter (docs/design.md §14.3).

    python -I compile_worker.py VENV PREFIX CACHE SIGNAL_FD  < its input

Input, part one: ``.py`` paths, one a line, up to an empty line; for each the worker links the
cached ``.pyc`` into place, then writes to SIGNAL_FD ``"{sources} {restored}\\n"`` and
``"{size} {entry} {path}\\n"`` per file the cache lacked, and closes it.  Part two, to the end:
``"{entry} {path}"`` lines, files to compile exactly as ``python -m compileall -q -s VENV -p
PREFIX --invalidation-mode unchecked-hash`` does, each new ``.pyc`` linked into the cache as
``entry``.  The last output line is ``dscheduler-compile: stored=N``; exit 3 when some files did
not compile (their errors printed as compileall prints them).  A cache entry is
``CACHE/{h[:2]}/{h}.pyc``, ``h`` the sha256 of the path inside the venv, a NUL byte and the
file's bytes (CACHE is one per interpreter, prefix and mode); entries appear by one
``link`` (or a copy renamed into place) and never change.  Standard library only, Python 3.9+.
"""

import compileall
import errno
import hashlib
import importlib.util
import os
import py_compile
import shutil
import sys

SOME_FAILED = 3


def entry_name(relative, source):
    """The cache entry's name (below CACHE) for ``source`` bytes at ``relative``."""
    h = hashlib.sha256(relative + b"\0")
    h.update(source)
    name = h.hexdigest()
    return f"{name[:2]}/{name}.pyc"


def link(source, target):
    """Hard-link ``source`` to the new name ``target``; across filesystems, a copy
    renamed into place.  FileExistsError when ``target`` exists, FileNotFoundError
    when ``source`` or the folder of ``target`` does not."""
    try:
        os.link(source, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        if os.path.lexists(target):
            raise FileExistsError(target) from None
        partial = f"{target}.{os.getpid()}.partial"
        shutil.copyfile(source, partial)
        os.replace(partial, target)


class Worker:
    def __init__(self, venv, prefix, cache):
        self.venv, self.prefix, self.cache = venv, prefix, cache
        self.cut = len(os.fsencode(venv)) + 1
        self.made = set()  # __pycache__ folders known to exist
        self.sources = self.restored = self.stored = 0
        self.missing = []  # (size, entry below the cache, source) the cache lacks
        self.todo = []  # (source, entry) to compile
        self.cache_error = None

    def restore(self, source):
        """Link the cached .pyc of ``source`` in place, or note it for compiling."""
        try:
            with open(source, "rb") as f:
                data = f.read()
        except (FileNotFoundError, IsADirectoryError):
            return  # a dangling symlink, or one to a folder: compileall skips it too
        self.sources += 1
        name = entry_name(os.fsencode(source)[self.cut:], data)
        if self.place(os.path.join(self.cache, name), importlib.util.cache_from_source(source)):
            self.restored += 1
        else:
            self.missing.append((len(data), name, source))

    def place(self, entry, pyc):
        """Link ``entry`` to ``pyc``; False when the cache has no such entry."""
        folder = os.path.dirname(pyc)
        try:
            link(entry, pyc)
        except FileExistsError:
            # The wheel shipped a .pyc of its own (numpy 2.2.6 does): compileall
            # would write over it, so the cached one takes its place.
            os.unlink(pyc)
            link(entry, pyc)
        except FileNotFoundError:
            # compileall makes no __pycache__ where nothing compiles: make one only
            # for an entry the cache has.
            if folder in self.made or not os.path.exists(entry):
                return False
            os.makedirs(folder, exist_ok=True)
            self.made.add(folder)
            return self.place(entry, pyc)
        self.made.add(folder)
        return True

    def compile(self):
        ok = True
        mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
        for source, entry in self.todo:
            if not compileall.compile_file(source, quiet=1, stripdir=self.venv,
                                           prependdir=self.prefix, invalidation_mode=mode):
                ok = False
            elif self.cache_error is None:
                self.store(importlib.util.cache_from_source(source), entry)
        return ok

    def store(self, pyc, entry):
        try:
            os.makedirs(os.path.dirname(entry), exist_ok=True)
            link(pyc, entry)
            self.stored += 1
        except FileExistsError:
            pass  # another build on this node stored it meanwhile
        except FileNotFoundError:
            pass  # compileall kept no .pyc (it printed why)
        except OSError as err:  # a cache: a full disk there must not fail the build
            self.cache_error = err


def main():
    venv, prefix, cache, signal_fd = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    worker = Worker(venv, prefix, cache)
    lines = iter(sys.stdin.buffer)
    for line in lines:
        if line == b"\n":
            break
        worker.restore(os.fsdecode(line[:-1]))
    with open(signal_fd, "wb") as signal:
        signal.write(f"{worker.sources} {worker.restored}\n".encode())
        for size, name, source in worker.missing:
            signal.write(f"{size} {name} ".encode() + os.fsencode(source) + b"\n")
    for line in lines:
        name, _, source = line[:-1].partition(b" ")
        worker.todo.append((os.fsdecode(source), os.path.join(cache, os.fsdecode(name))))
    ok = worker.compile()
    if worker.cache_error is not None:
        print(f"dscheduler-compile: bytecode cache not updated: {worker.cache_error}")
    print(f"dscheduler-compile: stored={worker.stored}")
    return 0 if ok else SOME_FAILED


if __name__ == "__main__":
    sys.exit(main())
