"""The layer debugger: clean runs stay within thresholds, planted faults are located."""

import io
import logging

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (run kernels/install-cpu-torch.sh)")

from kernels.debug import (  # noqa: E402
    STAGES,
    MoEConfig,
    Nvfp4MoEBlock,
    debug_layer,
    forward_layer,
    nan_fault,
    noise_fault,
    scale_fault,
    synthetic_tokens,
)
from kernels.debug.__main__ import main as cli_main  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet_reference_path_warnings():
    logging.getLogger("kernels.nvfp4").setLevel(logging.ERROR)
    yield
    logging.getLogger("kernels.nvfp4").setLevel(logging.NOTSET)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_block_is_within_thresholds(device, seed):
    report = debug_layer(seed=seed, device=device, verbose=False)
    assert [s.name for s in report.stages] == list(STAGES)
    assert report.ok and report.first_bad_stage is None and report.culprit is None, report.plain_table()
    assert report["rmsnorm"].error.rel_fro < 0.02
    # NVFP4 does change the result: the comparison is not vacuous
    assert 0.05 < report["router_logits"].error.rel_fro and 0.05 < report["residual"].error.rel_fro
    assert report.output.device.type == device.type


FAULTS = {
    "noise": lambda: noise_fault(1.0, seed=7),
    "scale": lambda: scale_fault(4.0),
    "nan": lambda: nan_fault(5),
}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("kind", ["noise", "scale", "nan"])
def test_planted_fault_is_located(device, stage, kind):
    report = debug_layer(device=device, faults={stage: FAULTS[kind]()}, verbose=False)
    assert report.first_bad_stage == stage, report.plain_table()
    assert report.culprit == stage
    before = STAGES[: STAGES.index(stage)]
    assert all(not report[s].crossed for s in before)
    assert report[stage].local_crossed


def test_subtle_fault_caught_by_tight_threshold(device):
    # a 5 % gain error in the norm hides under the NVFP4 noise downstream but not at its own stage
    report = debug_layer(device=device, faults={"rmsnorm": scale_fault(1.05)}, verbose=False)
    assert report.first_bad_stage == "rmsnorm"
    assert 0.04 < report["rmsnorm"].error.rel_fro < 0.06


def test_corrupted_scale_layout_in_shared_expert(device):
    # a realistic bug: the shared expert's down projection holds row-major scales where the
    # swizzled layout is expected (as if the swizzle step had been skipped)
    block = Nvfp4MoEBlock.synthetic(device=device)
    lin = block.shared_expert.down
    rowmajor = torch.zeros_like(lin._scale_b_bytes).reshape(-1)
    from kernels.nvfp4 import quantize_to_nvfp4

    s = quantize_to_nvfp4(lin.weight).scales.view(torch.uint8).reshape(-1)
    rowmajor[: s.numel()] = s
    lin._scale_b_bytes = rowmajor.reshape(lin._scale_b_bytes.shape)
    report = debug_layer(block, verbose=False)
    assert report.first_bad_stage == "shared_expert" and report.culprit == "shared_expert", report.plain_table()


def test_wrong_top_k_in_routing(device):
    # top-1 routing where the reference does top-2: the chained error hides under the
    # (loose) routing threshold, the local error does not
    block = Nvfp4MoEBlock.synthetic(device=device)
    block.config = MoEConfig(top_k=1)
    report = debug_layer(block, config=MoEConfig(), verbose=False)
    assert report.first_bad_stage == "routing" and report.culprit == "routing", report.plain_table()


def test_wrong_router_global_scale(device):
    block = Nvfp4MoEBlock.synthetic(device=device)
    block.router._global_scale_b = block.router._global_scale_b * 4
    report = debug_layer(block, verbose=False)
    assert report.first_bad_stage == "router_logits"


def test_drift_is_reported_as_upstream(device):
    # errors within their own stages' (here loosened) thresholds that add up to a crossing
    # later on: the first crossing is named, but no stage is wrong on its own
    faults = {"routed_experts": noise_fault(0.8, seed=1), "shared_expert": noise_fault(0.8, seed=2)}
    loose = {"routed_experts": 1.5, "shared_expert": 1.5}
    report = debug_layer(device=device, faults=faults, thresholds={**loose, "moe_out": 0.5},
                         local_thresholds=loose, verbose=False)
    assert report.first_bad_stage == "moe_out", report.plain_table()
    assert report.culprit is None
    assert "drift accumulated upstream" in report.summary()


def test_forward_layer_is_seeded_and_device_agnostic(device):
    cfg = MoEConfig()
    a = forward_layer(Nvfp4MoEBlock.synthetic(cfg, seed=3, device=device), synthetic_tokens(cfg, 8, 4, device))
    b = forward_layer(Nvfp4MoEBlock.synthetic(cfg, seed=3, device=device), synthetic_tokens(cfg, 8, 4, device))
    assert set(a) == {"x", *STAGES}
    assert torch.equal(a["residual"], b["residual"])
    assert a["residual"].dtype == torch.bfloat16 and a["residual"].shape == (8, cfg.hidden)
    with pytest.raises(KeyError):
        forward_layer(Nvfp4MoEBlock.synthetic(cfg, device=device), a["x"], faults={"nope": scale_fault(2)})


def test_tables_plain_and_rich(device):
    report = debug_layer(device=device, faults={"routing": scale_fault(3.0)}, verbose=False)
    plain = report.render(use_rich=False)
    lines = plain.splitlines()
    assert lines[0].split()[:4] == ["stage", "shape", "max_abs", "rel_fro"]
    assert all(any(line.startswith(s) for line in lines) for s in STAGES)
    assert "FIRST >THR >LOCAL" in plain
    assert plain.rstrip().endswith("first stage over threshold: routing (its own computation is wrong: local error crosses)")
    pytest.importorskip("rich", reason="rich not installed")
    rich_text = report.render(use_rich=True)
    assert "routing" in rich_text and "FIRST >THR >LOCAL" in rich_text and "┃" in rich_text
    buf = io.StringIO()
    debug_layer(device=device, file=buf, use_rich=False)
    assert "all stages within threshold" in buf.getvalue()


def test_cli_exit_status(capsys):
    assert cli_main(["--plain"]) == 0
    assert cli_main(["--plain", "--fault", "shared_expert:noise=1"]) == 1
    out = capsys.readouterr().out
    assert "first stage over threshold: shared_expert" in out
