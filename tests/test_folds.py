"""Grouped k-fold cross-validation: fold assignment, the fitted state per fold, and fold grids in
``train`` and ``compare`` (paired by fold and seed in the leaderboard)."""

import json
from collections import Counter

import numpy as np
import pytest
import yaml

import fusionzoo as fz
from fusionzoo.cli import main
from fusionzoo.data.folds import assign_folds, check_folds, fold_splits

from common import AVDIGITS, build_folder, data_section, needs_avdigits, write_rows


def test_every_sample_is_tested_once_and_no_group_is_split():
    rng = np.random.default_rng(0)
    groups = [f"speaker{int(g)}" if rng.random() > 0.2 else None for g in rng.integers(0, 9, 300)]
    strata = [str(c) for c in rng.integers(0, 4, 300)]
    fold_of = assign_folds(strata, groups, 5, seed=3)
    assert (fold_of >= 0).all() and (fold_of < 5).all()
    assert np.array_equal(fold_of, assign_folds(strata, groups, 5, seed=3))  # seeded
    for g in {g for g in groups if g is not None}:
        assert len({f for f, h in zip(fold_of, groups) if h == g}) == 1, g  # a group lives in one fold
    tested = Counter()
    for fold in range(5):
        splits = fold_splits(fold_of, 5, fold)
        tested.update(i for i, s in enumerate(splits) if s == "test")
        assert {fold_of[i] for i, s in enumerate(splits) if s == "val"} == {(fold + 1) % 5}
        for g in {g for g in groups if g is not None}:
            assert len({s for s, h in zip(splits, groups) if h == g}) == 1  # never across train, val and test
    assert sorted(tested) == list(range(300)) and set(tested.values()) == {1}
    sizes = np.bincount(fold_of, minlength=5)
    assert sizes.max() - sizes.min() <= 40  # groups of ~27: balanced to about a group
    ungrouped = assign_folds(strata, None, 4, seed=0)  # stratified: each class spread evenly
    for c in set(strata):
        counts = np.bincount(ungrouped[np.array(strata) == c], minlength=4)
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("folds, want", [({"k": 2}, r"at least 3 folds"), ({"k": 4, "fold": 4}, r"fold: in \[0, 4\)"),
                                         ({"k": 4, "flod": 1}, r"folds\.flod: unknown key"), ({"k": "5"}, r"folds\.k: an int")])
def test_fold_options_are_checked(folds, want):
    with pytest.raises(ValueError, match=want):
        check_folds(folds)


def test_manifest_folds_by_group_fit_each_fold_s_state_on_its_training_part(tmp_path):
    root, rows = build_folder(tmp_path, n_per_class=9)
    for i, r in enumerate(rows):
        r["speaker"] = f"s{i % 6}"
        r.pop("split")
    rows[0]["caption"] = "zebrafish"  # a word only row 0 (speaker s0) has
    write_rows(root / "items.csv", rows)
    spec = {k: v for k, v in data_section(root).items() if k not in ("name",)}
    seen_in_test = 0
    for fold in range(3):
        folds = {"k": 3, "fold": fold, "group": "speaker"}
        parts = {s: fz.create_dataset("manifest", **spec, folds=folds, split=s) for s in ("train", "val", "test")}
        speakers = {s: {rows[d.line_of(i) - 2]["speaker"] for i in range(len(d))} for s, d in parts.items()}
        assert not (speakers["train"] & speakers["test"]) and not (speakers["val"] & speakers["test"])
        lines = {s: {d.line_of(i) for i in range(len(d))} for s, d in parts.items()}
        assert sum(len(v) for v in lines.values()) == len(rows)
        vocab = parts["test"].vocabs["text"].itos
        in_test = 2 in lines["test"]  # row 0 is line 2
        seen_in_test += in_test
        assert ("zebrafish" in vocab) == (2 in lines["train"])  # fitted on the training part only
    assert seen_in_test == 1
    with pytest.raises(ValueError, match="give splits or folds, not both"):
        fz.create_dataset("manifest", **{**spec, "splits": {"val": 0.2}}, folds={"k": 3})


