import os
import subprocess
from pathlib import Path

# Tests never reach a model hub: a hub name not in the cache fails at once instead of after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------- the suite leaves the checkout as it found it

ROOT = Path(__file__).resolve().parents[1]


def _git_status() -> str | None:
    """``git status`` of the checkout, ignored files included, without the caches Python and pytest
    write; None outside a git checkout (an sdist)."""
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    noise = ("__pycache__/", ".pytest_cache/", ".hypothesis/", ".venv/", ".egg-info/")
    return "\n".join(line for line in done.stdout.splitlines() if not any(n in line for n in noise))


def pytest_sessionstart(session):
    session.config._git_status_before = _git_status()


def pytest_sessionfinish(session, exitstatus):
    """A test that writes into the repository (rather than ``tmp_path``) fails the suite, naming the files."""
    before = getattr(session.config, "_git_status_before", None)
    after = _git_status()
    if before is None or after is None or before == after or session.config.option.collectonly:
        return
    new = sorted(set(after.splitlines()) - set(before.splitlines()))
    if new:
        print("\nThe tests wrote into the repository (write under tmp_path instead):\n  " + "\n  ".join(new[:20]))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
