"""Is the demo's 2D Glow likelihood-ratio model trained long enough? Held-out bits/dim and detection by steps.

Trains the demo's ``glow2d-ratio`` run (``configs/glow2d-slices.yaml`` with the demo's overrides,
``mri_anomaly.pipeline.DEMO_RUNS``) with ``N`` steps in each of its two phases (general, in-distribution) on a
finished demo's cohort, for each ``N`` of ``--steps``, and reports:

* bits/dim of the in-distribution model on the slices (brain fraction >= 0.1) of 80 training scans and of the 80
  healthy validation scans (held out): while held-out bits/dim still fall, the model is under-trained;
* volume AUROC on the demo's test scans of the run's ``llr``/``nll`` columns (``score_datalist``), and the healthy
  test scans' median and 90th percentile of ``--column`` (default ``llr_top200mm3``, the demo's best column; its
  healthy tail is where a training seed loses);
* training wall time;
* ``--column`` against the demo's ``intensity`` and ``normative`` runs' best volume column on the same test
  scans, per seed and pooled over seeds (``detection.compare_over_seeds``): would the setting beat the baselines?
* with ``--real DATA``, the slice AUROC inside each real FLAIR scan of ``DATA`` (MS patient07, BRATS 1-3) of
  ``nll`` and ``llr`` maps' slice profiles: does longer training carry over to real MRI, or only lift the demo?

for each training seed of ``--seeds`` (the config's ``seed``): is the spread over seeds a matter of training length?
A setting of ``--steps`` is ``N`` (steps per phase), ``G+I`` (``G`` steps of the general phase, ``I`` of the
in-distribution phase: which model lacks training?) or either with ``xB`` (batch size ``B``, the config's 32
otherwise: ``200x16`` sees as many slices as 100 steps of 32: do the updates or the slices seen matter?), and
``@LR`` sets the in-distribution phase's learning rate (the demo's 5e-4 otherwise: ``100@1e-3``).

Runs already trained under ``--out`` are reused (resumable). Usage::

    python benchmarks/glow2d_steps.py --demo demo-out [--steps 100 200 400 200+100 200x16 100@1e-3] [--seeds 0 1 2]
        [--real ../shared/data] [--out /tmp/mri-anomaly-glow2d-steps] [--name glow2d_steps] [--reading FILE]

Writes ``docs/benchmarks/<name>.md`` and ``.json`` (default ``glow2d_steps``), with ``--reading``'s text under
"Reading".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    DOCS_DIR,
    markdown_table,
    run_meta,
    train_steps_run,
    volume_aurocs_on_test,
    write_steps_doc,
)
from mri_anomaly.training.methods.base import AnomalyMethod  # noqa: E402

COLUMNS = ("nll_top200mm3", "llr_top200mm3", "llr_q999", "nll_q999", "llr_top5_mean", "nll_bpd_top5_mean")
# --column's default, the demo's best 2D Glow column on the partial-volume test set (detection.md; nll_top200mm3 on
# the full-contrast one): the healthy scans' median and 90th percentile of it, and it against the baselines
TAIL = "llr_top200mm3"
BASELINES = ("intensity", "normative")
# slice columns read on the real cases: nll's is the 2D Glow's slice column the demo chooses (real_data.md)
REAL_COLUMNS = tuple(f"{m}_slice_{AnomalyMethod.slice_statistic}" for m in ("nll", "llr"))


def slices_of(items: list[dict], config: dict) -> torch.Tensor:
    """(S, 1, H, W): the axial slices of the preprocessed ``items`` that the 2D run trains and scores on."""
    from mri_anomaly.data import SliceDataset, VolumeDataset

    ds = SliceDataset(VolumeDataset(items, config["preprocessing"]), config["slices"]["min_brain_fraction"])
    return torch.stack([torch.as_tensor(ds[i]["image"]) for i in range(len(ds))])


def measured_slices(datalist: dict, config: dict, cache: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"training": slices of 80 training scans, "validation": of the healthy validation scans}``, made once into
    ``cache`` (the steps benchmarks measure every run's fit on the same slices)."""
    for section, items in (("training", datalist["training"][:80]), ("validation", datalist["validation"])):
        if section not in cache:
            cache[section] = slices_of(items, config)
    return cache