def test_synthetic_folds_partition_one_draw():
    parts = {(f, s): fz.create_dataset("synthetic", n=90, folds={"k": 3, "fold": f}, split=s) for f in range(3) for s in ("train", "val", "test")}
    assert all(len(parts[(f, "train")]) + len(parts[(f, "val")]) + len(parts[(f, "test")]) == 90 for f in range(3))
    tests = [parts[(f, "test")].images for f in range(3)]
    pool = np.concatenate(tests)
    assert len({p.tobytes() for p in pool}) == 90  # every sample tested once
    with pytest.raises(ValueError, match="val_n and test_n do not apply"):
        fz.create_dataset("synthetic", n=90, val_n=10, folds={"k": 3})


@pytest.mark.slow
def test_compare_with_folds_runs_every_fold_pairs_them_and_reruns_nothing(tmp_path, capsys):
    config = {
        "name": "folds", "seed": 0,
        "data": {"name": "synthetic", "n": 60, "num_classes": 8},
        "model": {"encoders": {"visual": {"name": "visual_cnn", "in_channels": 1, "channels": [4], "out_dim": 8},
                               "text": {"name": "text_embedding", "vocab_size": 64, "embed_dim": 8, "out_dim": 8}},
                  "fusion": {"name": "concat_mlp", "out_dim": 8}, "head": {"name": "linear", "out_dim": 8}},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.01},
    }
    path = tmp_path / "folds.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "cmp"
    args = ["compare", str(path), "--fusions", "concat_mlp,weighted_late", "--folds", "3", "--seeds", "0", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 cells x 3 runs (3 folds x 1 seeds)" in printed
    assert sorted(p.relative_to(out / "cells").as_posix() for p in out.glob("cells/*/fold-*/seed-*/metrics.json")) == [
        f"fusion={f}/fold-{k}/seed-0/metrics.json" for f in ("concat_mlp", "weighted_late") for k in range(3)]
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["folds"] == 3 and all(r["folds"] == [0, 1, 2] for r in board["cells"])
    second = board["cells"][1]
    assert second["paired"]["n"] == 3 and second["paired"]["p_holm"] is not None
    assert board["cells"][0]["bootstrap"]["n"] == 60 and "vs_best" in second["bootstrap"]  # every sample of the 60, tested once
    text = (out / "leaderboard.md").read_text()
    assert "folds x seeds" in text and "| 3x1 |" in text and "Nadeau-Bengio correction" in text
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished earlier") == 6  # a second call trains nothing


@needs_avdigits
def test_avdigits_folds_leave_one_speaker_out_with_the_pca_fitted_on_each_fold_s_training_speakers():
    from fusionzoo.data.avdigits import _pca

    seen, tested = set(), []
    for fold in (0, 3):
        parts = {s: fz.create_dataset("avdigits", root=AVDIGITS, split=s, folds={"k": 6, "fold": fold}) for s in ("train", "val", "test")}
        speakers = {s: {r["speaker"] for r in d.rows} for s, d in parts.items()}
        assert len(speakers["test"]) == len(speakers["val"]) == 1 and len(speakers["train"]) == 4
        assert not (speakers["test"] & speakers["train"]) and sum(len(d) for d in parts.values()) == 3000
        seen |= speakers["test"]
        tested.append(parts["test"].rows[0]["audio_path"])
    assert len(seen) == 2 and tested[0] != tested[1]
    hard = {s: fz.create_dataset("avdigits", root=AVDIGITS, split=s, difficulty="hard", folds={"k": 6, "fold": 1}, normalize=False)
            for s in ("train", "test")}
    clean = {s: fz.create_dataset("avdigits", root=AVDIGITS, split=s, folds={"k": 6, "fold": 1}, normalize=False) for s in ("train", "test")}
    want = _pca(clean["test"].images[:, 0], clean["train"].images[:, 0], 0.25)  # the basis of this fold's training images only
    np.testing.assert_allclose(hard["test"].images[:, 0], want, atol=1e-5)
    with pytest.raises(ValueError, match=r"folds are by speaker \(leave-one-speaker-out\): k must be 6"):
        fz.create_dataset("avdigits", root=AVDIGITS, split="train", folds={"k": 5, "fold": 0})
