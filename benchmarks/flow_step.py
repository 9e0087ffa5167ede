"""Fused actnorm + invertible 1x1x1 conv (``mri_anomaly.ops.flow_step``) against plain PyTorch.

Methods, all fp32 with TF32 off, same parameters, each timed forward-only (no autograd) and
forward + backward (gradients w.r.t. x and every parameter, ``torch.autograd.backward((y, logdet),
(grad_y, grad_logdet))``):

* ``naive eager``    separate actnorm ``(x + b) * exp(s)``, ``F.conv3d`` with W as a 1x1x1 kernel,
  ``log|det W|`` by ``torch.linalg.slogdet(W.double())`` (as common Glow code does).
* ``folded conv3d``  W' = W diag(exp(s)), b' = W (exp(s) * b): one ``F.conv3d(x, W', b')``;
  log|det W| given (LU parameterisation).
* ``folded matmul``  the same fold as one batched ``torch.baddbmm`` on (N, C, V).
* ``compile(eager)`` ``torch.compile`` of the naive eager function (compile time excluded).
* ``ours``           ``mri_anomaly.ops.flow_step`` (autograd through ``flow_step_backward``).

Each entry is the median of ``--reps`` calls after a warm-up call (CPU wall clock; CUDA events with
rotating input buffers > 200 MB so inputs are not L2-resident). The copy bandwidth of the same device
(256 MiB CPU copy; > 1 GB D2D copy on a GPU) is the roofline reference: "ours GB/s" counts the minimal
traffic (forward: read x, write y; backward: read x and grad_y, write grad_x).

Usage::

    python benchmarks/flow_step.py            # full shapes + channel sweep
    python benchmarks/flow_step.py --quick    # small shapes, fewer repetitions
    python benchmarks/flow_step.py --device cuda
    python benchmarks/flow_step.py --config-shapes   # the layer shapes the shipped Glow configs run

Results go to ``docs/benchmarks/flow_step-<device>.md`` and ``.json``.

``--config-shapes`` builds the method of every shipped Glow config (``configs/*.yaml`` with ``method: glow``
or ``glow-ratio``), records the input shape of each :class:`~mri_anomaly.flows.ActNormInvConv` by forward
hooks at the training batch (timed forward + backward) and at the scoring batch (timed forward only; 3D:
``max(2, score.batch_size)`` volumes, since a lone volume is scored as a pair; 2D: ``score.batch_size``
slices), and times naive eager, folded matmul and ours at each distinct shape, interleaved (one call of
each method per round, ``--reps`` rounds, minimum reported: the fair statistic on a shared machine).
Targets: ours <= folded matmul and ours <= naive eager / 2. Results go to
``docs/benchmarks/flow_step-<device>-configs.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    copy_bandwidth,
    device_description,
    device_tag,
    markdown_table,
    pin_precision,
    save_results,
)
from mri_anomaly import ops  # noqa: E402
from mri_anomaly.flows import ActNormInvConv  # noqa: E402

FULL_SHAPES = [
    (1, 8, 64, 64, 64),
    (4, 32, 64, 64, 64),
    (2, 64, 32, 32, 32),
    (8, 256, 16, 16, 16),
    (2, 32, 80, 96, 80),
]
QUICK_SHAPES = [(1, 8, 32, 32, 32), (2, 16, 32, 32, 32), (2, 32, 16, 32, 32), (4, 64, 16, 16, 16)]
SWEEP_CHANNELS = [4, 8, 16, 32, 64, 128, 256]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GLOW_METHODS = ("glow", "glow-ratio")

Step = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    c = weight.shape[0]
    nd = x.dim() - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return conv(x, weight.view(c, c, *([1] * nd)), bias)


def naive_eager(x, log_scale, bias, weight, weight_logabsdet):
    view = (1, -1) + (1,) * (x.dim() - 2)
    h = (x + bias.view(view)) * torch.exp(log_scale).view(view)
    y = _conv(h, weight)
    voxels = math.prod(x.shape[2:])
    logabsdet = torch.linalg.slogdet(weight.double())[1].to(x.dtype)
    return y, (voxels * (log_scale.sum() + logabsdet)).expand(x.shape[0])


def _fold(log_scale, bias, weight):
    scale = torch.exp(log_scale)
    return weight * scale[None, :], weight @ (scale * bias)


def folded_conv(x, log_scale, bias, weight, weight_logabsdet):
    w, b = _fold(log_scale, bias, weight)
    voxels = math.prod(x.shape[2:])
    return _conv(x, w, b), (voxels * (log_scale.sum() + weight_logabsdet)).expand(x.shape[0])


def folded_matmul(x, log_scale, bias, weight, weight_logabsdet):
    w, b = _fold(log_scale, bias, weight)
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    y = torch.baddbmm(b.view(1, c, 1).expand(n, c, flat.shape[2]), w.expand(n, c, c), flat)
    voxels = flat.shape[2]
    return y.view(x.shape), (voxels * (log_scale.sum() + weight_logabsdet)).expand(n)


def ours(x, log_scale, bias, weight, weight_logabsdet):
    return ops.flow_step(x, log_scale, bias, weight, weight_logabsdet)


def time_method(
    step: Step, inputs: list[dict[str, torch.Tensor]], device: torch.device, reps: int, backward: bool
) -> tuple[float, float]:
    """Median and minimum seconds of one forward (or forward + backward) call, rotating through ``inputs``."""
    names = ("log_scale", "bias", "weight", "weight_logabsdet")

    def call(i: int) -> None:
        data = inputs[i % len(inputs)]
        if not backward:
            with torch.no_grad():
                step(data["x"], *(data[k] for k in names))
            return
        leaves = [data["x"]] + [data[k] for k in names]
        for t in leaves:
            t.grad = None
        y, logdet = step(*leaves)
        torch.autograd.backward((y, logdet), (data["grad_y"], data["grad_logdet"]))

    warm = 1
    for i in range(warm):
        call(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for i in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call(warm + i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            call(warm + i)
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], times[0]


def make_inputs(shape: tuple[int, ...], device: torch.device, copies: int) -> list[dict[str, torch.Tensor]]:
    c = shape[1]
    layer = ActNormInvConv(c)
    with torch.no_grad():
        layer.log_scale.normal_(0.0, 0.1)
        layer.bias.normal_(0.0, 0.1)
    params = {
        "log_scale": layer.log_scale.detach().to(device),
        "bias": layer.bias.detach().to(device),
        "weight": layer.weight(torch.float32).detach().to(device),
        "weight_logabsdet": layer.weight_logabsdet(torch.float32).detach().to(device),
    }
    out = []
    for _ in range(copies):
        data = {k: v.clone().requires_grad_() for k, v in params.items()}
        data["x"] = torch.randn(shape, device=device).requires_grad_()
        data["grad_y"] = torch.randn(shape, device=device)
        data["grad_logdet"] = torch.randn(shape[0], device=device)
        out.append(data)
    return out


def bench_shape(
    shape: tuple[int, ...], device: torch.device, reps: int, with_compile: bool
) -> list[dict[str, object]]:
    numel = math.prod(shape)
    copies = 1
    if device.type == "cuda":  # rotate buffers: > 200 MB of x + grad_y in flight, so not L2-resident
        copies = max(1, math.ceil(200e6 / (2 * 4 * numel)))
    inputs = make_inputs(shape, device, copies)
    methods: dict[str, Step] = {
        "naive eager": naive_eager,
        "folded conv3d": folded_conv,
        "folded matmul": folded_matmul,
    }
    if with_compile:
        methods["compile(eager)"] = torch.compile(naive_eager, dynamic=False)
    methods["ours"] = ours
    rows = []
    for name, step in methods.items():
        t_compile = time.perf_counter()
        fwd, fwd_min = time_method(step, inputs, device, reps, backward=False)
        fwd_bwd, fwd_bwd_min = time_method(step, inputs, device, reps, backward=True)
        row = {
            "shape": list(shape),
            "method": name,
            "forward_ms": fwd * 1e3,
            "forward_backward_ms": fwd_bwd * 1e3,
            "forward_min_ms": fwd_min * 1e3,
            "forward_backward_min_ms": fwd_bwd_min * 1e3,
        }
        if name == "ours":
            row["forward_GBps"] = 2 * 4 * numel / fwd / 1e9
            row["forward_backward_GBps"] = 5 * 4 * numel / fwd_bwd / 1e9
        if name.startswith("compile"):
            row["wall_s_incl_compile"] = time.perf_counter() - t_compile
        rows.append(row)
        print(
            f"  {str(shape):>24} {name:>15}: fwd {fwd * 1e3:9.2f} (min {fwd_min * 1e3:9.2f}) ms   "
            f"fwd+bwd {fwd_bwd * 1e3:9.2f} (min {fwd_bwd_min * 1e3:9.2f}) ms",
            flush=True,
        )
    del inputs
    return rows


def sweep_shape(channels: int, total: int) -> tuple[int, ...]:
    """(1, C, D, H, W) with C * D * H * W = total, D <= H <= W powers of two."""
    voxels = total // channels
    k = int(round(math.log2(voxels)))
    d = k // 3
    h = (k - d) // 2
    return (1, channels, 2**d, 2**h, 2 ** (k - d - h))


def summarize(rows: list[dict[str, object]]) -> list[list[str]]:
    by_shape: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_shape.setdefault(tuple(r["shape"]), {})[r["method"]] = r
    table = []
    for shape, m in by_shape.items():
        o = m["ours"]
        for name, r in m.items():
            speed_fb = r["forward_backward_ms"] / o["forward_backward_ms"]
            speed_f = r["forward_ms"] / o["forward_ms"]
            table.append(
                [
                    "x".join(map(str, shape)),
                    name,
                    f"{r['forward_ms']:.2f} ({r['forward_min_ms']:.2f})",
                    f"{r['forward_backward_ms']:.2f} ({r['forward_backward_min_ms']:.2f})",
                    "" if name == "ours" else f"{speed_f:.2f}x",
                    "" if name == "ours" else f"{speed_fb:.2f}x",
                ]
            )
    return table


def target_lines(rows: list[dict[str, object]]) -> list[str]:
    by_shape: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_shape.setdefault(tuple(r["shape"]), {})[r["method"]] = r
    lines = []
    for shape, m in by_shape.items():
        if shape[1] > 32:
            continue
        o = m["ours"]["forward_backward_ms"]
        vs_naive = m["naive eager"]["forward_backward_ms"] / o
        vs_mm = m["folded matmul"]["forward_backward_ms"] / o
        o_min = m["ours"]["forward_backward_min_ms"]
        vs_naive_min = m["naive eager"]["forward_backward_min_ms"] / o_min
        vs_mm_min = m["folded matmul"]["forward_backward_min_ms"] / o_min
        ok1 = "met" if vs_naive >= 2.0 else "MISSED"
        ok2 = "met" if vs_mm >= 1.2 else "MISSED"
        lines.append(
            f"- {'x'.join(map(str, shape))}: fwd+bwd {vs_naive:.2f}x naive eager (target >= 2: {ok1}), "
            f"{vs_mm:.2f}x folded matmul (target >= 1.2: {ok2}); on minima: {vs_naive_min:.2f}x and {vs_mm_min:.2f}x"
        )
    return lines


# --- the layer shapes of the shipped Glow configs ---


def glow_config_paths(config_dir: Path = CONFIG_DIR) -> list[Path]:
    """The shipped configs (``configs/*.yaml``) whose method is a Glow."""
    from mri_anomaly.training import load_config

    return [p for p in sorted(config_dir.glob("*.yaml")) if load_config(p)["method"] in GLOW_METHODS]


def actnorm_invconv_shapes(config: dict, batch: int) -> list[tuple[int, ...]]:
    """Input shapes, in call order, of every ActNormInvConv of the config's method on a batch of ``batch``.

    Builds the method, hooks its ActNormInvConv modules and runs each of its Glows (data-dependent init,
    then a forward) on zeros of ``(batch, in_channels, *grid)``; 2D: grid = ``spatial_size[:2]``.
    """
    from mri_anomaly.flows import Glow
    from mri_anomaly.runs import build_method

    method = build_method(config)
    grid = tuple(config["preprocessing"]["spatial_size"][: config["spatial_dims"]])
    x = torch.zeros((batch, config["in_channels"], *grid))
    seen: list[tuple[int, ...]] = []
    hooks = [
        m.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
        for m in method.modules()
        if isinstance(m, ActNormInvConv)
    ]
    try:
        with torch.no_grad():
            for glow in (m for m in method.modules() if isinstance(m, Glow)):
                glow.initialize(x)  # zeros: actnorm's std floor keeps the init finite
                seen.clear()  # keep the shapes of the forward (the same, counted once)
                glow(x)
                break  # the Glows of one method share their architecture
    finally:
        for h in hooks:
            h.remove()
    return seen


def config_shape_entries(paths: list[Path]) -> list[dict[str, object]]:
    """Distinct (shape, role) entries over ``paths``: role "train" (fwd+bwd) or "score" (fwd)."""
    from mri_anomaly.training import load_config

    entries: dict[tuple[tuple[int, ...], str], dict[str, object]] = {}
    for path in paths:
        config = load_config(path)
        score_batch = int(config["score"]["batch_size"])
        if config["spatial_dims"] == 3:
            score_batch = max(2, score_batch)  # a lone volume is scored as a pair
        for role, batch in (("train", int(config["train"]["batch_size"])), ("score", score_batch)):
            shapes = actnorm_invconv_shapes(config, batch)
            for shape in dict.fromkeys(shapes):
                entry = entries.setdefault(
                    (shape, role), {"shape": list(shape), "role": role, "configs": [], "layers": 0}
                )
                if path.stem not in entry["configs"]:
                    entry["configs"].append(path.stem)
                entry["layers"] = max(entry["layers"], shapes.count(shape))
    return list(entries.values())


CONFIG_METHODS: dict[str, Step] = {"naive eager": naive_eager, "folded matmul": folded_matmul, "ours": ours}


def interleaved_times(
    shape: tuple[int, ...], device: torch.device, rounds: int, backward: bool
) -> dict[str, list[float]]:
    """Seconds of each of CONFIG_METHODS per round: one call of each per round (``time_method`` with one
    repetition after its warm-up call), the order rotating from round to round."""
    inputs = make_inputs(shape, device, copies=1)
    names = list(CONFIG_METHODS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            _, seconds = time_method(CONFIG_METHODS[name], inputs, device, reps=1, backward=backward)
            times[name].append(seconds)
    return times


def bench_config_shapes(
    entries: list[dict[str, object]], device: torch.device, rounds: int
) -> list[dict[str, object]]:
    rows = []
    for entry in entries:
        shape = tuple(entry["shape"])
        modes = [("fwd", False)] + ([("fwd+bwd", True)] if entry["role"] == "train" else [])
        for mode, backward in modes:
            times = interleaved_times(shape, device, rounds, backward)
            # the target applies to fwd+bwd at training shapes and to fwd at scoring shapes
            row = dict(entry, mode=mode, target_mode=(entry["role"] == "train") == backward)
            for name, ts in times.items():
                ts = sorted(ts)
                row[f"{name} min_ms"] = ts[0] * 1e3
                row[f"{name} median_ms"] = ts[len(ts) // 2] * 1e3
            o = row["ours min_ms"]
            row["ours/folded"] = o / row["folded matmul min_ms"]
            row["ours/eager"] = o / row["naive eager min_ms"]
            row["meets_folded"] = row["ours/folded"] <= 1.0
            row["meets_eager"] = row["ours/eager"] <= 0.5
            rows.append(row)
            print(
                f"  {str(shape):>26} {entry['role']:>5} {mode:>7}: "
                + "  ".join(f"{n} {row[f'{n} min_ms']:.3f}" for n in CONFIG_METHODS)
                + f" ms (min)  ours/folded {row['ours/folded']:.2f}  ours/eager {row['ours/eager']:.2f}",
                flush=True,
            )
    return rows


def config_shapes_report(args: argparse.Namespace, argv: list[str] | None, device: torch.device) -> None:
    rounds = args.reps or 30
    load_before = os.getloadavg()
    print(f"device: {device_description(device)}; ops backend: {ops.backend_name()}; load {load_before}")
    paths = glow_config_paths()
    entries = config_shape_entries(paths)
    started = time.time()
    rows = bench_config_shapes(entries, device, rounds)
    elapsed = time.time() - started
    load_after = os.getloadavg()

    def yes(ok: bool) -> str:
        return "yes" if ok else "NO"

    table = []
    for r in rows:
        table.append(
            [
                ", ".join(r["configs"]),
                r["role"],
                "x".join(map(str, r["shape"])),
                r["layers"],
                r["mode"] + ("" if r["target_mode"] else " (info)"),
                f"{r['naive eager min_ms']:.3f}",
                f"{r['folded matmul min_ms']:.3f}",
                f"{r['ours min_ms']:.3f}",
                f"{r['ours/folded']:.2f}",
                f"{r['ours/eager']:.2f}",
                f"{yes(r['meets_folded'])} / {yes(r['meets_eager'])}" if r["target_mode"] else "",
            ]
        )
    targeted = [r for r in rows if r["target_mode"]]
    met = [r for r in targeted if r["meets_folded"] and r["meets_eager"]]
    command = (
        f"python benchmarks/{Path(__file__).name} {shlex.join(argv if argv is not None else sys.argv[1:])}"
    )
    md = [
        f"# flow_step at the layer shapes of the shipped Glow configs ({device_tag(device)})",
        "",
        f"- device: {device_description(device)}",
        f"- ops backend: {ops.backend_name()}; fp32; TF32 off",
        f"- configs: {', '.join(p.name for p in paths)}",
        "- shapes: the input of every ActNormInvConv (forward hooks) at train.batch_size (role train, timed "
        "fwd+bwd) and at the scoring batch (role score, timed fwd; 3D max(2, score.batch_size), 2D "
        "score.batch_size slices); `layers` counts the ActNormInvConv calls of that shape per forward of one Glow",
        f"- statistic: minimum over {rounds} interleaved rounds (one call of each method per round, "
        "rotating order, each after a warm-up call)",
        "- target (on the role's mode): ours <= folded matmul, and ours <= naive eager / 2",
        f"- command: `{command}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; wall time {elapsed:.0f} s",
        f"- load average (1, 5, 15 min): before {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after {', '.join(f'{v:.2f}' for v in load_after)}",
    ]
    if args.note:
        md.append(f"- note: {args.note}")
    md += [
        f"- targets met at {len(met)} of {len(targeted)} shapes",
        "",
        markdown_table(
            [
                "configs",
                "role",
                "shape",
                "layers",
                "mode",
                "naive eager ms",
                "folded matmul ms",
                "ours ms",
                "ours/folded",
                "ours/eager",
                "meets <= folded / <= eager/2",
            ],
            table,
        ),
        "",
    ]
    data = {
        "device": device_description(device),
        "tag": device_tag(device),
        "backend": ops.backend_name(),
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
        "rounds": rounds,
        "configs": [p.name for p in paths],
        "note": args.note,
        "rows": rows,
    }
    tag = f"{device.type}-configs"
    path = save_results(
        "flow_step", tag, "\n".join(md), data, **({"out_dir": args.out_dir} if args.out_dir else {})
    )
    print("\n".join(md))
    print(f"saved {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 repetitions")
    parser.add_argument(
        "--reps", type=int, default=None, help="timed repetitions per entry (default 5; quick 3)"
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="skip torch.compile (slow to compile on CPU)"
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the channel sweep")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--note", default="", help="a line added to the report (e.g. machine load)")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument(
        "--config-shapes",
        action="store_true",
        help="time the ActNormInvConv shapes of the shipped Glow configs (interleaved; --reps rounds, default 30)",
    )
    args = parser.parse_args(argv)

    pin_precision()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.config_shapes:
        config_shapes_report(args, argv, device)
        return
    reps = args.reps or (3 if args.quick else 5)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    sweep_total = 1 << (19 if args.quick else (25 if device.type == "cuda" else 23))

    print(f"device: {device_description(device)}; ops backend: {ops.backend_name()}")
    bandwidth = copy_bandwidth(device)
    print(f"copy bandwidth: {bandwidth:.1f} GB/s")
    started = time.time()
    rows = []
    for shape in shapes:
        rows += bench_shape(shape, device, reps, with_compile=not args.no_compile)
    sweep_rows = []
    if not args.no_sweep:
        for c in SWEEP_CHANNELS:
            sweep_rows += bench_shape(sweep_shape(c, sweep_total), device, reps, with_compile=False)
    elapsed = time.time() - started

    header = [
        "shape",
        "method",
        "fwd ms, median (min)",
        "fwd+bwd ms, median (min)",
        "fwd: ours faster by (median)",
        "fwd+bwd: ours faster by (median)",
    ]
    ours_rows = [r for r in rows + sweep_rows if r["method"] == "ours"]
    roofline = [
        [
            "x".join(map(str, r["shape"])),
            f"{r['forward_GBps']:.1f} ({100 * r['forward_GBps'] / bandwidth:.0f}%)",
            f"{r['forward_backward_GBps']:.1f} ({100 * r['forward_backward_GBps'] / bandwidth:.0f}%)",
        ]
        for r in ours_rows
    ]
    tag = device_tag(device)
    md = [
        f"# flow_step benchmark ({tag}{', quick' if args.quick else ''})",
        "",
        f"- device: {device_description(device)}",
        f"- ops backend: {ops.backend_name()}; fp32; TF32 off; median and minimum of {reps} after 1 warm-up",
        f"- copy bandwidth (read + write): {bandwidth:.1f} GB/s",
        f"- command: `python benchmarks/{Path(__file__).name} {shlex.join(argv if argv is not None else sys.argv[1:])}`",
        f"- wall time: {elapsed:.0f} s",
    ]
    if args.note:
        md.append(f"- note: {args.note}")
    md += ["", "## Targets (C <= 32)", "", *target_lines(rows + sweep_rows), "", "## Shapes", ""]
    md.append(markdown_table(header, summarize(rows)))
    if sweep_rows:
        md += [
            "",
            f"## Channel sweep (N * C * V = {sweep_total})",
            "",
            markdown_table(header, summarize(sweep_rows)),
        ]
    md += [
        "",
        "## Ours against the copy roofline (minimal bytes: fwd 2, fwd+bwd 5 tensor passes)",
        "",
        markdown_table(["shape", "fwd GB/s (% of copy)", "fwd+bwd GB/s (% of copy)"], roofline),
        "",
    ]
    data = {
        "device": device_description(device),
        "tag": tag,
        "backend": ops.backend_name(),
        "copy_bandwidth_GBps": bandwidth,
        "reps": reps,
        "quick": args.quick,
        "note": args.note,
        "rows": rows,
        "sweep_rows": sweep_rows,
    }
    out_dir = args.out_dir
    name = "flow_step-quick" if args.quick else "flow_step"
    path = save_results(name, tag, "\n".join(md), data, **({"out_dir": out_dir} if out_dir else {}))
    print("\n".join(md))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
