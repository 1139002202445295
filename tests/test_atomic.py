import pytest

from fusionzoo.atomic import atomic_path, write_text_atomic


def test_atomic_path_renames_on_success_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "sub" / "model.pt2"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".pt2" and tmp != target
        tmp.write_text("new")
        assert not target.exists()  # nobody sees a half-written target
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["model.pt2"]


def test_atomic_path_keeps_the_old_file_and_removes_the_temporary_one_on_failure(tmp_path):
    target = tmp_path / "model.onnx"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
