"""Our fusion blocks against TorchMultimodal's same blocks, interleaved in one process.

    python benchmarks/peers.py                    # installs the peer into a throwaway folder first
    python benchmarks/peers.py --peer-dir DIR     # reuse a folder with torchmultimodal + iopath in it

The peer is the packaged ``torchmultimodal-nightly`` (it imports ``iopath``). Neither goes into the
project's venv: ``pip install --no-deps --target DIR`` puts both in a folder that this script alone
puts on ``sys.path``.

Each pair is built at the reference shape (B=256, ``{"audio": 128, "text": 256, "visual": 512}`` ->
256) with matched widths, and timed forward+backward with gradients flowing on to the inputs (as
inside a model; each call starts with every parameter's and input's ``.grad`` set to None, as after
an optimizer's ``zero_grad``), ``--rounds`` times, ours and theirs alternating (the order flips every round),
each time with ``torch.utils.benchmark.Timer``; the table gives the medians, the ratio peer / ours
(above 1: ours is faster) with the interquartile range of the per-round ratios, and the share of
the float32 matmul rate measured in the same run. A pair whose ratio range spans 1 is a tie: the
difference is within this machine's round-to-round noise. The A/A column times a second, freshly
built instance of the peer against the first: how far two identical blocks already differ here. Ours are called
without ``present`` (the peers have no missing-modality handling), so they take the fast path; the
second column forces the masked path (``block.fast_path = False``: the presence machinery running
although nothing is missing, as every call did before the fast path).

Pairs:

* ``attention`` vs ``AttentionFusionModule(dims, 256)``: the same maths plus our presence flags in
  the scorer;
* ``concat_mlp`` (``hidden_dims=()``, ``norm=False``) vs ``ConcatFusionModule(Linear(896, 256))``;
* ``concat_mlp`` (``hidden_dims=(256,)``, ``norm=False``) vs ``ConcatFusionModule(MLP(896, 256, [256], GELU))`` (TorchMultimodal's MLP with ``dropout=0``: its default is 0.5);
* ``deepset`` (``hidden_dim=128``, GELU, mean, MLP 128 -> 256 -> 256) vs ``DeepsetFusionModule``
  (auto-mapping to 128, L2 normalisation, mean, the same MLP).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fusionzoo.bench import count_flops, machine_info, machine_tag, matmul_peak, script_command, time_callable, write_report  # noqa: E402
from fusionzoo.bench.measure import REFERENCE_DIMS  # noqa: E402

PEER_PACKAGES = ("torchmultimodal-nightly==2024.4.1", "iopath==0.1.10", "portalocker==4.4.2")


def install_peer(folder: Path) -> Path:
    if not (folder / "torchmultimodal").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(folder), *PEER_PACKAGES], check=True)
    return folder


def pairs(out_dim: int = 256) -> dict[str, tuple[nn.Module, nn.Module]]:
    import fusionzoo as fz
    from torchmultimodal.modules.fusions.attention_fusion import AttentionFusionModule
    from torchmultimodal.modules.fusions.concat_fusion import ConcatFusionModule
    from torchmultimodal.modules.fusions.deepset_fusion import DeepsetFusionModule
    from torchmultimodal.modules.layers.mlp import MLP as PeerMLP

    dims = dict(REFERENCE_DIMS)
    total = sum(dims.values())
    small = min(dims.values())
    return {
        "attention": (
            fz.create_fusion("attention", in_dims=dims, out_dim=out_dim),
            AttentionFusionModule(dims, out_dim),
        ),
        "concat_mlp (linear)": (
            fz.create_fusion("concat_mlp", in_dims=dims, out_dim=out_dim, hidden_dims=(), norm=False),
            ConcatFusionModule(nn.Linear(total, out_dim)),
        ),
        "concat_mlp (MLP 256)": (
            fz.create_fusion("concat_mlp", in_dims=dims, out_dim=out_dim, hidden_dims=(256,), norm=False),
            ConcatFusionModule(PeerMLP(total, out_dim, [256], dropout=0.0, activation=nn.GELU)),
        ),
        "deepset": (
            fz.create_fusion("deepset", in_dims=dims, out_dim=out_dim, hidden_dim=small, hidden_dims=(256,)),
            DeepsetFusionModule(dims, PeerMLP(small, out_dim, [256], dropout=0.0, activation=nn.GELU), torch.mean, use_auto_mapping=True),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-dir", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    peer_dir = install_peer(args.peer_dir or Path(tempfile.mkdtemp(prefix="fusionzoo-peers-")))
    sys.path.insert(0, str(peer_dir))

    torch.manual_seed(0)
    peak = matmul_peak("cpu", min_time=args.min_time)
    g = torch.Generator().manual_seed(0)
    feats = {m: torch.randn(args.batch_size, d, generator=g).requires_grad_() for m, d in REFERENCE_DIMS.items()}
    grad = torch.randn(args.batch_size, 256, generator=g)

    def step(block: nn.Module, leaves: list[torch.Tensor]) -> None:
        for x in leaves:  # as an optimizer's zero_grad: every parameter and input starts without a gradient
            x.grad = None
        block(feats).backward(grad)

    rows = []
    for (name, (ours, peer)), (_, peer_again) in zip(pairs().items(), pairs().values()):
        blocks = {"ours": ours, "ours, masked path": ours, "peer": peer, "peer, second instance": peer_again}
        calls = {}
        for key, block in blocks.items():
            leaves = [*block.train().parameters(), *feats.values()]
            calls[key] = lambda block=block, leaves=leaves: step(block, leaves)
        times = time_rounds(calls, ours, args.rounds, args.min_time)
        med = {k: statistics.median(v) for k, v in times.items()}
        flops = {"ours": count_flops(calls["ours"]), "peer": count_flops(calls["peer"])}
        rows.append({
            "pair": name,
            "ms": med,
            "ms_per_round": times,
            "flops": flops,
            "params": {"ours": sum(p.numel() for p in ours.parameters()), "peer": sum(p.numel() for p in peer.parameters())},
            "peer_over_ours": med["peer"] / med["ours"],
            "peer_over_ours_iqr": ratio_iqr(times["peer"], times["ours"]),
            "peer_over_ours_masked": med["peer"] / med["ours, masked path"],
            "peer_over_peer_again_iqr": ratio_iqr(times["peer"], times["peer, second instance"]),
            "pct_of_peak": {"ours": 100 * flops["ours"] / (med["ours"] / 1e3) / peak, "peer": 100 * flops["peer"] / (med["peer"] / 1e3) / peak},
        })
        print(f"{name}: ours {med['ours']:.2f} ms (masked path {med['ours, masked path']:.2f}), peer {med['peer']:.2f} ms", flush=True)

    payload = {"machine": machine_info(), "peer": list(PEER_PACKAGES), "matmul_peak_gflops": peak / 1e9, "batch_size": args.batch_size,
               "rounds": args.rounds, "command": script_command("peers.py", argv), "rows": rows}
    write_report(args.out or ROOT / "benchmarks" / "results" / machine_tag(), "peers", payload, render(payload))
    return 0


def time_rounds(calls: dict, ours: nn.Module, rounds: int, min_time: float) -> dict[str, list[float]]:
    """Milliseconds per call of each entry, ``rounds`` times, the order flipping every round."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(rounds):
        for key in list(calls)[:: 1 if r % 2 == 0 else -1]:
            ours.fast_path = key == "ours"  # set outside the timed call: the peer's step has nothing like it
            times[key].append(time_callable(calls[key], "cpu", min_time)[0] * 1e3)
    ours.fast_path = True
    return times


