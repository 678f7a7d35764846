"""Files at the moment of use: a claimed job's inputs are opened once, through the checked path, and
copied into its run folder; the run reads only the copies.

Each input (seeds, the ICL pool, eval files, decontamination sets) is resolved and checked against the
data roots again, then opened with O_NOFOLLOW on the final component, and what was *opened* is
checked from the file descriptor itself (`/proc/self/fd/N` on Linux; elsewhere the resolved path's
device and inode must equal the descriptor's). A save_to_disk folder is walked through directory
descriptors, every entry opened relative to its verified parent with O_NOFOLLOW, symlinks refused.
The copies go to `RUN/inputs/<slot>/<name>` and the config is rewritten to them, so nothing swapped
after the check (a file, a folder, a symlink anywhere on the path) can be read by the run.

Model folders and .gguf files (local and vllm-offline teachers, judges, the student, GKD's teacher) are
walked and copied the same way, into `RUN/inputs/model-<slot>/`, so a symlink inside a model folder, or a
file swapped after the check, is never loaded. A regular file with more than one hard link is refused
(checked with fstat on the opened descriptor): a hard link in a data root can name a file outside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from distilforge.schemas import JobConfig
from distilforge.service.settings import Settings
from distilforge.service.validate import HARD_LINK, MAX_DEPTH, MAX_ENTRIES, _inside, resolve_input

_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class InputRefused(RuntimeError):
    """An input that failed its check at the moment of use; `loc` is its dotted path in the config."""

    def __init__(self, loc: str, msg: str):
        super().__init__(f"{loc}: {msg}")
        self.loc, self.msg = loc, msg


def _opened_path(fd: int, expected: Path) -> Path:
    """The real path of what `fd` refers to."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        st, st2 = os.fstat(fd), os.stat(expected)
        if (st.st_dev, st.st_ino) != (st2.st_dev, st2.st_ino):
            raise InputRefused("", "the file changed while it was opened") from None
        return expected


class _Copier:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.entries = 0
        self.bytes = 0

    def open_checked(self, loc: str, value: str) -> int:
        resolved = resolve_input(value, self.settings)
        if resolved is None:
            raise InputRefused(loc, "not a path inside the data roots (DISTILFORGE_DATA_ROOTS)")
        return self.open_resolved(loc, resolved)

    def open_resolved(self, loc: str, resolved: Path) -> int:
        try:
            fd = os.open(resolved, _FLAGS)
        except OSError:
            raise InputRefused(loc, "cannot be opened (missing, or a symlink swapped in after the check)") from None
        try:
            real = _opened_path(fd, resolved)
            s = self.settings
            if not _inside(real, s.data_roots) or _inside(real, s.excluded_paths):
                raise InputRefused(loc, "what was opened is outside the data roots")
        except InputRefused as exc:
            os.close(fd)
            raise InputRefused(loc, exc.msg) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def copy(self, loc: str, fd: int, dest: Path, depth: int = 0) -> None:
        """Copy what `fd` refers to (a regular file or a folder) to `dest`; closes `fd`."""
        try:
            st = os.fstat(fd)
            mode = st.st_mode
            self.entries += 1
            if self.entries > MAX_ENTRIES:
                raise InputRefused(loc, f"more than {MAX_ENTRIES} files")
            if stat.S_ISREG(mode) and st.st_nlink > 1:
                raise InputRefused(loc, HARD_LINK)
            if stat.S_ISREG(mode):
                self._copy_file(loc, fd, dest)
                fd = -1  # closed by the file object
            elif stat.S_ISDIR(mode):
                if depth > MAX_DEPTH:
                    raise InputRefused(loc, f"folders nested deeper than {MAX_DEPTH} levels")
                dest.mkdir(parents=True, exist_ok=False)
                with os.scandir(fd) as entries:
                    names = [(e.name, e.is_symlink()) for e in entries]
                for name, is_link in sorted(names):
                    if is_link:
                        raise InputRefused(loc, "a folder input may not contain symlinks")
                    try:
                        child = os.open(name, _FLAGS, dir_fd=fd)
                    except OSError:
                        raise InputRefused(loc, "a file inside the folder cannot be opened") from None
                    self.copy(loc, child, dest / name, depth + 1)
            else:
                raise InputRefused(loc, "not a regular file or folder")
        finally:
            if fd >= 0:
                os.close(fd)

    def _copy_file(self, loc: str, fd: int, dest: Path) -> None:
        # Clear O_NONBLOCK (only there so that opening a FIFO cannot hang the worker).
        os.set_blocking(fd, True)
        limit = self.settings.limits.input_bytes
        with os.fdopen(fd, "rb") as src, open(dest, "xb") as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                self.bytes += len(chunk)
                if self.bytes > limit:
                    raise InputRefused(loc, f"inputs larger than {limit} bytes (DISTILFORGE_LIMITS_INPUT_BYTES)")
                dst.write(chunk)


