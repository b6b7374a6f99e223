"""The MFU denominator: every listed GPU's datasheet figure (dense, no sparsity), and fp32 at the
TF32 or the true single-precision peak as ``torch.get_float32_matmul_precision()`` says."""

import pytest
import torch

from sprout.peaks import GPU_PEAKS, gpu_peak, peak_for_name

T = 1e12
# Names as torch.cuda.get_device_name reports them -> (fp32, tf32, bf16) dense TFLOP/s.
DEVICES = {
    "NVIDIA A100-SXM4-80GB": (19.5, 156, 312),
    "NVIDIA A100-PCIE-40GB": (19.5, 156, 312),
    "NVIDIA A100 80GB PCIe": (19.5, 156, 312),
    "NVIDIA H100 80GB HBM3": (67, 494.5, 989.5),
    "NVIDIA H100 PCIe": (51, 378, 756.5),
    "NVIDIA H100 NVL": (60, 417.5, 835.5),
    "NVIDIA H200": (67, 494.5, 989.5),
    "NVIDIA H200 NVL": (60, 417.5, 835.5),
}


@pytest.fixture
def precision():
    before = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("name", DEVICES)
def test_every_listed_device_gets_its_own_dense_datasheet_peak(name, precision):
    fp32, tf32, bf16 = DEVICES[name]
    assert peak_for_name(name, torch.bfloat16) == pytest.approx(bf16 * T)
    assert peak_for_name(name, torch.float16) == pytest.approx(bf16 * T)
    precision("highest")
    assert peak_for_name(name, torch.float32) == pytest.approx(fp32 * T)
    for setting in ("high", "medium"):
        precision(setting)
        assert peak_for_name(name, torch.float32) == pytest.approx(tf32 * T)


def test_every_table_row_is_reached_and_unknown_devices_have_none():
    reached = {next(part for part, _ in GPU_PEAKS if part in name) for name in DEVICES}
    assert reached == {part for part, _ in GPU_PEAKS}
    assert peak_for_name("NVIDIA GeForce RTX 4090", torch.bfloat16) is None
    assert gpu_peak(torch.device("cpu"), torch.bfloat16) is None
