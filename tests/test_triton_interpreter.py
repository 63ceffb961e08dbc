"""The plain-Triton kernels run on the CPU in Triton's interpreter (TRITON_INTERPRET=1), against the references in
float64: the causal conv and the LayerNorm / RMSNorm (forward and backward, computing in float64), the selective
step and the linear scan (real and complex, forward and backward; both compute in float32). So a machine without
a GPU checks the kernels' indexing and masks too; speed and the Gluon selective scan (which the interpreter cannot
run) are a GPU's (tests/test_scan.py, tests/test_conv.py, tests/test_norm.py there). Skipped where Triton is not
installed (`pip install triton` beside the CPU torch is enough). The checks run in a subprocess: the interpreter
is chosen when a kernel is defined, so the variable must be set before Triton is first imported."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

CHECKS = r"""
import json, torch
from seqrl.kernels import scan, triton_conv, triton_norm, triton_scan
from tests.test_conv import inputs, reference  # the conv's float64 reference and strided inputs
from tests.test_norm import inputs as ninputs, reference as nreference  # and the norms'

torch.manual_seed(0)
out = {}
f64 = dict(dtype=torch.float64)


def grads(y, leaves, gy):
    return torch.autograd.grad(y, leaves, gy)


def err(a, b):  # the largest error over tensors, each relative to its reference's largest magnitude
    return max(((x - y).abs().max() / y.abs().max().clamp(min=1)).item() for x, y in zip(a, b))


# causal conv + SiLU: strided x (half of a wider tensor), whole sequence and groups, against conv1d per group
for B, T, E, W, g in [(2, 9, 5, 4, 3), (2, 13, 70, 4, 0), (3, 40, 9, 3, 2), (1, 6, 3, 1, 3)]:
    x, w, bias = inputs(B, T, E, W, "cpu")
    y = triton_conv.causal_conv_silu_triton(x, w, bias, g)
    ref = reference(x, w, bias, g)
    gy = torch.randn(B, T, E, **f64)
    out[f"conv B={B} T={T} E={E} W={W} g={g}"] = err([y] + list(grads(y, (x, w, bias), gy)),
                                                    [ref] + list(grads(ref, (x, w, bias), gy)))

# the selective step against one step of the loop
b, d, n = 3, 40, 4
h = torch.randn(b, d, n)
u, delta, z = torch.randn(b, d), torch.randn(b, d), torch.randn(b, d)
A, D, db = -torch.rand(d, n), torch.randn(d), torch.randn(d)
Bm, Cm = torch.randn(b, n), torch.randn(b, n)
y, hn = triton_scan.selective_step_triton(h, u, delta, A, Bm, Cm, D, z, db, True)
yr, hr = scan.selective_scan_ref(*(t.double()[..., None] for t in (u, delta)), A.double(), Bm.double()[..., None],
                                 Cm.double()[..., None], D.double(), z.double()[..., None], delta_bias=db.double(),
                                 delta_softplus=True, h0=h.double())
out["step"] = err([y.double(), hn.double()], [yr[..., 0], hr])

# the linear scan, real and complex, values and gradients (a, x, h0)
for dtype in (torch.float64, torch.complex128):
    b, d, l = 2, 12, 300
    a = (torch.rand(b, d, l, **f64) * 0.99).to(dtype)
    if dtype.is_complex:
        a = a * torch.exp(1j * torch.rand(b, d, l, **f64))
    x, h0 = torch.randn(b, d, l, dtype=dtype), torch.randn(b, d, dtype=dtype)
    leaves = [t.requires_grad_() for t in (a, x, h0)]
    hs = triton_scan.linear_scan_triton(*leaves)
    ref = scan.linear_scan_ref(*leaves)
    g = torch.randn(b, d, l, dtype=dtype)
    out[f"linear {dtype}"] = err([hs] + list(grads(hs, leaves, g)), [ref] + list(grads(ref, leaves, g)))

# LayerNorm / RMSNorm: a partial block of rows, several blocks per backward program, strided x; float64
for shape, rms in [((7, 70), False), ((3, 70), True), ((20000, 5), False), ((20000, 5), True)]:
    x, w, bias = ninputs(shape, "cpu")
    bias = None if rms else bias
    y = triton_norm.norm_triton(x, w, bias, 1e-5, rms)
    ref = nreference(x, w, bias, 1e-5, rms)
    leaves = [t for t in (x, w, bias) if t is not None]
    gy = torch.randn(shape, **f64)
    out[f"norm {shape} rms={rms}"] = err([y] + list(grads(y, leaves, gy)), [ref] + list(grads(ref, leaves, gy)))

print(json.dumps(out))
"""


def test_plain_triton_kernels_in_the_interpreter():
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": path}
    run = subprocess.run([sys.executable, "-c", CHECKS], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(errors) == 11
    for name, e in errors.items():  # the step and the linear scan compute in float32, conv and norms in float64
        assert e < (1e-12 if name.startswith(("conv", "norm")) else 2e-6), f"{name}: relative error {e:.2e}"
