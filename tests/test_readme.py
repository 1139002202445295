import re
from pathlib import Path

import torch

import fusionzoo as fz

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = "\n".join(p.read_text() for p in sorted((ROOT / "docs" / "pages").glob("*.md")))


def _python_blocks(text=README + DOCS):
    """The README's code blocks first (its example is block 0), then the documentation pages'."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


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
    exec(compile(next(b for b in _python_blocks() if "register_fusion" in b), "README.md", "exec"), namespace)
    try:
        block = fz.create_fusion("my_sum", in_dims={"audio": 12, "visual": 16}, out_dim=8)
        out = block({"audio": torch.randn(3, 12)}, {"audio": torch.tensor([True, False, True])})
        assert out.shape == (3, 8) and torch.equal(out[1], torch.zeros(8))
        assert fz.FUSIONS.get("my_sum").example().out_dim == 8
    finally:
        fz.FUSIONS.unregister("my_sum")


def test_readme_loss_example_is_chosen_from_yaml(tmp_path):
    import yaml

    from fusionzoo.training import train

    namespace = {"fz": fz, "torch": torch}
    exec(compile(next(b for b in _python_blocks() if "register_loss" in b), "README.md", "exec"), namespace)
    try:
        loss = fz.create_loss("my_hinge", margin=1.0)
        logits, labels = torch.tensor([[2.0, 0.5], [0.0, 0.2]]), torch.tensor([0, -1])
        assert torch.isclose(loss(logits, labels), torch.tensor(0.0 + max(0.0, 1.0 + 0.5 - 2.0)))
        block = next(b for b in re.findall(r"```yaml\n(.*?)```", README + DOCS, flags=re.S) if "my_hinge" in b)
        train_section = yaml.safe_load(block)["train"]
        cfg = {
            "data": {"name": "synthetic", "n": 64},
            "model": {
                "encoders": {"text": {"name": "text_embedding", "vocab_size": 64, "embed_dim": 8, "out_dim": 8}},
                "fusion": {"name": "concat_mlp", "out_dim": 8},
                "head": {"name": "linear", "out_dim": 8},
            },
            "train": {**train_section, "epochs": 1, "batch_size": 32},
        }
        summary = train(cfg, run_dir=tmp_path / "run", log=False)
        assert summary["last_epoch"]["train"]["loss"] >= 0
        assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["loss"]["name"] == "my_hinge"
    finally:
        fz.LOSSES.unregister("my_hinge")
