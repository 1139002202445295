"""fusionzoo's training loop against a plain PyTorch loop: same model, data, optimizer and batch size.

    python benchmarks/loop_overhead.py                       # quickstart and avdigits_concat_hard, 5 rounds
    python benchmarks/loop_overhead.py --rounds 3 --configs configs/experiments/quickstart.yaml

Each round trains ``--epochs`` epochs with ``fusionzoo.training.train`` (its loader,
schedule, gradient clipping, non-finite checks, checkpoints after each epoch: all of it)
and the same epochs with the hand-written loop below, the order flipping every round (the config's
modality dropout is off on both sides: it changes what is computed, the masked path, not the
loop); each side's
number is the median samples/s of its epochs after the first (warm), taken from ``log.jsonl`` for
fusionzoo and timed the same way (the training pass alone, no validation) for the plain loop. The
ratio's interquartile range is over the per-round ratios. Both build the model with
``fz.build_model``, the data with the config's datasets and ``make_loader`` (its collate and the
encoders' preprocessing), and step AdamW (fused, the config's lr and weight decay); the plain
loop has no schedule, no clipping, no modality dropout, no checkpoint, no check. A profile of one
epoch of each (top operators by self CPU time) is written with the results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import fusionzoo as fz
from fusionzoo.atomic import write_text_atomic
from fusionzoo.bench import machine_tag
from fusionzoo.config import build_dataset, load_config
from fusionzoo.data import make_loader
from fusionzoo.encoders.base import preprocessors
from fusionzoo.training import train
from fusionzoo.training.engine import cache_frontends

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ["configs/experiments/quickstart.yaml", "configs/experiments/avdigits_concat_hard.yaml"]


def plain_loop(cfg, epochs: int, profile: bool = False) -> tuple[list[float], str | None]:
    """The 30-line loop: samples/s of each epoch (and a profile table of the last one)."""
    torch.manual_seed(cfg.seed)
    model = fz.build_model(cfg)
    data = build_dataset(cfg, "train")
    if cfg.train.cache_frontend:
        data = cache_frontends(cfg, model, {"train": data})["train"]
    loader = make_loader(data, cfg.train.batch_size, shuffle=True, seed=cfg.seed, preprocess=preprocessors(model.encoders))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    rates, table = [], None
    for epoch in range(epochs):
        model.train()
        prof = torch.profiler.profile() if profile and epoch == epochs - 1 else None
        start, seen = time.perf_counter(), 0
        with prof if prof is not None else _nothing():
            for batch in loader:
                loss = loss_fn(model(batch), batch["label"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += batch["label"].shape[0]
        rates.append(seen / (time.perf_counter() - start))
        if prof is not None:
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return rates, table


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def ours(cfg, epochs: int, folder: Path) -> list[float]:
    """samples/s of each epoch of ``fusionzoo.training.train`` (its own measurement, log.jsonl)."""
    run = folder / f"run-{time.monotonic_ns()}"
    train(cfg, run_dir=run, overrides=[f"train.epochs={epochs}"], log=False)
    return [json.loads(line)["samples_per_s"] for line in (run / "log.jsonl").read_text().splitlines()]


def profile_ours(cfg, folder: Path) -> str:
    with torch.profiler.profile() as prof:
        train(cfg, run_dir=folder / f"profiled-{cfg.name}", overrides=["train.epochs=1"], log=False)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "results" / machine_tag()
    folder = Path(tempfile.mkdtemp(prefix="fusionzoo-loop-"))
    results, profiles = [], []
    for path in args.configs:
        # modality dropout off on both sides: it changes the computation (the fusion's masked path), not the loop
        cfg = load_config(ROOT / path if not Path(path).is_absolute() else path, ["train.progress=false", "train.modality_dropout=0"])
        per_round = []
        for r in range(args.rounds):
            sides = [("ours", lambda: ours(cfg, args.epochs, folder)), ("plain", lambda: plain_loop(cfg, args.epochs)[0])]
            got = {name: statistics.median(run()[1:]) for name, run in (sides if r % 2 == 0 else sides[::-1])}
            per_round.append(got)
            print(f"{cfg.name} round {r + 1}: ours {got['ours']:.0f}  plain {got['plain']:.0f}  ratio {got['ours'] / got['plain']:.3f}", flush=True)
        ratios = sorted(g["ours"] / g["plain"] for g in per_round)
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        results.append({"config": path, "ours": statistics.median(g["ours"] for g in per_round), "plain": statistics.median(g["plain"] for g in per_round),
                        "ratio": statistics.median(ratios), "ratio_iqr": [q[0], q[2]], "rounds": per_round})
        profiles.append((cfg.name, profile_ours(cfg, folder), plain_loop(cfg, 2, profile=True)[1]))
    _write(out, args, results, profiles)
    return 0


def _write(out: Path, args, results: list[dict], profiles: list[tuple[str, str, str]]) -> None:
    command = "python benchmarks/loop_overhead.py" + (f" --rounds {args.rounds}" if args.rounds != 5 else "") + (
        f" --epochs {args.epochs}" if args.epochs != 3 else "") + (f" --configs {' '.join(args.configs)}" if args.configs != DEFAULT_CONFIGS else "")
    info = {"machine": machine_tag(), "torch": torch.__version__, "threads": torch.get_num_threads(), "command": command}
    write_text_atomic(out / "loop_overhead.json", json.dumps({"info": info, "results": results}, indent=2))
    lines = [f"# The training loop against a plain PyTorch loop ({info['machine']})", "",
             f"`{command}`, torch {info['torch']}, {info['threads']} threads; samples/s, median over rounds of the median warm epoch.", "",
             "| config | fusionzoo.train | plain loop | ours / plain | per-round IQR |", "|---|---:|---:|---:|---:|"]
    lines += [f"| `{Path(r['config']).stem}` | {r['ours']:.0f} | {r['plain']:.0f} | {r['ratio']:.3f}x | {r['ratio_iqr'][0]:.3f}-{r['ratio_iqr'][1]:.3f} |"
              for r in results]
    for name, theirs_not, plain in profiles:
        lines += ["", f"## Where the time goes: {name}", "", "fusionzoo.train, one epoch (and its validation and test):", "", "```",
                  theirs_not.strip(), "```", "", "The plain loop, one epoch:", "", "```", (plain or "").strip(), "```"]
    write_text_atomic(out / "loop_overhead.md", "\n".join(lines) + "\n")
    print(f"wrote {out / 'loop_overhead.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
