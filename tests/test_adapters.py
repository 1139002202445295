"""Parameter-efficient fine-tuning: LoRA, IA3 (peft) and BitFit on foundation encoders; only the
adapters, projections, fusion and head train; resume, save / load (adapters or merged) and export."""

import copy
import shutil

import pytest
import torch

import fusionzoo as fz
from fusionzoo.encoders.adapters import merge_adapter
from fusionzoo.export import ServingModel, export_pt2
from fusionzoo.hub import save_run
from fusionzoo.training import load_run, train
from fusionzoo.transfer import unfreeze

pytest.importorskip("peft")
pytest.importorskip("timm")

from test_foundation_workflows import _test_batches, fm_config  # noqa: E402

LORA = {"method": "lora", "r": 4, "alpha": 8}


@pytest.mark.parametrize("name", ["hf_text", "hf_audio", "hf_vision", "timm"])
@pytest.mark.parametrize("spec", [LORA, {"method": "ia3"}, {"method": "bitfit"}], ids=["lora", "ia3", "bitfit"])
def test_an_adapter_starts_as_the_identity_trains_alone_and_merges_exactly(name, spec):
    torch.manual_seed(0)
    plain = fz.ENCODERS.get(name).example(out_dim=None).eval()  # no projection: the adapter's init draws from the RNG first
    torch.manual_seed(0)
    enc = fz.ENCODERS.get(name).example(out_dim=None, adapter=spec).eval()
    x = enc.example_input(3)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), plain(x), rtol=1e-6, atol=1e-6)  # LoRA B = 0, IA3 scales = 1 at the start
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "ia3_" in n or (spec["method"] == "bitfit" and n.endswith("bias")) for n in trainable)
    assert sum(p.numel() for p in enc.parameters() if p.requires_grad) < 0.4 * sum(p.numel() for p in enc.parameters())
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if p.requires_grad and not n.startswith("proj."):
                p.add_(0.05 * torch.randn_like(p))
        before = enc(x)
        merged = copy.deepcopy(enc)
        merge_adapter(merged.backbone)
        torch.testing.assert_close(merged(x), before, rtol=1e-5, atol=1e-5)
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    assert set(merged.state_dict()) == set(plain.state_dict())  # the plain architecture again


def test_unfreezing_leaves_an_adapter_s_base_frozen_and_bad_specs_fail():
    enc = fz.ENCODERS.get("hf_text").example(adapter=LORA)
    holder = torch.nn.ModuleDict({"encoders": torch.nn.ModuleDict({"text": enc})})
    unfreeze(holder)
    assert all(p.requires_grad == ("lora_" in n or n.startswith("proj.")) for n, p in enc.named_parameters() if "pooler" not in n)
    for spec, message in [({"method": "prefix"}, "method one of"), ({"method": "lora", "rank": 4}, "adapter.rank: unknown option for lora"),
                          ({"method": "lora", "r": 0}, "adapter.r: a positive int"),
                          ({"method": "lora", "target_modules": ["nope"]}, "adapter lora:")]:
        with pytest.raises(ValueError, match=message):
            fz.ENCODERS.get("hf_text").example(adapter=spec)


@pytest.mark.parametrize("name", ["hf_text", "timm"])
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(name):
    outs = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        enc = fz.ENCODERS.get(name).example(gradient_checkpointing=checkpointing, adapter=LORA).eval()
        assert getattr(enc.backbone, "is_activation_checkpointing", getattr(enc.backbone, "grad_checkpointing", None)) is checkpointing
        x = enc.example_input(2)
        out = enc(x)
        out.sum().backward()
        outs.append((out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-6)
    assert outs[0][1].keys() == outs[1][1].keys() and outs[0][1]
    for n in outs[0][1]:
        torch.testing.assert_close(outs[0][1][n], outs[1][1][n], rtol=1e-5, atol=1e-6)


def _adapted(tmp_path, **train_kw):
    cfg = fm_config(tmp_path, "attention", **train_kw)
    cfg["model"]["encoders"]["text"]["adapter"] = LORA
    cfg["model"]["encoders"]["audio"]["adapter"] = {"method": "ia3"}
    cfg["model"]["encoders"]["visual"]["adapter"] = {"method": "bitfit"}
    return cfg


@pytest.mark.slow
def test_adapter_runs_train_only_adapters_resume_bitwise_and_save_both_ways(tmp_path):
    run = tmp_path / "run"
    full = train(_adapted(tmp_path), run_dir=run, log=False)
    model, _, _ = load_run(run)
    torch.manual_seed(0)
    start = fz.build_model(_adapted(tmp_path))
    moved = {n for n, p in model.state_dict().items() if not torch.equal(p, start.state_dict()[n])}
    assert any("lora_B" in n for n in moved) and any("ia3_l" in n for n in moved)
    assert not any(n.startswith("encoders.text.backbone") and "lora_" not in n for n in moved)  # the base weights never move
    part = tmp_path / "part"
    train(_adapted(tmp_path), run_dir=part, log=False)
    (part / "checkpoints" / "last").write_text("epoch-001\n")
    shutil.rmtree(part / "checkpoints" / "epoch-002")
    assert train(_adapted(tmp_path), run_dir=part, resume=True, log=False)["weights_sha256"] == full["weights_sha256"]
    batches = _test_batches(run, model)
    save_run(run, tmp_path / "adapters")
    save_run(run, tmp_path / "merged", merge_adapters=True)
    with_adapters, merged = fz.from_pretrained(tmp_path / "adapters"), fz.from_pretrained(tmp_path / "merged")
    assert "adapter" in with_adapters.config["encoders"]["text"] and "adapter" not in merged.config["encoders"]["text"]
    path = export_pt2(with_adapters, tmp_path / "m.pt2", {"visual": [3, 160, 160]})
    program, serving = torch.export.load(path).module(), ServingModel(with_adapters)
    with torch.no_grad():
        for batch in batches:
            want = model(batch)
            assert torch.equal(with_adapters(batch), want)
            torch.testing.assert_close(merged(batch), want, rtol=1e-5, atol=1e-5)
            inputs = [batch[m][k] for m in serving.modalities if m in serving.keys for k in serving.keys[m]]
            inputs += [batch["visual"]] + [batch["present"][m] for m in serving.modalities]
            torch.testing.assert_close(program(*inputs), want, rtol=1e-5, atol=1e-5)
