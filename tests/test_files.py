"""Atomic writes: the previous file survives any failed write byte for byte, and no temporary
file is left behind (real file-size limit in a subprocess, injected permission, disk-full and
Ctrl-C faults)."""

import errno
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from karras_jax._files import atomic_write, check_writable_folder

OLD = b"previous content\n"


def _leftovers(folder, keep=("target.bin",)):
    return sorted(name for name in os.listdir(folder) if name not in keep)


def test_writes_the_whole_file_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "target.bin"
    target.write_bytes(OLD)
    assert atomic_write(target, lambda f: f.write(b"new")) == target
    assert target.read_bytes() == b"new" and _leftovers(tmp_path) == []


def test_a_failing_writer_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "target.bin"
    target.write_bytes(OLD)

    def half_then_fail(f):
        f.write(b"half of the new ")
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == OLD and _leftovers(tmp_path) == []


def test_ctrl_c_while_writing_leaves_the_previous_file(tmp_path):
    target = tmp_path / "target.bin"
    target.write_bytes(OLD)

    def interrupted(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_bytes() == OLD and _leftovers(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EFBIG])
def test_os_errors_are_reported_naming_the_file(tmp_path, code):
    target = tmp_path / "target.bin"
    target.write_bytes(OLD)

    def fail(f):
        f.write(b"some")
        raise OSError(code, os.strerror(code))

    with pytest.raises(OSError, match=f"cannot write {target}") as info:
        atomic_write(target, fail)
    assert info.value.errno == code
    assert target.read_bytes() == OLD and _leftovers(tmp_path) == []


def test_a_folder_that_refuses_new_files(tmp_path, monkeypatch):
    # Root ignores permission bits, so a read-only folder is injected where the temporary
    # file is created (mkstemp is the first thing that touches the folder).
    target = tmp_path / "target.bin"
    target.write_bytes(OLD)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OSError, match=f"cannot write {target}: Permission denied"):
        atomic_write(target, lambda f: f.write(b"new"))
    with pytest.raises(OSError):
        check_writable_folder(tmp_path)
    assert target.read_bytes() == OLD and _leftovers(tmp_path) == []


def test_file_size_limit_in_a_real_process(tmp_path):
    # RLIMIT_FSIZE makes the kernel refuse writes past 1000 bytes (Python ignores SIGXFSZ,
    # so the write fails with EFBIG instead of killing the process).
    target = tmp_path / "target.bin"
    target.write_bytes(OLD)
    script = textwrap.dedent(f"""
        import resource, sys
        from karras_jax._files import atomic_write
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        try:
            atomic_write({str(target)!r}, lambda f: f.write(b"x" * 100_000))
        except OSError as err:
            print("OSError", err.errno, err)
            sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 3, result.stderr
    assert f"OSError {errno.EFBIG} " in result.stdout and str(target) in result.stdout
    assert target.read_bytes() == OLD and _leftovers(tmp_path) == []


def test_check_writable_folder_creates_it_and_leaves_nothing(tmp_path):
    folder = check_writable_folder(tmp_path / "a" / "b")
    assert folder.is_dir() and os.listdir(folder) == []
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        check_writable_folder(blocker / "inside")


def test_an_existing_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "target.bin"
    target.write_bytes(OLD)
    os.chmod(target, 0o600)
    atomic_write(target, lambda f: f.write(b"new"))
    assert os.stat(target).st_mode & 0o777 == 0o600


def test_a_symlinked_target_is_written_through(tmp_path):
    real = tmp_path / "real.bin"
    real.write_bytes(OLD)
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    atomic_write(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["link.bin", "real.bin"]


@pytest.mark.parametrize("make, message", [("file", "{out} is a file, not a folder"),
                                           ("below", "{out} is below {f}, which is a file"),
                                           ("link", "{out} is a symlink to {nowhere}, which does not exist")])
def test_a_path_that_cannot_be_a_folder_is_named(tmp_path, make, message):
    f, nowhere = tmp_path / "f", tmp_path / "nowhere"
    f.write_text("")
    (tmp_path / "link").symlink_to(nowhere)
    out = {"file": f, "below": f / "x" / "y", "link": tmp_path / "link"}[make]
    with pytest.raises(OSError) as info:
        check_writable_folder(out)
    assert message.format(out=out, f=f, nowhere=nowhere) in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["f", "link"]


def test_checking_without_creating_leaves_nothing_behind(tmp_path, monkeypatch):
    assert check_writable_folder(tmp_path / "a" / "b", create=False) == tmp_path / "a" / "b"
    assert os.listdir(tmp_path) == []

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # a read-only folder (root ignores the bits)
    with pytest.raises(OSError, match=f"cannot write in the folder {tmp_path / 'a'}: Permission denied"):
        check_writable_folder(tmp_path / "a", create=False)
