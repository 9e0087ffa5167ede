"""One Glow training step (forward + backward + Adam) of a 3D Glow: our ops vs plain PyTorch layers.

Variants (same architecture, same weights, same couplings, squeeze and priors):

* ``ours-memeff``   our fused ActNormInvConv ops, ``memory_efficient=True`` (invertible backprop: each
  scale's chain of steps keeps only its output; backward rebuilds the activations layer by layer).
* ``ours-autograd`` our fused ops with ordinary autograd.
* ``plain-autograd`` plain PyTorch layers with ordinary autograd: a separate actnorm module
  (``(x + bias) * exp(log_scale)``), ``F.conv3d`` 1x1x1 with a dense weight, ``log|det W|`` by
  ``torch.linalg.slogdet`` (as in common Glow implementations).

Measured, for each configuration (cube edge, coupling width, K):

* ``step_s``: median wall time of ``--repeats`` training steps after one warm-up step, the three variants'
  steps interleaved in one subprocess so that load from other jobs falls on all of them alike
  (``torch.cuda.synchronize`` around each step on CUDA).
* ``peak_mib``: in a fresh subprocess per variant, after a warm-up step (gradients kept, Adam state
  allocated), the peak memory of one more step above the memory held before it: activations and
  temporaries on top of parameters, gradients and optimiser state. CPU: the RSS high-water mark
  (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the RSS before the step, with glibc told to
  return freed blocks >= 64 KiB to the OS at once (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``).
  CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the step.
* ``saved_mib``: bytes of distinct tensors autograd saves for backward during one forward (parameters
  excluded), by :func:`mri_anomaly.flows.saved_activation_bytes`: the activation memory that grows with depth.
* ``state_mib``: gradients + Adam moments (3 x parameter bytes).

Usage::

    python benchmarks/glow_step.py --threads 1          # CPU: 16^3 x widths 64, 512 and 32^3 x 64; K = 4, 8, 16, 32
    python benchmarks/glow_step.py --device cuda --find-max-edge   # 64^3 and 128^3 x widths 64, 512

Tables go to ``docs/benchmarks/glow_step-<device>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model  # noqa: E402

VARIANTS = ("ours-memeff", "ours-autograd", "plain-autograd")


class PlainActNormConv(nn.Module):
    """Actnorm then a 1x1x1 convolution, written with plain PyTorch layers (the baseline).

    ``log|det W|`` comes from ``torch.linalg.slogdet`` on a dense weight (a host sync on CUDA).
    Built from an :class:`~mri_anomaly.flows.ActNormInvConv` so that both compute the same function.
    """

    def __init__(self, fused: nn.Module) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(fused.log_scale.detach().clone())
        self.bias = nn.Parameter(fused.bias.detach().clone())
        self.weight = nn.Parameter(fused.weight(torch.float32).detach().clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        voxels = x[0, 0].numel()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        h = (x + self.bias.view(shape)) * torch.exp(self.log_scale).view(shape)
        conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
        y = conv(h, self.weight.view(*self.weight.shape, *([1] * (x.dim() - 2))))
        logdet = voxels * (self.log_scale.sum() + torch.linalg.slogdet(self.weight)[1])
        return y, logdet.expand(x.shape[0])


def build(variant: str, size: int, width: int, depth: int, levels: int, batch: int, device: torch.device):
    from mri_anomaly.flows import Glow, dequantize

    torch.manual_seed(0)
    glow = Glow(
        3, 1, levels=levels, steps=depth, hidden_channels=width, memory_efficient=(variant == "ours-memeff")
    )
    x = dequantize(torch.rand(batch, 1, size, size, size), training=True)
    glow.initialize(x)
    if variant == "plain-autograd":
        for chain in glow.chains:
            for step in chain.layers:
                step.layers[0] = PlainActNormConv(step.layers[0])
    return glow.to(device), x.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _training_step(
    glow: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    device: torch.device,
    set_to_none: bool = True,
) -> float:
    _sync(device)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=set_to_none)
    loss = -glow(x).log_prob.mean() / x[0].numel()
    loss.backward()
    optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the VmHWM high-water mark (Linux)
        f.write("5")


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_memory(
    variant: str, size: int, width: int, depth: int, levels: int, batch: int, device_name: str
) -> dict:
    """Child process: the extra memory one training step needs on top of the persistent state, and the
    activations autograd saves.

    A warm-up step first allocates gradients (kept: ``zero_grad(set_to_none=False)``) and Adam's moments, so
    the baseline holds parameters, gradients and optimiser state; the peak above it during the second step
    is activations plus temporaries (the part memory-efficient backprop is about).
    """
    from mri_anomaly.flows import saved_activation_bytes

    device = torch.device(device_name)
    glow, x = build(variant, size, width, depth, levels, batch, device)
    optimizer = torch.optim.Adam(glow.parameters(), lr=1e-4)
    with torch.no_grad():
        log_prob = glow(x).log_prob.mean().item()
    _training_step(glow, optimizer, x, device, set_to_none=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_mib()
        _reset_peak_rss()
    _training_step(glow, optimizer, x, device, set_to_none=False)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = _peak_rss_mib() - base
    saved = saved_activation_bytes(glow, x) / 2**20
    # Gradients and Adam's two moment buffers (3 x the parameters): in the baseline, proportional to depth.
    state = 3 * sum(p.numel() * p.element_size() for p in glow.parameters()) / 2**20
    return {"peak_mib": peak, "state_mib": state, "saved_mib": saved, "log_prob_before": log_prob}


def run_timing(
    variants: list[str],
    size: int,
    width: int,
    depth: int,
    levels: int,
    batch: int,
    repeats: int,
    device_name: str,
) -> dict:
    """Child process: step times of all variants, interleaved (A, B, C, A, B, C, ...) so that load from other
    jobs on a shared machine falls on every variant alike. One warm-up step each first."""
    device = torch.device(device_name)
    models = {v: build(v, size, width, depth, levels, batch, device) for v in variants}
    optimizers = {v: torch.optim.Adam(models[v][0].parameters(), lr=1e-4) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for v in variants:
        _training_step(*models[v][:1], optimizers[v], models[v][1], device)
    for _ in range(repeats):
        for v in variants:
            times[v].append(_training_step(models[v][0], optimizers[v], models[v][1], device))
    return {v: times[v] for v in variants}


def _child(
    args: argparse.Namespace, mode: str, variants: list[str], size: int, width: int, depth: int
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        ",".join(variants),
        str(size),
        str(width),
        str(depth),
        "--levels",
        str(args.levels),
        "--batch",
        str(args.batch),
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    # CPU: glibc serves blocks >= 64 KiB by mmap and returns them at free (no dynamic threshold, no heap
    # retention), so the RSS follows live tensor memory instead of allocator slack.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        oom = "out of memory" in proc.stderr.lower() or proc.returncode in (-9, 137)
        return {"error": "OOM" if oom else tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, size: int, width: int, depth: int) -> list[dict]:
    """Memory of each variant in its own fresh process, then the interleaved timing in one more."""
    results = []
    for variant in args.variants:
        row = {
            "variant": variant,
            "size": size,
            "width": width,
            "depth": depth,
            "levels": args.levels,
            "batch": args.batch,
        }
        row.update(_child(args, "memory", [variant], size, width, depth))
        results.append(row)
    ok = [r["variant"] for r in results if "error" not in r]
    timing = _child(args, "time", ok, size, width, depth) if ok else {}
    for row in results:
        if row["variant"] in timing:
            row["step_s_all"] = timing[row["variant"]]
            row["step_s"] = statistics.median(timing[row["variant"]])
        elif "error" in timing and "error" not in row:
            row["error"] = timing["error"]
    return results


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"# Glow training step: our ops vs plain PyTorch ({meta['device']})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; torch {meta['torch']}; ops backend: {meta['backend']}; threads: {meta['threads']}; "
        f"load average before/after: {meta['load_before']} / {meta['load_after']}.",
        "",
        f"3D Glow, 1 channel, batch {meta['batch']}, {meta['levels']} levels, affine couplings, fp32, Adam. "
        "K = steps per scale, width = coupling hidden channels. Variants: `memeff` = our ops + memory-efficient "
        "backprop, `ours` = our ops + ordinary autograd, `plain` = plain PyTorch layers (actnorm module, conv3d "
        "1x1x1, slogdet) + ordinary autograd.",
        "",
        f"* `step s`: median of {meta['repeats']} training steps (forward + backward + Adam) after a warm-up, the "
        "variants' steps interleaved in one process.",
        f"* `step peak MiB`: one fresh process per variant; {meta['peak_meaning']}, during a step after a warm-up "
        "step, i.e. on top of parameters, gradients and Adam state: activations and temporaries.",
        "* `saved MiB`: tensors autograd saves for backward in one forward (parameters excluded), via "
        "`saved_tensors_hooks`.",
        "* `state MiB`: parameters + gradients + Adam moments (4 x parameter bytes), for context; it grows with K in "
        "every variant.",
        "",
    ]
    if meta["device"].startswith("cpu"):
        lines += [
            "CPU caveats: the 2 cores are shared with other engineers' jobs, so step times are noisy (load average "
            "above; one thread per run). The child processes run with `MALLOC_MMAP_THRESHOLD_=65536 "
            "MALLOC_TRIM_THRESHOLD_=0` so that freed tensors leave the RSS. At these volumes the convolutions' "
            "im2col buffers (27 x input channels x voxels) are a large part of the step peak in every variant.",
            "",
        ]
    lines += [
        "| edge | width | K | memeff s | ours s | plain s | memeff/plain time | plain/ours time |"
        " memeff step peak MiB | ours step peak MiB | plain step peak MiB | plain/memeff peak |"
        " memeff saved MiB | plain saved MiB | state MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keyed = {(r["variant"], r["size"], r["width"], r["depth"]): r for r in results}
    configs = sorted({(r["size"], r["width"], r["depth"]) for r in results})

    def get(variant, cfg, key):
        r = keyed.get((variant, *cfg))
        return None if r is None or "error" in r else r.get(key)

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for cfg in configs:
        t_me, t_ours, t_plain = (get(v, cfg, "step_s") for v in VARIANTS)
        p_me, p_ours, p_plain = (get(v, cfg, "peak_mib") for v in VARIANTS)
        s_me, _, s_plain = (get(v, cfg, "saved_mib") for v in VARIANTS)
        state = get("ours-autograd", cfg, "state_mib")
        errors = [
            f"{v}: {keyed[(v, *cfg)]['error']}" for v in VARIANTS if "error" in keyed.get((v, *cfg), {})
        ]
        lines.append(
            f"| {cfg[0]}³ | {cfg[1]} | {cfg[2]} | {fmt(t_me, '.3f')} | {fmt(t_ours, '.3f')} | {fmt(t_plain, '.3f')} | "
            f"{_ratio(t_me, t_plain)} | {_ratio(t_plain, t_ours)} | {fmt(p_me, '.1f')} | {fmt(p_ours, '.1f')} | "
            f"{fmt(p_plain, '.1f')} | {_ratio(p_plain, p_me)} | {fmt(s_me, '.2f')} | {fmt(s_plain, '.1f')} | "
            f"{fmt(None if state is None else state * 4 / 3, '.0f')} |"
            + (f" {'; '.join(errors)}" if errors else "")
        )
    lines += ["", "Summary per edge and width (computed from the rows above):", ""]
    for edge, width in sorted({(c[0], c[1]) for c in configs}):
        rows = [c for c in configs if c[:2] == (edge, width)]
        me_peaks = [get("ours-memeff", c, "peak_mib") for c in rows]
        time_ratios = [
            get("ours-memeff", c, "step_s") / get("plain-autograd", c, "step_s")
            for c in rows
            if get("ours-memeff", c, "step_s") and get("plain-autograd", c, "step_s")
        ]
        ours_ratios = [
            get("plain-autograd", c, "step_s") / get("ours-autograd", c, "step_s")
            for c in rows
            if get("plain-autograd", c, "step_s") and get("ours-autograd", c, "step_s")
        ]
        k16 = [c for c in rows if c[2] == 16]
        parts = []
        if all(v is not None for v in me_peaks) and me_peaks:
            parts.append(
                f"memeff step peak {min(me_peaks):.1f}-{max(me_peaks):.1f} MiB over K = "
                f"{', '.join(str(c[2]) for c in rows)}"
            )
        if k16 and get("ours-memeff", k16[0], "peak_mib") and get("plain-autograd", k16[0], "peak_mib"):
            parts.append(
                f"plain/memeff peak at K = 16: "
                f"{get('plain-autograd', k16[0], 'peak_mib') / get('ours-memeff', k16[0], 'peak_mib'):.2f}x"
            )
        if time_ratios:
            parts.append(f"memeff/plain time {min(time_ratios):.2f}-{max(time_ratios):.2f}x")
        if ours_ratios:
            parts.append(
                f"plain/ours time (ordinary backprop) {min(ours_ratios):.2f}-{max(ours_ratios):.2f}x"
            )
        lines.append(f"* {edge}³, width {width}: " + "; ".join(parts) + ".")
    if meta.get("max_edge"):
        lines += ["", "Largest trainable edge (cube side, one step completes), width 512, K = 16:", ""]
        lines += [f"* {v}: {e}" for v, e in meta["max_edge"].items()]
    if meta.get("notes"):
        lines += ["", "Reading (written by hand after the run, stored in the JSON's meta.notes):", ""]
        lines += [f"* {note}" for note in meta["notes"]]
    lines += [
        "",
        "Targets (issue 3): memory-efficient peak memory flat in K and >= 4x below plain autograd at K = 16, at "
        "<= 1.3x plain autograd's step time; with ordinary backprop our ops >= 1.2x faster than the plain layers.",
        "",
    ]
    return "\n".join(lines)


def _load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        metavar="EDGExWIDTH",
        help="cube edge and coupling width pairs (default CPU: 16x64 16x512 32x64; "
        "CUDA: 64x64 64x512 128x64 128x512); overrides --sizes/--widths",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="cube edges (with --widths)")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads in each run (0: torch's default). On a CPU shared with other "
        "jobs use 1: spinning OpenMP workers that lose their core stall every op",
    )
    parser.add_argument(
        "--find-max-edge",
        action="store_true",
        help="also find the largest cube edge (multiple of 16) one step fits in, at width 512 and K=16",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="only rewrite the .md next to a saved .json (no measurement)",
    )
    parser.add_argument(
        "--child", nargs=5, metavar=("MODE", "VARIANTS", "SIZE", "WIDTH", "DEPTH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child:
        mode, variants, size, width, depth = args.child
        if mode == "memory":
            result = run_memory(
                variants, int(size), int(width), int(depth), args.levels, args.batch, args.device
            )
        else:
            result = run_timing(
                variants.split(","),
                int(size),
                int(width),
                int(depth),
                args.levels,
                args.batch,
                args.repeats,
                args.device,
            )
        print(json.dumps(result))
        return

    if args.render:
        saved = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(saved["results"], saved["meta"]))
        print(args.render.with_suffix(".md").read_text())
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.sizes:
        configs = [(size, width) for size in args.sizes for width in args.widths]
    else:
        default = (
            ["16x64", "16x512", "32x64"] if args.device == "cpu" else ["64x64", "64x512", "128x64", "128x512"]
        )
        try:
            configs = [tuple(int(v) for v in c.lower().split("x")) for c in (args.configs or default)]
        except ValueError:
            raise SystemExit(
                f"--configs: expected EDGExWIDTH pairs such as 16x64, got {args.configs}"
            ) from None
    from mri_anomaly.ops import backend_name

    meta = {
        "device": args.device if args.device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "backend": backend_name(),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "levels": args.levels,
        "batch": args.batch,
        "repeats": args.repeats,
        "load_before": _load_average(),
        "peak_meaning": (
            "RSS high-water mark (VmHWM, reset before the step) minus the RSS before it"
            if args.device == "cpu"
            else "max_memory_allocated minus memory_allocated before the step"
        ),
    }
    if args.device == "cpu":
        meta["device"] = f"cpu ({os.cpu_count()} cores, {cpu_model()})"
    results = []
    for size, width in configs:
        for depth in args.depths:
            for r in measure(args, size, width, depth):
                results.append(r)
                print(json.dumps(r), flush=True)
    if args.find_max_edge:
        meta["max_edge"] = {}
        for variant in args.variants:
            best = None
            for edge in range(64, 1025, 32):
                r = _child(args, "memory", [variant], edge, 512, 16)
                if "error" in r:
                    break
                best = edge
            meta["max_edge"][variant] = best
    meta["load_after"] = _load_average()
    tag = "cpu" if args.device == "cpu" else "cuda-" + torch.cuda.get_device_name(0).replace(" ", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"glow_step-{tag}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    text = markdown(results, meta)
    (args.out / f"glow_step-{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