def bits_per_dim_of(method, slices: torch.Tensor, batch: int = 256) -> float:
    from mri_anomaly.flows import dequantize
    from mri_anomaly.scoring.flow_scores import bits_per_dim

    glow, out = method.in_distribution, []
    with torch.no_grad():
        for i in range(0, len(slices), batch):
            xd = dequantize(slices[i : i + batch], False, method.n_bins)
            out.append(bits_per_dim(glow(xd).log_prob, glow.num_dims(xd.shape[2:]), method.n_bins))
    return float(torch.cat(out).mean())


def healthy_tail(score_dir: Path, datalist: Path, column: str) -> dict[str, float]:
    """The healthy test scans' median and 90th percentile of ``column`` in ``score_dir``'s scores."""
    from mri_anomaly.data import load_datalist

    labels = {it["subject_id"]: int(it["label"]) for it in load_datalist(datalist)["test"]}
    scores = pd.read_csv(score_dir / "scores.csv", dtype={"subject_id": str})
    healthy = scores.loc[scores["subject_id"].map(labels) == 0, column].to_numpy(dtype=np.float64)
    return {"median": float(np.median(healthy)), "q90": float(np.quantile(healthy, 0.9))}


# the demo's in-distribution learning rate (mri_anomaly.pipeline._GLOW2D_RATIO; main checks it): the settings'
# names and the runs kept under --out are relative to it
IN_LR = 5.0e-4


@dataclass(frozen=True, order=True)
class Setting:
    """How the 2D Glow ratio model is trained: steps of the general and in-distribution phases, batch size and the
    in-distribution phase's learning rate."""

    general: int
    in_steps: int
    batch: int
    in_lr: float = IN_LR

    @classmethod
    def parse(cls, text: str, default_batch: int) -> Setting:
        """``"200"``: 200 steps per phase; ``"200+100"``: 200 general, 100 in-distribution; ``"200x16"``: batch 16;
        ``"100@1e-3"``: in-distribution learning rate 1e-3 (combinable: ``"200+100x16@1e-3"``)."""
        match = re.fullmatch(r"(\d+)(?:\+(\d+))?(?:x(\d+))?(?:@([0-9.eE+-]+))?", text)
        if match is None:
            raise SystemExit(f"--steps: {text!r} is not N[+I][xB][@LR] (e.g. 200, 200+100, 200x16, 100@1e-3)")
        general, in_steps, batch, in_lr = match.groups()
        return cls(int(general), int(in_steps or general), int(batch or default_batch), float(in_lr or IN_LR))

    def name(self, default_batch: int) -> str:
        return (
            (str(self.general) if self.in_steps == self.general else f"{self.general}+{self.in_steps}")
            + ("" if self.batch == default_batch else f"x{self.batch}")
            + ("" if self.in_lr == IN_LR else f"@{self.in_lr:g}")
        )

    def plain(self, default_batch: int) -> bool:
        """Equal phases with the demo's batch size and learning rates: the training-length series."""
        return self.general == self.in_steps and self.batch == default_batch and self.in_lr == IN_LR


def baseline_columns(demo: Path, labels: dict[str, int]) -> dict[str, tuple[str, pd.DataFrame]]:
    """``{baseline: (column, DataFrame[subject_id, baseline])}``: the demo's ``intensity`` and ``normative`` runs'
    best volume column on the test scans (the highest AUROC: the detection benchmark's choice)."""
    from mri_anomaly.evaluation.metrics import auroc
    from mri_anomaly.evaluation.score_tables import load_score_tables

    out = {}
    for name in BASELINES:
        tables = load_score_tables(demo / "scores" / name, name)
        scores = tables.volumes[tables.volumes["subject_id"].astype(str).isin(labels)]
        scores = scores.assign(subject_id=scores["subject_id"].astype(str))
        y = scores["subject_id"].map(labels).to_numpy(dtype=int)
        best = max(tables.score_columns, key=lambda c: auroc(y, scores[c].to_numpy(dtype=np.float64)))
        out[name] = (best, scores[["subject_id", best]].rename(columns={best: "baseline"}))
    return out


