import re
from pathlib import Path

import torch

import fusionzoo as fz

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_first_section_shows_the_two_commands():
    first = README.split("\n## ")[0]
    assert "make run" in first and "make test" in first


def test_readme_example_runs(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = _python_blocks()[0]
    assert len(code.strip().splitlines()) <= 12
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["fused"].shape == (4, 64)
    assert namespace["logits"].shape == (4, 8)
    assert "concat_mlp" in capsys.readouterr().out


def test_readme_extension_example_registers_a_working_block():
    namespace = {"fz": fz, "torch": torch}
    exec(compile(_python_blocks()[1], "README.md", "exec"), namespace)
    try:
        block = fz.create_fusion("my_sum")
        out = block({"audio": torch.randn(3, 12)}, {"audio": torch.tensor([True, False, True])})
        assert out.shape == (3, 8) and torch.equal(out[1], torch.zeros(8))
    finally:
        fz.FUSIONS.unregister("my_sum")
