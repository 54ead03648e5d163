"""Atomic writes: a reader sees the old file or the new one, with ordinary permissions."""


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from asd.infra.io import atomic_write_text

    mask = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.csv", "x\n")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o640


def test_failed_write_keeps_the_old_file(tmp_path):
    import pytest

    from asd.infra.io import atomic_path, atomic_write_text

    atomic_write_text(tmp_path / "a.csv", "old\n")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.csv") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "a.csv").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]