def against_baselines(
    score_dirs: dict[str, dict[int, Path]],
    labels: dict[str, int],
    baselines: dict,
    n_resamples: int = 1000,
    column: str = TAIL,
) -> dict[str, dict[str, dict]]:
    """``{setting: {baseline: compare_over_seeds(...)}}``: ``column`` of each setting's runs against each baseline's
    best column on the same test scans, per seed and pooled over seeds (the detection benchmark's rule)."""
    from detection import compare_over_seeds

    out: dict[str, dict[str, dict]] = {}
    for name, by_seed in score_dirs.items():
        tables = {}
        for seed, score_dir in by_seed.items():
            scores = pd.read_csv(score_dir / "scores.csv", dtype={"subject_id": str})
            scores = scores[scores["subject_id"].isin(labels)][["subject_id", column]]
            tables[seed] = scores.assign(label=scores["subject_id"].map(labels).astype(int))
        out[name] = {}
        for baseline, (baseline_column, reference) in baselines.items():
            paired = {seed: t.merge(reference, on="subject_id") for seed, t in tables.items()}
            out[name][baseline] = {
                "baseline_column": baseline_column,
                **compare_over_seeds(paired, column, "baseline", n_resamples=n_resamples),
            }
    return out


def baselines_table(comparisons: dict[str, dict[str, dict]], column: str = TAIL) -> str:
    rows = []
    for name, by_baseline in comparisons.items():
        for baseline, c in by_baseline.items():
            ci = c["pooled"]["difference_ci"]
            rows.append([
                name, f"`{baseline}` (`{c['baseline_column']}`, {c['mean']['auroc_b']:.3f})",
                " / ".join(f"{p['difference']:+.3f}" for p in c["per_seed"]),
                f"{c['mean']['difference']:+.3f} ± {c['sd']['difference']:.3f}",
                f"{c['pooled']['difference']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "n/a",
                c["verdict"],
            ])  # fmt: skip
    header = ["setting", "baseline (best column, AUROC)", f"`{column}` − baseline per seed", "mean ± SD",
              "pooled [95 % CI]", "beats it over seeds"]  # fmt: skip
    return markdown_table(header, rows)


def real_flair_cases(data: Path) -> list[dict]:
    """The real FLAIR cases with a lesion mask (``real_data.real_cases``: MS patient07, BRATS 1-3)."""
    from real_data import real_cases

    return [c for c in real_cases(data) if c.get("mask") and "FLAIR" in c["site"]]


def real_slice_aurocs(run_dir: Path, cases: list[dict], work: Path) -> dict[str, dict[str, float | None]]:
    """``{case: {column: slice AUROC inside the scan}}`` of ``REAL_COLUMNS`` with the run in ``run_dir``
    (``real_data.score_run``), kept in ``work/result.json`` and reused."""
    from real_data import score_run

    cached = work / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    work.mkdir(parents=True, exist_ok=True)
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps({"test": cases}))
    scored = score_run(run_dir, cases, datalist, work / "scores", max_voxels=100_000)
    result = {c["subject_id"]: {col: scored["slice"][c["subject_id"]][col]["auroc"] for col in REAL_COLUMNS}
              for c in cases}  # fmt: skip
    cached.write_text(json.dumps(result))
    return result


def real_table(real: dict[str, dict[int, dict]], column: str) -> str:
    """Per setting and case, ``column``'s slice AUROC: mean (min–max) over seeds."""
    cases = list(next(iter(next(iter(real.values())).values())))
    rows = []
    for name, by_seed in real.items():
        cells = []
        for case in cases:
            values = [v[case][column] for v in by_seed.values() if v[case][column] is not None]
            cells.append(f"{np.mean(values):.2f} ({min(values):.2f}–{max(values):.2f})" if values else "n/a")
        rows.append([name, *cells])
    return markdown_table(["setting", *cases], rows)