def ratio_iqr(numerator: list[float], denominator: list[float]) -> list[float]:
    """The interquartile range of the per-round ratios."""
    return statistics.quantiles([a / b for a, b in zip(numerator, denominator)], n=4)[::2]


def render(payload: dict) -> str:
    lines = [
        "# Fusion blocks vs TorchMultimodal",
        "",
        f"`{payload['command']}` on {payload['machine']['cpu']} ({payload['machine']['threads']} threads), torch "
        f"{payload['machine']['torch']}, peer {', '.join(payload['peer'])}. B={payload['batch_size']}, forward+backward, "
        f"median of {payload['rounds']} interleaved rounds; float32 matmul peak in the same run {payload['matmul_peak_gflops']:.1f} GFLOP/s.",
        "",
        "| block | ours ms | ours, masked path ms | TorchMultimodal ms | peer / ours | per-round ratio IQR | verdict | peer / peer (A/A) IQR | peer / ours (masked path) | ours % of peak | peer % of peak |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in payload["rows"]:
        ms, pct = r["ms"], r["pct_of_peak"]
        low, high = r["peer_over_ours_iqr"]
        aa_low, aa_high = r["peer_over_peer_again_iqr"]
        verdict = "ours faster" if low > 1 else "peer faster" if high < 1 else "tie (within noise)"
        lines.append(
            f"| `{r['pair']}` | {ms['ours']:.2f} | {ms['ours, masked path']:.2f} | {ms['peer']:.2f} | {r['peer_over_ours']:.2f}x | "
            f"{low:.2f}-{high:.2f} | {verdict} | {aa_low:.2f}-{aa_high:.2f} | "
            f"{r['peer_over_ours_masked']:.2f}x | {pct['ours']:.0f}% | {pct['peer']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
