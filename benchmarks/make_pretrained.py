"""Train the shipped pretrained models again from their configs and rewrite ``fusionzoo/zoo/`` (``make pretrained``).

    python benchmarks/make_pretrained.py                          # all of them (about 5 minutes on 2 CPU cores)
    python benchmarks/make_pretrained.py --only avdigits_concat_hard

Each model is trained by ``fusionzoo.training.train`` into ``runs/pretrained/<name>`` (selection on
the validation split), then :func:`fusionzoo.hub.save_run` evaluates its selected checkpoint on the
test split under every subset of modalities and writes the folder: config, weights, model card.
A summary with the weight sizes goes to ``benchmarks/results/<machine>/pretrained.md``. The
avdigits models need the shared data (``FUSIONZOO_AVDIGITS`` or ``../shared/datasets/avdigits``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fusionzoo.bench import machine_info, machine_tag, script_command, write_report  # noqa: E402
from fusionzoo.hub import read_card, save_run  # noqa: E402
from fusionzoo.training import train  # noqa: E402

AVDIGITS_LIMITS = (
    "AV digits: spoken digits of five FSDD speakers paired with MNIST images, tested on a sixth, unseen speaker "
    "(jackson, 500 clips). `hard` follows AV-MNIST: images keep the principal components of 25% of their energy and "
    "speech is mixed with white noise at 0 dB. 8 kHz audio of at most one second; one seed."
)
SHIPPED = {
    "quickstart_concat": ("configs/experiments/quickstart.yaml", "The synthetic tri-modal data of `make run` only: a demonstration, not a model of real images, audio or text."),
    **{
        f"avdigits_{fusion}_{level}": (f"configs/experiments/avdigits_{fusion}_{level}.yaml", AVDIGITS_LIMITS)
        for fusion in ("late", "attention", "concat")
        for level in ("clean", "hard")
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="names to rebuild (default: all)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "pretrained")
    parser.add_argument("--zoo", type=Path, default=ROOT / "fusionzoo" / "zoo")
    args = parser.parse_args(argv)
    names = args.only or list(SHIPPED)
    for name in names:
        config, limitations = SHIPPED[name]
        run = args.runs / name
        train(ROOT / config, run, overwrite=True, overrides=["train.progress=false"], log=False)
        folder = save_run(run, args.zoo / name, name=name, command=f"make pretrained  # fusionzoo train {config}", limitations=limitations)
        card = read_card(folder)
        print(f"{name}: test {card['metric']} {card['test'][card['metric']]:.4f}", flush=True)

    rows = []
    for name in SHIPPED:
        folder = args.zoo / name
        if not (folder / "card.json").is_file():
            continue
        card = read_card(folder)
        size = sum(f.stat().st_size for f in folder.iterdir())
        rows.append(f"| `{name}` | {', '.join(card['modalities'])} | {card['params']:,} | {100 * card['test'][card['metric']]:.1f}% | {size / 1024:.0f} KiB |")
    command = script_command("make_pretrained.py", argv)
    text = "\n".join([
        "# Shipped pretrained models",
        "",
        f"`{command}` on {machine_info()['cpu']}; test accuracy with every modality (the cards have every subset).",
        "",
        "| model | modalities | parameters | test accuracy | folder size |",
        "|---|---|---:|---:|---:|",
        *rows,
    ]) + "\n"
    models = {n: read_card(args.zoo / n) for n in SHIPPED if (args.zoo / n / "card.json").is_file()}
    write_report(ROOT / "benchmarks" / "results" / machine_tag(), "pretrained", {"machine": machine_info(), "command": command, "models": models}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
