"""The wheel a user installs: built from this checkout, installed offline into a fresh venv."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from tests.common import ROOT


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_a_shipped_model(tmp_path):
    # built from a copy of the sources: setuptools writes its build/ folder beside them, never into the checkout
    source = tmp_path / "source"
    shutil.copytree(ROOT / "fusionzoo", source / "fusionzoo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("fusionzoo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fusionzoo/zoo/avdigits_concat_hard/model.safetensors" in names and "fusionzoo/zoo/quickstart_concat/README.md" in names
    assert wheel.stat().st_size < 4 << 20, f"the wheel is {wheel.stat().st_size / 2**20:.1f} MiB"
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: torch>=" in metadata and "==" not in metadata.split("Requires-Dist: torch")[1].splitlines()[0]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True).stdout.strip()
    # torch and the other dependencies: the ones already installed here (no network, no second copy)
    (tmp_path / "venv" / purelib.split(str(venv) + "/")[1] / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)], check=True, capture_output=True)

    listed = subprocess.run([venv / "bin" / "fusionzoo", "list", "models"], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert "avdigits_concat_hard" in listed.stdout and "accuracy" in listed.stdout
    code = (
        "import torch, fusionzoo as fz\n"
        "assert fz.__file__.startswith(%r), fz.__file__\n"
        "m = fz.create_model('avdigits_concat_hard', pretrained=True)\n"
        "out = m({'audio': torch.randn(2, 8000), 'visual': torch.randn(2, 1, 28, 28)})\n"
        "assert out.shape == (2, 10) and torch.isfinite(out).all()\n"
        "print('ok')\n"
    ) % str(venv)
    ran = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0 and ran.stdout.strip() == "ok", ran.stderr[-2000:]