def prepare_run_dir(run_dir: Path, settings: Settings) -> None:
    """Create the job's run folder (or reuse it on a resume); a symlink in its place is refused."""
    runs = settings.runs_dir
    runs.mkdir(parents=True, exist_ok=True)
    if runs.is_symlink() or run_dir.parent != runs:
        raise InputRefused("(run folder)", "the runs folder is not a plain folder")
    with contextlib.suppress(FileExistsError):
        os.mkdir(run_dir, 0o750)
    st = os.lstat(run_dir)
    if not stat.S_ISDIR(st.st_mode):
        raise InputRefused("(run folder)", "the job's run folder is not a plain folder (a symlink?)")


def materialise(config: JobConfig, run_dir: Path, settings: Settings) -> JobConfig:
    """Copy every input file and model folder into `run_dir/inputs` through checked descriptors; returns
    the config rewritten to the copies."""
    config = config.model_copy(deep=True)
    target = run_dir / "inputs"
    staging = run_dir / ".inputs.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    copier = _Copier(settings)

    def take(loc: str, slot: str, value: str) -> str:
        fd = copier.open_checked(loc, value)
        name = Path(value).name or "input"
        (staging / slot).mkdir(parents=True, exist_ok=True)
        copier.copy(loc, fd, staging / slot / name)
        return str(target / slot / name)

    try:
        config.seeds.path = take("seeds.path", "seeds", config.seeds.path)
        if config.generation.icl.pool:
            config.generation.icl.pool = take("generation.icl.pool", "icl-pool", config.generation.icl.pool)
        for i, f in enumerate(config.eval.files):
            f.path = take(f"eval.files.{i}.path", f"eval-{i}", f.path)
        for i, spec in enumerate(config.filters):
            if spec.name == "decontaminate":
                spec.eval_sets = [take(f"filters.{i}.eval_sets.{j}", f"decontaminate-{i}-{j}", s)
                                  for j, s in enumerate(spec.eval_sets)]
        _models(config, settings, take)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return config


def _models(config: JobConfig, settings: Settings, take: Any) -> None:
    """Model folders and .gguf files under the data roots are copied like data (embedded aliases and
    allowed Hub ids are not files of the roots)."""
    from distilforge.models import EMBEDDED
    from distilforge.service.validate import _is_model_path

    def copied(loc: str, slot: str, spec: str) -> str:
        if spec in EMBEDDED or spec in settings.allowed_models or not _is_model_path(spec):
            return spec
        return take(loc, f"model-{slot}", spec)

    t = config.teacher
    if t.backend in ("local", "vllm-offline"):
        t.model = copied("teacher.model", "teacher", t.model)
    for i, spec in enumerate(config.filters):
        if spec.name == "judge" and spec.teacher.backend in ("local", "vllm-offline"):
            spec.teacher.model = copied(f"filters.{i}.teacher.model", f"judge-{i}", spec.teacher.model)
    config.train.student = copied("train.student", "student", config.train.student)
    if config.train.gkd.teacher is not None:
        config.train.gkd.teacher = copied("train.gkd.teacher", "gkd-teacher", config.train.gkd.teacher)
