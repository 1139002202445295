"""On CUDA (marker ``gpu``; skipped without it, so CI is unchanged): the registry's fusion blocks
and encoders against their CPU result, in float32 and under bf16 autocast; a training run with bf16
autocast and torch.compile, its resume and evaluation; an export traced on CUDA.

Tolerances: float32 with TF32 off agrees with the CPU to 1e-4 (relative to the output's scale: the
kernels sum in another order); bf16 autocast keeps 8 mantissa bits, so 3e-2 of the scale.
``make gpu-check`` (benchmarks/gpu_check.py) runs these first.
"""

import copy
import json

import pytest
import torch

import fusionzoo as fz
from fusionzoo.fusion.base import example_present
from fusionzoo.training import evaluate_run, train

from common import AVDIGITS, ROOT, needs_avdigits

pytestmark = pytest.mark.gpu

#: Encoders that need a model folder built locally (the foundation encoders' own tests do that).
FOUNDATION = ("hf_", "timm", "open_clip")


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 off: float32 on the GPU is compared with the CPU at float32 precision."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _on(x, device):
    return {k: _on(v, device) for k, v in x.items()} if isinstance(x, dict) else x.to(device) if isinstance(x, torch.Tensor) else x


def _close(got, want, rtol):
    scale = want.abs().max().clamp(min=1.0)
    assert torch.isfinite(got).all()
    assert (got.float().cpu() - want).abs().max() <= rtol * scale, f"max difference {(got.float().cpu() - want).abs().max():.3g}"


@pytest.mark.parametrize("name", fz.FUSIONS.list())
def test_every_fusion_block_on_cuda_agrees_with_the_cpu(name):
    torch.manual_seed(0)
    block = fz.FUSIONS.get(name).example().eval()
    features = block.example_input(8)
    present = example_present(block.modalities, 8)
    with torch.no_grad():
        want = block(features, present)
        gpu = copy.deepcopy(block).cuda()
        _close(gpu(_on(features, "cuda"), _on(present, "cuda")), want, 1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _close(gpu(_on(features, "cuda"), _on(present, "cuda")), want, 3e-2)


@pytest.mark.parametrize("name", [n for n in fz.ENCODERS.list() if not n.startswith(FOUNDATION)])
def test_every_encoder_on_cuda_agrees_with_the_cpu(name):
    torch.manual_seed(0)
    encoder = fz.ENCODERS.get(name).example().eval()
    x = encoder.example_input(4)
    with torch.no_grad():
        want = encoder(x)
        gpu = copy.deepcopy(encoder).cuda()
        _close(gpu(_on(x, "cuda")), want, 1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _close(gpu(_on(x, "cuda")), want, 3e-2)


def _quickstart(epochs):
    cfg = fz.load_config(ROOT / "configs/experiments/quickstart.yaml").to_dict()
    cfg["data"]["n"] = 1500
    cfg["train"].update(epochs=epochs, device="cuda", amp=True, compile=True)
    return cfg


def test_quickstart_trains_on_cuda_with_bf16_and_compile_resumes_and_evaluates(tmp_path):
    run_dir = tmp_path / "run"
    first = train(_quickstart(2), run_dir=run_dir, log=False)
    assert first["device"].startswith("cuda") and first["epochs_run"] == 2
    resumed = train(_quickstart(4), run_dir=run_dir, resume=True, log=False)
    assert resumed["epochs_run"] == 4 and resumed["test"]["accuracy"] > 0.5  # 8 classes: chance is 0.125
    history = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    result = evaluate_run(run_dir)
    assert len(result["subsets"]) == 7


@needs_avdigits
def test_an_avdigits_config_trains_on_cuda(tmp_path):
    cfg = fz.load_config(ROOT / "configs/experiments/avdigits_concat_clean.yaml", [f"data.root={AVDIGITS}", "train.epochs=2",
                                                                                  "train.device=cuda"])
    summary = train(cfg, run_dir=tmp_path / "run", log=False)
    assert summary["device"].startswith("cuda") and summary["test"]["accuracy"] > 0.5


def test_a_shipped_model_exported_on_cuda_matches_eager(tmp_path):
    from fusionzoo.export import ServingModel, example_inputs

    model = fz.from_pretrained("quickstart_concat").cuda().eval()
    serving = ServingModel(model)
    inputs = tuple(x.cuda() for x in example_inputs(serving))
    with torch.no_grad():
        program = torch.export.export(serving, inputs)
        got, want = program.module()(*inputs), serving(*inputs)
    _close(got, want.cpu(), 1e-5)
