"""The reliability principles, held for every writer and every piece of reused state (the cases
that led to them are in ``test_bad_inputs.py``):

* a writer writes only what it owns: given a folder that holds a same-named file it did not write,
  it refuses, and the file is intact; into a fresh folder, or its own, it writes (again);
* reused state knows what made it: a resumed run, a compare cell, the decode and feature caches
  act on a change of what they were made from (refuse, recompute);
* a small file takes no more memory than its content: crafted headers are refused before decoding.
"""

import json
import shutil
import struct

import pytest
import torch

import fusionzoo as fz
from fusionzoo.cli import main
from fusionzoo.training import embed_run, ensemble_runs, evaluate_run, explain_run, train

from common import config_file, tiny_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("principles")
    for name, seed in (("a", 0), ("b", 1)):
        config = tiny_config(1)
        config["seed"] = seed
        train(config, run_dir=root / name, log=False)
    return root


def _leaderboard(runs, out):
    grid = out.parent / "grid"
    if not grid.exists():
        shutil.copytree(runs / "a", grid / "cells" / "a" / "seed-0")
    code = main(["compare", "--collect", str(grid), "--out", str(out)])
    if code:
        raise FileExistsError("compare refused")


WRITERS = {
    "explain": ("shapley.csv", lambda runs, out: explain_run(runs / "a", out=out, samples=8)),
    "eval": ("results.json", lambda runs, out: evaluate_run(runs / "a", levels=(0.0,), out_dir=out)),
    "ensemble": ("ensemble.json", lambda runs, out: ensemble_runs([runs / "a", runs / "b"], out=out)),
    "embed": ("val.safetensors", lambda runs, out: embed_run(runs / "a", splits=["val"], out=out)),
    "save_pretrained": ("config.yaml", lambda runs, out: fz.hub.save_run(runs / "a", out)),
    "compare": ("leaderboard.md", _leaderboard),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_refuses_a_folder_with_a_file_it_did_not_write_and_rewrites_its_own(runs, tmp_path, writer):
    name, write = WRITERS[writer]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / name).write_text("the user's own file")
    with pytest.raises(FileExistsError):
        write(runs, theirs)
    assert (theirs / name).read_text() == "the user's own file"
    mine = tmp_path / "mine"
    write(runs, mine)
    first = (mine / name).stat().st_mtime_ns
    write(runs, mine)  # its own folder: written again
    assert (mine / name).stat().st_mtime_ns >= first and (mine / name).read_bytes() != b"the user's own file"


def test_a_run_folder_is_refused_when_it_holds_a_users_files(tmp_path):
    from fusionzoo.errors import RunFolderError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not empty and not a fusionzoo run folder"):
        train(tiny_config(1), run_dir=tmp_path, log=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resumed_runs_and_compare_cells_act_on_what_made_them(tmp_path):
    """A resume with another config is refused (listing the keys); a compare cell with another
    config is not reused. (Data changes: ``test_manifest``'s fitted-state test.)"""
    from fusionzoo.compare.grid import Cell
    from fusionzoo.compare.runner import _same_config

    run = tmp_path / "run"
    train(tiny_config(1), run_dir=run, log=False)
    with pytest.raises(fz.ConfigError, match=r"--resume with a different config; train\.lr"):
        train(tiny_config(1, lr=0.5), run_dir=run, resume=True, log=False)
    path = config_file(tmp_path, tiny_config(1))
    assert not _same_config(path, Cell(name="x", overrides=("train.lr=0.5",)), 0, run)


def test_the_decode_cache_recomputes_a_changed_file(tmp_path):
    from torchvision.io import write_png

    from fusionzoo.data.decode import DiskCache, ImageReader

    write_png(torch.zeros(1, 4, 4, dtype=torch.uint8), str(tmp_path / "x.png"))
    cache, reader = DiskCache(tmp_path / "cache"), ImageReader(channels=1)
    assert cache.load(tmp_path / "x.png", reader).max() == 0
    write_png(torch.full((1, 4, 4), 9, dtype=torch.uint8), str(tmp_path / "x.png"))
    assert cache.load(tmp_path / "x.png", reader).max() == 9  # its size/mtime changed: decoded again, never stale


def _gif(width, height):
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00" * 32


def _jpeg(width, height):
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    sof = b"\xff\xc0" + struct.pack(">HBHH", 11, 8, height, width) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\x00" * 32


def _webp(width, height):
    chunk = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


@pytest.mark.parametrize("fmt, make", [("gif", _gif), ("jpeg", _jpeg), ("webp", _webp)])
def test_crafted_image_headers_are_refused_before_decoding(tmp_path, monkeypatch, fmt, make):
    from fusionzoo.data.decode import CellError, ImageReader
    from fusionzoo.data.image_header import image_size

    path = tmp_path / f"bomb.{fmt}"
    path.write_bytes(make(30000, 30000) if fmt != "gif" else make(65535, 65535))
    assert image_size(path) == ((65535, 65535) if fmt == "gif" else (30000, 30000))
    monkeypatch.setattr("torchvision.io.decode_image", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(CellError, match="max_pixels"):
        ImageReader().decode(path)


def test_strict_json_writes_null_for_nan():
    from fusionzoo.atomic import strict_json

    assert json.loads(strict_json({"a": float("nan"), "b": [float("inf"), 1.0]})) == {"a": None, "b": [None, 1.0]}


def test_a_cache_on_a_full_disk_warns_once_and_reads_on(tmp_path, monkeypatch):
    import errno

    from safetensors import torch as st
    from torchvision.io import write_png

    from fusionzoo.data.decode import DiskCache, ImageReader

    write_png(torch.zeros(1, 4, 4, dtype=torch.uint8), str(tmp_path / "x.png"))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", full)
    cache = DiskCache(tmp_path / "cache")
    with pytest.warns(UserWarning, match=r"data\.cache: cannot write into .*cache .*No space left on device"):
        assert cache.load(tmp_path / "x.png", ImageReader(channels=1)).shape == (1, 4, 4)
    assert cache.load(tmp_path / "x.png", ImageReader(channels=1)).shape == (1, 4, 4)  # no second warning, no error
    assert not list((tmp_path / "cache").glob(".tmp-*"))
