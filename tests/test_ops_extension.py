"""The compiled ops (torch.ops.mri_anomaly.*): opcheck, fp64 gradcheck, agreement with the reference,
determinism, named argument errors, torch.compile / torch.export, and CUDA against CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from mri_anomaly import ops
from mri_anomaly.ops import reference as ref

pytestmark = pytest.mark.skipif(
    not ops.extension_available("cpu"), reason="mri_anomaly._C is not built (MRI_ANOMALY_NO_EXTENSION=1?)"
)

SHAPES = [(2, 3, 5), (2, 4, 3, 5), (1, 5, 3, 2, 3), (3, 7, 9, 11, 13)]  # 1D/2D/3D; odd sizes; several tiles


def params(c: int, dtype=torch.float64, device="cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ls = 0.3 * torch.randn(c, generator=g, dtype=dtype)
    b = 0.5 * torch.randn(c, generator=g, dtype=dtype)
    w = torch.eye(c, dtype=dtype) + 0.3 * torch.randn(c, c, generator=g, dtype=dtype)
    lad = torch.linalg.slogdet(w.double())[1].to(dtype)
    w_inv = torch.linalg.inv(w.double()).to(dtype)
    return [t.to(device) for t in (ls, b, w, lad, w_inv)]


CPU_PATHS = ["tiled", "folded"]


@pytest.fixture(params=CPU_PATHS)
def cpu_path(request, monkeypatch):
    """Forces one CPU implementation (MRI_ANOMALY_CPU_PATH, read at each call): the tiled kernel, or the
    folded batched GEMM that small inputs run."""
    monkeypatch.setenv("MRI_ANOMALY_CPU_PATH", request.param)
    return request.param


def sample_inputs(dtype=torch.float64, device="cpu"):
    out = []
    for shape in SHAPES[:3]:
        x = torch.randn(shape, dtype=dtype, device=device)
        ls, b, w, lad, w_inv = params(shape[1], dtype, device)
        y, logdet = ref.flow_step(x, ls, b, w, lad)
        gy, gl = torch.randn_like(y), torch.randn_like(logdet)
        out.append(dict(x=x, y=y, ls=ls, b=b, w=w, lad=lad, w_inv=w_inv, gy=gy, gl=gl))
    return out


def test_backend_name():
    assert ops.backend_name() in ("extension (cpu)", "extension (cpu, cuda)")


def test_build_info_describes_this_build():
    """``_C.build_info()``: the build facts that are not ops, with fixed keys and types."""
    from mri_anomaly import _C, __version__

    info = _C.build_info()
    types = {
        "version": str,
        "torch_version": str,
        "compiler": str,
        "with_cuda": bool,
        "cuda_archs": str,
        "with_openmp": bool,
        "omp_max_threads": int,
        "cpu_tile_values": int,
        "cpu_tile_min_voxels": int,
        "cpu_tile_max_voxels": int,
        "cpu_folded_max_sample_values": int,
        "cpu_folded_min_voxels": int,
    }
    assert set(info) == set(types)
    for key, kind in types.items():
        if key == "omp_max_threads" and not info["with_openmp"]:
            kind = type(None)
        assert isinstance(info[key], kind), (key, info[key])
    assert info["version"] == __version__  # setup.py passes the package's __version__
    assert torch.__version__.startswith(info["torch_version"])  # compiled against the torch that loaded it
    assert info["compiler"]
    assert info["with_cuda"] == ops.extension_available("cuda")  # the CUDA kernels are registered iff built
    assert bool(info["cuda_archs"]) == info["with_cuda"]
    assert not info["with_openmp"] or info["omp_max_threads"] >= 1
    # The kernel's 2^17 values per voxel tile, as the CPU benchmarks (docs/benchmarks/flow_step-cpu-*.md) and
    # the C++ tests' shapes state it; and the tiles that the shapes of test_every_op_matches_reference were
    # picked for: (1, 64, 2100) spans 2 tiles of 2048 voxels, C = 256 gives 512-voxel tiles.
    assert info["cpu_tile_values"] == 2**17

    def tile(channels: int) -> int:
        voxels = info["cpu_tile_values"] // channels
        return max(info["cpu_tile_min_voxels"], min(info["cpu_tile_max_voxels"], voxels))

    assert tile(64) == 2048 < 2100 and tile(256) == 512


@pytest.mark.parametrize("case", [0, 2])  # 1D and 3D spatial
def test_opcheck_every_op(case):
    s = sample_inputs()[case]
    m = torch.ops.mri_anomaly
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    torch.library.opcheck(
        m.flow_step.default, (rg(s["x"]), rg(s["ls"]), rg(s["b"]), rg(s["w"]), rg(s["lad"]))
    )
    torch.library.opcheck(m.flow_step_inverse.default, (rg(s["y"]), rg(s["ls"]), rg(s["b"]), rg(s["w_inv"])))
    torch.library.opcheck(m.flow_step_backward.default, (s["gy"], s["gl"], s["x"], s["ls"], s["b"], s["w"]))
    torch.library.opcheck(
        m.flow_step_backward_from_output.default,
        (s["gy"], s["gl"], s["y"], s["ls"], s["b"], s["w"], s["w_inv"]),
    )
    torch.library.opcheck(m.channel_moments.default, (s["x"],))


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_gradcheck_flow_step_all_inputs(shape, cpu_path):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    ls, b, w, lad, _ = [t.requires_grad_() for t in params(shape[1])]
    assert torch.autograd.gradcheck(lambda *a: ops.flow_step(*a), (x, ls, b, w, lad))


def test_gradcheck_inverse_all_inputs():
    y = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    ls, b, _, _, w_inv = [t.requires_grad_() for t in params(3)]
    assert torch.autograd.gradcheck(lambda *a: ops.flow_step_inverse(*a), (y, ls, b, w_inv))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# (1, 64, 2100): 2 voxel tiles of 2048; (2, 256, 5, 11, 11): 512-voxel tiles, 4 tiles per chunk.
@pytest.mark.parametrize("shape", SHAPES + [(2, 40, 300), (1, 64, 2100), (2, 256, 5, 11, 11)])
def test_every_op_matches_reference(shape, dtype, cpu_path):
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    x = torch.randn(shape, dtype=dtype)
    ls, b, w, lad, w_inv = params(shape[1], dtype)
    y, logdet = ops.flow_step(x, ls, b, w, lad)
    y_ref, logdet_ref = ref.flow_step(x, ls, b, w, lad)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(logdet, logdet_ref, **tol)
    # A product with W^-1 carries rounding errors in proportion to its entries (up to ~8 at C = 256 here); the
    # folded GEMM sums in another order than the reference, the tiled kernel in the same (hence equal errors).
    inv_tol = dict(tol, atol=tol["atol"] * max(1.0, float(w_inv.abs().max())))
    torch.testing.assert_close(
        ops.flow_step_inverse(y_ref, ls, b, w_inv), ref.flow_step_inverse(y_ref, ls, b, w_inv), **inv_tol
    )
    gy, gl = torch.randn_like(y), torch.randn_like(logdet)
    for got, want in zip(
        ops.flow_step_backward(gy, gl, x, ls, b, w), ref.flow_step_backward(gy, gl, x, ls, b, w)
    ):
        torch.testing.assert_close(got, want, **tol)
    got = ops.flow_step_backward_from_output(gy, gl, y_ref, ls, b, w, w_inv)
    want = ref.flow_step_backward_from_output(gy, gl, y_ref, ls, b, w, w_inv)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, **tol)
    for a, e in zip(ops.channel_moments(x), ref.channel_moments(x)):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, e, atol=1e-9, rtol=1e-12)


def test_backward_from_output_equals_saved_input_and_round_trip(cpu_path):
    x = torch.randn(2, 6, 5, 7, 3, dtype=torch.float64)
    ls, b, w, lad, w_inv = params(6)
    y, logdet = ops.flow_step(x, ls, b, w, lad)
    gy, gl = torch.randn_like(y), torch.randn_like(logdet)
    x_rebuilt, *from_output = ops.flow_step_backward_from_output(gy, gl, y, ls, b, w, w_inv)
    torch.testing.assert_close(x_rebuilt, x)
    torch.testing.assert_close(ops.flow_step_inverse(y, ls, b, w_inv), x)
    for a, e in zip(from_output, ops.flow_step_backward(gy, gl, x, ls, b, w)):
        torch.testing.assert_close(a, e)


def test_logdet_equals_slogdet_and_brute_force_jacobian():
    x = torch.randn(1, 3, 2, 2, 1, dtype=torch.float64)
    ls, b, w, _, _ = params(3, seed=5)
    lad = torch.linalg.slogdet(w)[1]
    _, logdet = ops.flow_step(x, ls, b, w, lad)
    torch.testing.assert_close(logdet[0], 4 * (ls.sum() + lad))
    jac = torch.autograd.functional.jacobian(lambda t: ops.flow_step(t, ls, b, w, lad)[0], x)
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jac.reshape(12, 12))[1])


def test_non_contiguous_inputs():
    x = torch.randn(2, 5, 6, 4, dtype=torch.float64).transpose(2, 3)
    ls, b, w, lad, _ = params(5)
    y, _ = ops.flow_step(x, ls, b, w.t(), lad)
    torch.testing.assert_close(y, ref.flow_step(x, ls, b, w.t(), lad)[0])
    assert y.is_contiguous()


def test_deterministic_run_to_run_and_across_thread_counts(cpu_path):
    x = torch.randn(2, 16, 20, 20, 20)
    ls, b, w, lad, w_inv = params(16, torch.float32)
    y, logdet = ops.flow_step(x, ls, b, w, lad)
    gy, gl = torch.randn_like(y), torch.randn_like(logdet)
    first = ops.flow_step_backward_from_output(gy, gl, y, ls, b, w, w_inv) + ops.channel_moments(x)
    threads = torch.get_num_threads()
    try:
        for n in (1, threads, threads):
            torch.set_num_threads(n)
            again = ops.flow_step_backward_from_output(gy, gl, y, ls, b, w, w_inv) + ops.channel_moments(x)
            for a, e in zip(again, first):
                assert torch.equal(a, e)
    finally:
        torch.set_num_threads(threads)


def _all_outputs(x, ls, b, w, lad, w_inv, gy, gl):
    y, logdet = ops.flow_step(x, ls, b, w, lad)
    return (
        y,
        logdet,
        ops.flow_step_inverse(y, ls, b, w_inv),
        *ops.flow_step_backward(gy, gl, x, ls, b, w),
        *ops.flow_step_backward_from_output(gy, gl, y, ls, b, w, w_inv),
    )


@pytest.mark.parametrize("side", ["at max values", "above max values", "at min voxels", "below min voxels"])
def test_size_dispatch_picks_the_path_and_both_match_reference(side, monkeypatch):
    """The forward and inverse of inputs of at most ``cpu_folded_max_sample_values`` values per sample with at least
    ``cpu_folded_min_voxels`` voxels per sample run the folded GEMM, others the tiled kernel (the backward
    always the tiled kernel): without MRI_ANOMALY_CPU_PATH the results equal (bitwise) those of the forced
    path, and both paths agree with the reference on either side of each threshold."""
    from mri_anomaly import _C

    info = _C.build_info()
    limit, min_voxels = info["cpu_folded_max_sample_values"], info["cpu_folded_min_voxels"]
    c, n = 8, 2
    voxels = {
        "at max values": limit // c,
        "above max values": limit // c + 1,
        "at min voxels": min_voxels,
        "below min voxels": min_voxels - 1,
    }[side]
    folded = c * voxels <= limit and voxels >= min_voxels
    assert folded == side.startswith("at")
    x = torch.randn(n, c, voxels)
    ls, b, w, lad, w_inv = params(c, torch.float32)
    gy, gl = torch.randn_like(x), torch.randn(n)
    monkeypatch.delenv("MRI_ANOMALY_CPU_PATH", raising=False)
    auto = _all_outputs(x, ls, b, w, lad, w_inv, gy, gl)
    forced = {}
    for path in CPU_PATHS:
        monkeypatch.setenv("MRI_ANOMALY_CPU_PATH", path)
        forced[path] = _all_outputs(x, ls, b, w, lad, w_inv, gy, gl)
    for i, (a, e) in enumerate(zip(auto, forced["folded" if folded else "tiled"])):
        assert torch.equal(a, e), i
    for a, e in zip(auto[3:7], forced["tiled"][3:7]):  # flow_step_backward: always the tiled kernel
        assert torch.equal(a, e)
    # the reference in float64 (its float32 sums over 2^20 values are the less accurate side)
    x64, ls64, b64, w64, lad64, w_inv64, gy64, gl64 = (t.double() for t in (x, ls, b, w, lad, w_inv, gy, gl))
    y_ref, logdet_ref = ref.flow_step(x64, ls64, b64, w64, lad64)
    want = (
        y_ref,
        logdet_ref,
        x64,
        *ref.flow_step_backward(gy64, gl64, x64, ls64, b64, w64),
        *ref.flow_step_backward_from_output(gy64, gl64, y_ref, ls64, b64, w64, w_inv64),
    )
    for path in CPU_PATHS:
        for i, (a, e) in enumerate(zip(forced[path], want)):
            # parameter gradients are sums over 2^20 values of size ~sqrt(2^20): float32 inputs bound them to ~1e-6
            atol = 1e-2 if i in (4, 5, 6, 9, 10, 11) else 1e-4
            torch.testing.assert_close(a, e.float(), atol=atol, rtol=1e-4)


def test_loop_gemm_path_matches_reference():
    """MRI_ANOMALY_CPU_GEMM=loops (the portable kernels without BLAS) in a fresh interpreter."""
    code = (
        "import torch; from mri_anomaly import ops; from mri_anomaly.ops import reference as ref\n"
        "x = torch.randn(2, 9, 7, 5, 3, dtype=torch.float64); c = 9\n"
        "ls = 0.2*torch.randn(c, dtype=torch.float64); b = torch.randn(c, dtype=torch.float64)\n"
        "w = torch.eye(c, dtype=torch.float64) + 0.2*torch.randn(c, c, dtype=torch.float64); wi = torch.linalg.inv(w)\n"
        "lad = torch.linalg.slogdet(w)[1]; y, l = ops.flow_step(x, ls, b, w, lad)\n"
        "torch.testing.assert_close(y, ref.flow_step(x, ls, b, w, lad)[0])\n"
        "torch.testing.assert_close(ops.flow_step_inverse(y, ls, b, wi), x)\n"
        "gy = torch.randn_like(y); gl = torch.randn(2, dtype=torch.float64)\n"
        "for a, e in zip(ops.flow_step_backward_from_output(gy, gl, y, ls, b, w, wi),\n"
        "                ref.flow_step_backward_from_output(gy, gl, y, ls, b, w, wi)):\n"
        "    torch.testing.assert_close(a, e)\n"
        "print('ok')\n"
    )
    # (tiled: this small input would otherwise run the folded GEMM, which does not use the kernels' GEMM)
    env = dict(os.environ, MRI_ANOMALY_CPU_GEMM="loops", MRI_ANOMALY_CPU_PATH="tiled")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _valid(dtype=torch.float32):
    x = torch.randn(2, 3, 4, 4, dtype=dtype)
    ls, b, w, lad, _ = params(3, dtype)
    return [x, ls, b, w, lad]


@pytest.mark.parametrize(
    "index, bad, exc, match",
    [
        (0, torch.randn(3, 4), ValueError, "x must have shape"),
        (0, torch.randn(1, 3, 2, 2, 2, 2), ValueError, "x must have shape"),
        (0, torch.randn(2, 3, 4, 4).half(), TypeError, "x must be float32 or float64"),
        (1, torch.randn(4), ValueError, "log_scale must have shape"),
        (2, torch.randn(3, dtype=torch.float64), TypeError, "bias has dtype"),
        (3, torch.randn(3, 2), ValueError, "weight must have shape"),
        (3, torch.full((3, 3), float("nan")), ValueError, "weight has non-finite"),
        (1, torch.tensor([0.0, float("inf"), 0.0]), ValueError, "log_scale has non-finite"),
        (4, torch.tensor(float("nan")), ValueError, "weight_logabsdet has non-finite"),
        (4, torch.zeros(1), ValueError, "weight_logabsdet must have shape"),
        (2, torch.zeros(3, device="meta"), ValueError, "bias is on meta"),
    ],
)
def test_bad_input_raises_named_error_in_cpp(index, bad, exc, match):
    args = _valid()
    args[index] = bad
    with pytest.raises(exc, match=match):
        torch.ops.mri_anomaly.flow_step.default(*args)
    with pytest.raises(exc, match=match):
        ops.flow_step(*args)


def test_bad_input_backward_ops_in_cpp():
    x, ls, b, w, _ = _valid()
    m = torch.ops.mri_anomaly
    with pytest.raises(ValueError, match="x must have the shape of grad_y"):
        m.flow_step_backward.default(x, torch.zeros(2), x[:, :, :2], ls, b, w)
    with pytest.raises(ValueError, match="grad_logdet must have shape"):
        m.flow_step_backward.default(x, torch.zeros(3), x, ls, b, w)
    with pytest.raises(ValueError, match="weight_inverse must have shape"):
        m.flow_step_backward_from_output.default(x, torch.zeros(2), x, ls, b, w, w[:2])
    with pytest.raises(TypeError, match="y has dtype"):
        m.flow_step_backward_from_output.default(x, torch.zeros(2), x.double(), ls, b, w, w)
    with pytest.raises(ValueError, match="y must have shape"):
        m.flow_step_inverse.default(x[0, 0], ls, b, w)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        m.channel_moments.default(x.to(torch.int32))


def test_torch_compile_and_export():
    x = torch.randn(2, 4, 5, 6)
    ls, b, w, lad, _ = params(4, torch.float32)

    def step(x, ls, b, w, lad):
        y, logdet = ops.flow_step(x * 2.0, ls, b, w, lad)
        return y.relu(), logdet

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    xr = x.clone().requires_grad_()
    y, logdet = compiled(xr, ls, b, w, lad)
    torch.testing.assert_close(y, step(x, ls, b, w, lad)[0])
    (y.sum() + logdet.sum()).backward()
    xe = x.clone().requires_grad_()
    ye, le = step(xe, ls, b, w, lad)
    (ye.sum() + le.sum()).backward()
    torch.testing.assert_close(xr.grad, xe.grad)

    class Step(torch.nn.Module):
        def forward(self, x, ls, b, w, lad):
            return ops.flow_step(x, ls, b, w, lad)

    exported = torch.export.export(Step(), (x, ls, b, w, lad))
    assert any("mri_anomaly.flow_step" in str(n.target) for n in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(x, ls, b, w, lad)[0], ref.flow_step(x, ls, b, w, lad)[0])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES + [(2, 64, 9, 7, 5), (1, 256, 3, 4, 5)])
def test_cuda_matches_cpu(shape, dtype):
    assert ops.extension_available("cuda"), ops.backend_name()
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    x = torch.randn(shape, dtype=dtype)
    ls, b, w, lad, w_inv = params(shape[1], dtype)
    cpu_args = (x, ls, b, w, lad)
    cuda = [t.cuda() for t in cpu_args]
    y_cpu, logdet_cpu = ops.flow_step(*cpu_args)
    y_gpu, logdet_gpu = ops.flow_step(*cuda)
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, **tol)
    torch.testing.assert_close(logdet_gpu.cpu(), logdet_cpu, **tol)
    torch.testing.assert_close(
        ops.flow_step_inverse(y_gpu, cuda[1], cuda[2], w_inv.cuda()).cpu(),
        ops.flow_step_inverse(y_cpu, ls, b, w_inv),
        **tol,
    )
    gy, gl = torch.randn_like(y_cpu), torch.randn_like(logdet_cpu)
    got = ops.flow_step_backward_from_output(
        gy.cuda(), gl.cuda(), y_gpu, cuda[1], cuda[2], cuda[3], w_inv.cuda()
    )
    want = ops.flow_step_backward_from_output(gy, gl, y_cpu, ls, b, w, w_inv)
    for a, e in zip(got, want):
        torch.testing.assert_close(a.cpu(), e, **tol)
    for a, e in zip(
        ops.flow_step_backward(gy.cuda(), gl.cuda(), *cuda[:4]), ops.flow_step_backward(gy, gl, *cpu_args[:4])
    ):
        torch.testing.assert_close(a.cpu(), e, **tol)
    for a, e in zip(ops.channel_moments(cuda[0]), ops.channel_moments(x)):
        torch.testing.assert_close(a.cpu(), e, atol=1e-9, rtol=1e-12)
    # Deterministic parameter-gradient reductions on the device too.
    again = ops.flow_step_backward_from_output(
        gy.cuda(), gl.cuda(), y_gpu, cuda[1], cuda[2], cuda[3], w_inv.cuda()
    )
    for a, e in zip(again, got):
        assert torch.equal(a, e)


@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck():
    s = sample_inputs(device="cuda")[1]
    x = s["x"].clone().requires_grad_()
    ls, b, w, lad = [s[k].clone().requires_grad_() for k in ("ls", "b", "w", "lad")]
    assert torch.autograd.gradcheck(lambda *a: ops.flow_step(*a), (x, ls, b, w, lad))
    m = torch.ops.mri_anomaly
    torch.library.opcheck(
        m.flow_step_backward_from_output.default,
        (s["gy"], s["gl"], s["y"], s["ls"], s["b"], s["w"], s["w_inv"]),
    )
    with pytest.raises(ValueError, match="bias is on"):
        m.flow_step.default(s["x"], s["ls"], s["b"].cpu(), s["w"], s["lad"])
