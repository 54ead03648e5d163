"""Atomic writes: a reader sees the old file or the new one, with ordinary permissions."""


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from asd.io import atomic_write_text

    atomic_write_text(tmp_path / "a.csv", "x\n")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o666 & ~mask


def test_failed_write_keeps_the_old_file(tmp_path):
    import pytest

    from asd.io import atomic_path, atomic_write_text

    atomic_write_text(tmp_path / "a.csv", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "a.csv").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]


def test_umask_is_read_without_changing_it():
    """Reading the umask must not set it, even briefly: other threads create files meanwhile."""
    import os
    from unittest import mock

    from asd.io import _umask

    mask = os.umask(0o027)
    try:
        with mock.patch("os.umask", side_effect=AssertionError("umask changed")):
            assert _umask() == 0o027  # from /proc/self/status on Linux
    finally:
        os.umask(mask)
