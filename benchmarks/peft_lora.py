"""Parameter-efficient fine-tuning against full fine-tuning of the same encoder: trainable
parameters, training-step time and peak memory. The encoder is ``hf_text`` with the architecture of
bert-base-uncased (random weights: nothing is downloaded) plus a linear head; a step is forward,
cross-entropy, backward and a fused AdamW update over the trainable parameters, on a batch of 16
texts of 64 tokens. Each variant runs in its own process, so one variant's memory does not count
against another's.

    python benchmarks/peft_lora.py [--steps 5] [--batch 16] [--tokens 64] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = {
    "full fine-tuning": {},
    "LoRA r=8 (query, value)": {"adapter": {"method": "lora", "r": 8, "alpha": 16}},
    "LoRA r=8 + gradient checkpointing": {"adapter": {"method": "lora", "r": 8, "alpha": 16}, "gradient_checkpointing": True},
    "IA3 (query, value)": {"adapter": {"method": "ia3"}},
    "BitFit (biases)": {"adapter": {"method": "bitfit"}},
    "full fine-tuning + gradient checkpointing": {"gradient_checkpointing": True},
}
WORDS = [f"w{i}" for i in range(500)]


def measure(name: str, steps: int, batch: int, tokens: int) -> dict:
    """One variant, in this process."""
    import fusionzoo as fz
    from fusionzoo.bench.measure import _rss_kib
    from fusionzoo.encoders.hf import word_tokenizer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        word_tokenizer(WORDS, max_length=512).save_pretrained(tmp)
        encoder = fz.create_encoder("hf_text", model={"model_type": "bert"}, tokenizer=tmp, pool="cls", **VARIANTS[name])
    head = torch.nn.Linear(encoder.out_dim, 10)
    model = torch.nn.Sequential()
    model.encoder, model.head = encoder, head
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (tokens - 2,), generator=g)) for _ in range(batch)]
    x = encoder.preprocess(texts)
    labels = torch.randint(0, 10, (batch,), generator=g)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(head(encoder(x)), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    Path("/proc/self/clear_refs").write_text("5")  # peak resident size from here: the model is built
    before = _rss_kib("VmRSS") or 0
    step()  # warm-up: allocates the optimizer state
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    training = ((_rss_kib("VmHWM") or 0) - before) * 1024
    times.sort()
    return {
        "variant": name, "trainable": sum(p.numel() for p in trainable), "total": sum(p.numel() for p in model.parameters()),
        "step_s": times[len(times) // 2], "step_s_min": times[0], "training_peak_bytes": training, "model_bytes": before * 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # one variant, in a child process
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.variant is not None:
        print(json.dumps(measure(args.variant, args.steps, args.batch, args.tokens)))
        return 0
    from fusionzoo.bench import machine_info, machine_tag, script_command, write_report

    out = args.out or Path(__file__).parent / "results" / machine_tag()
    rows = []
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", name, "--steps", str(args.steps), "--batch", str(args.batch), "--tokens", str(args.tokens)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    full = rows[0]
    lines = [
        "# Parameter-efficient fine-tuning vs full fine-tuning", "",
        f"`{script_command('peft_lora.py', argv)}`; {machine_info()['cpu']}, {torch.get_num_threads()} threads, torch {torch.__version__}, float32.", "",
        f"`hf_text` with bert-base-uncased's architecture (random weights) + a linear head; one training step on {args.batch} texts "
        f"of {args.tokens} tokens (forward, cross-entropy, backward, fused AdamW), median of {args.steps} steps after a warm-up; "
        "each variant in its own process. Training memory: the peak resident size during the steps beyond the process's size "
        "once the model is built (gradients, optimizer state, activations); the model's 415 MiB of float32 weights and "
        "the libraries are in the size before.", "",
        "| variant | trainable parameters | share | step (s) | vs full | training memory (MiB) | vs full |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f}% | {r['step_s']:.2f} | "
            f"{r['step_s'] / full['step_s']:.2f}x | {r['training_peak_bytes'] / 2**20:.0f} | "
            f"{r['training_peak_bytes'] / max(full['training_peak_bytes'], 1):.2f}x |"
        )
    write_report(out, "peft_lora", {"command": script_command("peft_lora.py", argv), "machine": machine_info(), "rows": rows}, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