def reading(data: list[dict], default_batch: int, column: str = TAIL) -> str:
    """One sentence from the numbers: do held-out bits/dim still fall with the step count (equal phases, the
    demo's batch size and learning rates), where do the other settings land, and how do the volume AUROCs move
    (mean ± SD over the seeds) from setting to setting?"""

    def key(d: dict) -> Setting:
        return Setting(d["general_steps"], d["in_steps"], d["batch_size"], d.get("in_lr", IN_LR))

    settings = sorted({key(d) for d in data}, key=lambda s: (not s.plain(default_batch), s))

    def over_seeds(setting: Setting, get) -> tuple[float, float]:
        values = np.array([get(d) for d in data if key(d) == setting], dtype=np.float64)
        return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0

    def held_out(setting: Setting) -> float:
        return over_seeds(setting, lambda d: d["bpd"]["validation"])[0]

    plain = [s for s in settings if s.plain(default_batch)]
    held = [held_out(s) for s in plain]
    others = "".join(f"; {s.name(default_batch)} {held_out(s):.2f}" for s in settings if s not in plain)

    def moved(c: str) -> str:
        return " → ".join("{:.3f} ± {:.3f}".format(*over_seeds(s, lambda d: d["auroc"][c])) for s in settings)

    other = "nll_top200mm3" if column == "llr_top200mm3" else "llr_top200mm3"

    if len(plain) > 1:
        falling = all(b < a for a, b in zip(held, held[1:]))
        trend = (
            f"Held-out bits/dim (mean over seeds) {held[0]:.2f} at {plain[0].general} steps per phase, {held[-1]:.2f} "
            f"at {plain[-1].general}: "
            + ("still falling at every step count (under-trained at the smaller ones)" if falling else "not falling at every step count")
        )  # fmt: skip
    elif plain:  # one step count at the demo's batch: no trend to state
        trend = f"Held-out bits/dim (mean over seeds) {held[0]:.2f} at {plain[0].general} steps per phase"
    else:
        trend = "Held-out bits/dim (mean over seeds)"
        others = others.removeprefix(";")
    return (
        f"{trend}"
        f"{others}; volume AUROC (mean ± SD over seeds; settings "
        f"{' → '.join(s.name(default_batch) for s in settings)}) of `{column}` {moved(column)}, "
        f"of `{other}` {moved(other)}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--demo", required=True, help="a finished `mri-anomaly demo --out` folder (its cohort)"
    )
    parser.add_argument(
        "--steps",
        nargs="+",
        default=["100", "200", "400"],
        help="N[+I][xB][@LR]: steps per phase N (or N general + I in-distribution), batch size B, in-distribution learning rate LR",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds (the config's seed)"
    )
    parser.add_argument(
        "--real",
        default=None,
        metavar="DATA",
        help="also score the real FLAIR cases of DATA (../shared/data) with every run: slice AUROC inside each scan",
    )
    parser.add_argument(
        "--column",
        default=TAIL,
        choices=COLUMNS,
        help="the volume column whose healthy tail is shown and which is compared with the baselines",
    )
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "mri-anomaly-glow2d-steps"))
    parser.add_argument("--docs", default=str(DOCS_DIR))
    parser.add_argument(
        "--name",
        default="glow2d_steps",
        help="the document written: DOCS/NAME.md and .json (default glow2d_steps)",
    )
    parser.add_argument("--reading", type=Path, help="a markdown file with the reading of the numbers")
    args = parser.parse_args(argv)

    from mri_anomaly.data import load_datalist
    from mri_anomaly.pipeline import DEMO_RUNS, configs_dir
    from mri_anomaly.runs import load_run
    from mri_anomaly.training import load_config

    demo, out = Path(args.demo), Path(args.out)
    datalist_path = demo / "data" / "datalist.json"
    datalist = load_datalist(datalist_path)
    run = next(r for r in DEMO_RUNS if r.name == "glow2d-ratio")
    load_start, t0 = os.getloadavg()[0], time.time()
    rows, data, cache, score_dirs, real = [], [], {}, {}, {}
    cases = real_flair_cases(Path(args.real)) if args.real else []
    demo_train = load_config(configs_dir() / run.config, list(run.overrides))["train"]
    default_batch = int(demo_train["batch_size"])
    if float(demo_train["phases"]["in"]["lr"]) != IN_LR:
        raise SystemExit(
            f"the demo's in-distribution learning rate is {demo_train['phases']['in']['lr']}: update IN_LR"
        )
    for text in args.steps:
        setting = Setting.parse(text, default_batch)
        name = setting.name(default_batch)
        for seed in args.seeds:
            run_dir = out / "runs" / f"steps{name}-seed{seed}"
            phases = (
                f"train.phases={{general: {{steps: {setting.general}, lr: 1.0e-3, weight_decay: 0.0}}, "
                f"in: {{steps: {setting.in_steps}, lr: {setting.in_lr}, weight_decay: 0.0}}}}"
            )
            overrides = [o for o in run.overrides if not o.startswith("train.phases=")] + [
                phases,
                f"seed={seed}",
                f"train.batch_size={setting.batch}",
            ]
            config = load_config(configs_dir() / run.config, overrides)
            # a run is kept under its steps per phase where the phases and learning rates are the demo's (batch
            # sizes have folders of their own), else under the setting's name
            same_phases = (setting.general, setting.in_lr) == (setting.in_steps, IN_LR)
            train_seconds = train_steps_run(
                config, datalist_path, run_dir, setting.general if same_phases else name
            )
            method, config, _ = load_run(run_dir)
            bpd = {s: bits_per_dim_of(method, x) for s, x in measured_slices(datalist, config, cache).items()}
            score_dir = out / "scores" / f"steps{name}-seed{seed}"
            aurocs = volume_aurocs_on_test(run_dir, datalist_path, score_dir, COLUMNS)
            score_dirs.setdefault(name, {})[seed] = score_dir
            tail = healthy_tail(score_dir, datalist_path, args.column)
            if cases:
                real.setdefault(name, {})[seed] = real_slice_aurocs(
                    run_dir, cases, out / "real" / f"steps{name}-seed{seed}"
                )
            rows.append([name, seed, f"{bpd['training']:.3f}", f"{bpd['validation']:.3f}",
                         *(f"{aurocs[c]:.3f}" for c in COLUMNS), f"{tail['median']:.3g} ({tail['q90']:.3g})",
                         f"{train_seconds:.0f}"])  # fmt: skip
            data.append({"general_steps": setting.general, "in_steps": setting.in_steps, "batch_size": setting.batch, "in_lr": setting.in_lr, "seed": seed, "bpd": bpd, "auroc": aurocs, "healthy_tail": tail,
                         "train_seconds": train_seconds, "slices": {s: len(cache[s]) for s in cache}})  # fmt: skip
            print(f"[glow2d-steps] {name} seed {seed}: {rows[-1]}", file=sys.stderr, flush=True)
    header = ["steps per phase (general+in, xbatch)", "seed", "bits/dim, 80 training scans", "bits/dim, 80 held-out healthy",
              *(f"AUROC `{c}`" for c in COLUMNS), f"healthy `{args.column}` median (90th pct)", "training s"]  # fmt: skip
    labels = {it["subject_id"]: int(it["label"]) for it in datalist["test"]}
    comparisons = against_baselines(score_dirs, labels, baseline_columns(demo, labels), column=args.column)
    meta = run_meta("glow2d_steps.py", argv, load_start, t0, demo=str(demo))
    hand_reading = args.reading.read_text().strip() if args.reading else ""
    md = write_steps_doc(
        Path(args.docs),
        args.name,
        "2D Glow likelihood ratio: training length",
        meta,
        f"The demo trains 100 steps per phase of batch {default_batch} (seed 0), here on this process's threads (the demo's lanes train on "
        "one thread each, which rounds differently). Bits/dim of the in-distribution model on axial slices with ≥ 10 % brain; "
        "AUROC of volume columns on the test scans (CIs: the comparison with the baselines below).",
        markdown_table(header, rows)
        + f"\n\nAgainst the baselines: `{args.column}` of each setting's runs against the demo's `intensity` and `normative` "
        "runs' best volume column on the same test scans (paired bootstrap, 1000 resamples; pooled: the seed-averaged "
        "difference; beats it when ahead at every seed with the pooled CI above 0, the detection benchmark's rule).\n\n"
        + baselines_table(comparisons, args.column)
        + "".join(
            f"\n\nReal FLAIR cases (`--real`; models trained on the synthetic demo, never on these): slice AUROC of "
            f"`{column}` inside each scan, mean (min–max) over seeds.\n\n" + real_table(real, column)
            for column in (REAL_COLUMNS if real else ())
        ),
        reading(data, default_batch, args.column)
        + (f"\n\n## Reading\n\n{hand_reading}" if hand_reading else ""),
        {"runs": data, "against_baselines": comparisons, "real_slice_auroc": real}
        | ({"reading": hand_reading} if hand_reading else {}),
    )
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
