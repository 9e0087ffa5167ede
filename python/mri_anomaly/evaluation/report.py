"""The HTML report: tables of metrics with CIs, thresholds, per-site results and PNG figures.

``report.html`` is self-contained apart from its figures: inline CSS, no scripts, no network; figures are
PNG files in ``figures/`` next to it, referenced by relative paths (so the folder can be zipped or served).
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from mri_anomaly.evaluation import figures as fig
from mri_anomaly.evaluation.controls import BASELINE_METHODS, best_volume_columns
from mri_anomaly.scoring.maps import MAP_SLICE_SUFFIX

__all__ = ["write_report"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
h3{font-size:15px;margin-bottom:4px} .sub{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:12px;margin:8px 0 14px} th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} tr:nth-child(even) td{background:#fafafa}
.ci{color:#777;font-size:11px} .best{font-weight:bold} .err{color:#a33;text-align:left}
figure{display:inline-block;margin:6px 10px 12px 0;vertical-align:top} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555;max-width:560px} .notes li{font-size:13px;margin:3px 0} code{background:#f4f4f4;padding:0 3px}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def _verdict(entry: Mapping[str, Any]) -> str:
    """A learned run's verdict against the baselines (``controls.baseline_comparison``), "no" in bold."""
    verdict = entry.get("verdict") or ("yes" if entry.get("beats_all_baselines") else "no")
    return "<b>no</b>" if verdict == "no" else html.escape(verdict)


def _with_ci(entry: Mapping[str, Any], key: str, digits: int = 3) -> str:
    value = _num(entry.get(key), digits)
    ci = entry.get(f"{key}_ci")
    if ci and len(ci) == 2 and ci[0] is not None and np.isfinite(ci[0]):
        value += f' <span class="ci">[{_num(ci[0], digits)}, {_num(ci[1], digits)}]</span>'
    return value


def _split_key(key: str, several: bool) -> tuple[str, str]:
    if several and "/" in key:
        run, col = key.split("/", 1)
        return run, col
    return "", key


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    head = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _level_table(level: Mapping[str, Mapping[str, Any]], keys: Sequence[str], several: bool) -> str:
    headers = (["run"] if several else []) + ["score", "n (anomalous)"] + [k.replace("_", " ") for k in keys]
    rows = []
    best = {k: max((e.get(k) for e in level.values() if isinstance(e.get(k), (int, float)) and e.get(k) is not None), default=None)
            for k in ("auroc", "ap", "best_dice")}  # fmt: skip
    for key, entry in level.items():
        run, col = _split_key(key, several)
        lead = ([html.escape(run)] if several else []) + [html.escape(col)]
        if "error" in entry:
            rows.append(lead + [f"{entry.get('n', '–')} ({entry.get('n_anomalous', '–')})"]
                        + [f'<span class="err">{html.escape(entry["error"])}</span>'] + [""] * (len(keys) - 1))  # fmt: skip
            continue
        cells = []
        for k in keys:
            cell = _with_ci(entry, k)
            if k in best and best[k] is not None and entry.get(k) == best[k] and len(level) > 1:
                cell = f'<span class="best">{cell}</span>'
            cells.append(cell)
        rows.append(lead + [f"{entry.get('n')} ({entry.get('n_anomalous')})"] + cells)
    return _table(headers, rows, left=2 if several else 1)


# a map's volume score: <map>_q999, <map>_top200mm3 (mri_anomaly.scoring.maps)
_MAP_SCORE = r"_(q\d+|top\d+mm3)$"


def _base(name: str) -> str:
    """``llr_top5_mean``/``llr_mean``/``llr_max`` -> ``llr``; ``nll_bpd`` -> ``nll``; ``nll_slice_mean`` -> ``nll``."""
    name = re.sub(r"_(mean|max|top\d+_mean)$", "", name)
    name = re.sub(r"_slice$", "", name)
    name = re.sub(_MAP_SCORE, "", name)
    return re.sub(r"_bpd$", "", name)


def _match(key: str, candidates: Sequence[str], prefix: str) -> str | None:
    """The slice column / map that volume column ``key`` is made from (same base name), if any: for a map's
    volume score (``<map>_q999``, ``<map>_top200mm3``) the map's slice profile (``<map>_slice_top200mm3``) first,
    for an aggregate of slice scores (``llr_top5_mean``) the slice score itself first."""
    want = _base(key[len(prefix) :])
    found = [c for c in candidates if _base(re.sub(MAP_SLICE_SUFFIX, "", c[len(prefix) :])) == want]
    from_map = re.search(_MAP_SCORE, key) is not None
    found.sort(key=lambda c: (re.search(MAP_SLICE_SUFFIX, c) is not None) != from_map)
    return found[0] if found else None


def _draw(function: Callable[..., Path], args: tuple, kwargs: Mapping[str, Any]) -> Path:
    """One figure (a function of :mod:`mri_anomaly.evaluation.figures`) drawn here or in a worker process."""
    return function(*args, **kwargs)


def _figure(path: Path, out: Path, caption: str) -> str:
    rel = path.relative_to(out).as_posix()
    return f'<figure><img src="{html.escape(rel)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _profiles(ss, section: str, max_subjects: int = 4) -> list:
    sl = ss.slices
    if sl is None or "slice_label" not in sl.columns:
        return []
    if "section" in sl.columns:
        sl = sl[sl["section"] == section]
    if "counted" in sl.columns:
        sl = sl[sl["counted"] == 1]
    cols = list(ss.slice_columns)[:4]
    if not cols or sl.empty:
        return []
    positive = sl.groupby("subject_id")["slice_label"].max()
    subjects = sorted(positive[positive == 1].index.astype(str))[:max_subjects]
    healthy = sl[sl["slice_label"] == 0]
    stats = {}
    for c in cols:
        v = healthy[c].to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        stats[c] = (float(v.mean()), float(v.std()) or 1.0) if v.size else (0.0, 1.0)
    profiles = []
    for subject in subjects:
        part = sl[sl["subject_id"].astype(str) == subject].sort_values("slice")
        values = {c: (part[c].to_numpy(dtype=np.float64) - stats[c][0]) / stats[c][1] for c in cols}
        profiles.append((subject, part["slice"].to_numpy(), values, part["slice_label"].to_numpy()))
    return profiles


def write_report(
    metrics: Mapping[str, Any],
    sets: Sequence[Any],
    curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    thresholds: Mapping[str, float],
    out: str | Path,
    title: str = "mri-anomaly evaluation",
    section: str = "test",
    several: bool = False,
    executor: Executor | None = None,
) -> Path:
    """Draw the figures into ``out/figures`` and write ``out/report.html``; returns the report path.

    Args:
        metrics: the ``metrics.json`` content from :func:`~mri_anomaly.evaluation.evaluate.evaluate` (voxel
            entries may carry ``_cases`` for the overlays). sets: the :class:`~mri_anomaly.evaluation.score_tables.ScoreTables` objects.
        curves: ``{"volume"|"slice": {key: (y, s)}}``. thresholds: ``{key: threshold}``.
        executor: draws the figures in its workers (the same files as without it).
    """
    from mri_anomaly._version import __version__

    out = Path(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    figs: dict[str, list[str]] = {"curves": [], "dist": [], "profiles": [], "overlays": []}

    # (section, figure function, args, kwargs, caption): drawn below, in worker processes when given
    jobs: list[tuple[str, Any, tuple, dict, str]] = []
    for level in ("volume", "slice"):
        chosen = dict(curves.get(level, {}))
        which = ""
        if several and chosen:  # one curve per run: its column with the highest AUROC on this level
            best: dict[str, str] = {}
            for key in chosen:
                run = key.split("/", 1)[0]
                if run not in best or metrics[level][key]["auroc"] > metrics[level][best[run]]["auroc"]:
                    best[run] = key
            chosen = {key: chosen[key] for key in best.values()}
            which = " Each run's column with the highest AUROC here (all columns are in the tables)."
        if chosen:
            noun = "scans" if level == "volume" else "axial slices"
            jobs.append(("curves", fig.roc_figure, (chosen, figdir / f"roc_{level}.png"),
                         {"title": f"ROC, {level} level ({noun})"},
                         f"ROC curves, {level} level; legend: AUROC.{which}"))  # fmt: skip
            jobs.append(("curves", fig.pr_figure, (chosen, figdir / f"pr_{level}.png"),
                         {"title": f"Precision-recall, {level} level"},
                         f"Precision-recall curves, {level} level; dotted: prevalence; legend: AP.{which}"))  # fmt: skip
    for ss in sets:
        prefix = f"{ss.name}/" if several else ""
        cols = {
            c: curves["volume"][prefix + c]
            for c in ss.score_columns
            if prefix + c in curves.get("volume", {})
        }
        if cols:
            thr = {c: thresholds[prefix + c] for c in cols if prefix + c in thresholds}
            jobs.append(("dist", fig.distribution_figure, (cols, figdir / f"dist_{_slug(ss.name)}.png", thr),
                         {"title": f"{ss.name}: volume scores"},
                         f"{ss.name}: volume-level score distributions, healthy vs anomalous ({section}); dashed: threshold calibrated on healthy validation scans."))  # fmt: skip
        prof = _profiles(ss, section)
        if prof:
            jobs.append(("profiles", fig.slice_profile_figure, (prof, figdir / f"profiles_{_slug(ss.name)}.png"),
                         {"title": f"{ss.name}: slice profiles"},
                         f"{ss.name}: per-slice scores of anomalous scans, standardised by the healthy slices' mean and SD; shaded: slices with ground-truth anomaly."))  # fmt: skip
    for key, entry in metrics.get("voxel", {}).items():
        cases = [c for c in entry.get("_cases", []) if c.mask][:3]
        if not cases:
            continue
        jobs.append(("overlays", fig.overlay_montage,
                     ([(c.subject_id, c.image, c.map, c.mask) for c in cases], figdir / f"overlay_{_slug(key)}.png"),
                     {"title": f"{key}"},
                     f"{key}: map (hot, above its 95th percentile in the scan) over the scan; cyan: ground-truth contour."))  # fmt: skip

    drawn = (
        list(executor.map(_draw, [j[1] for j in jobs], [j[2] for j in jobs], [j[3] for j in jobs]))
        if executor is not None
        else [_draw(j[1], j[2], j[3]) for j in jobs]
    )
    for (section_name, _, _, _, caption), p in zip(jobs, drawn):
        figs[section_name].append(_figure(p, out, caption))

    runs = metrics.get("runs", {})
    meta = metrics.get("meta", {})
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<h1>{html.escape(title)}</h1>")
    parts.append(
        f'<div class="sub">mri-anomaly {html.escape(__version__)} · {now} · section <code>{html.escape(section)}</code>'
        f" · datalist <code>{html.escape(str(meta.get('datalist')))}</code> · CIs: {html.escape(_ci_text(metrics))}</div>"
    )
    run_rows = [[html.escape(n), html.escape(str(r.get("method") or "–")), html.escape(", ".join(r.get("score_columns", []))),
                 html.escape(", ".join(r.get("maps", [])) or "–"), str(r.get("n_scans")), str(r.get("n_anomalous")), str(r.get("n_calibration"))]
                for n, r in runs.items()]  # fmt: skip
    parts.append(
        "<h2>Runs</h2>"
        + _table(
            [
                "run",
                "method",
                "score columns",
                "maps",
                f"{html.escape(section)} scans",
                "anomalous",
                "healthy validation scans",
            ],
            run_rows,
        )
    )

    vol, slc, vox = metrics.get("volume", {}), metrics.get("slice", {}), metrics.get("voxel", {})
    against = metrics.get("baselines", {})
    if several or len(vol) > 1:
        rows = []
        for key, entry in vol.items():
            run, col = _split_key(key, several)
            verdict = ""
            if runs.get(run, {}).get("method") in BASELINE_METHODS:
                verdict = "baseline"
            elif run in against and against[run]["best_column"] == col:
                verdict = _verdict(against[run])
            prefix = f"{run}/" if several else ""
            s = slc.get(_match(key, [k for k in slc if k.startswith(prefix)], prefix) or "", {})
            v = vox.get(_match(key, [k for k in vox if k.startswith(prefix)], prefix) or "", {})
            t = metrics.get("thresholds", {}).get(key, {})
            lead = ([html.escape(run)] if several else []) + [html.escape(col)]
            rows.append(lead + [_with_ci(entry, "auroc"), _with_ci(entry, "ap"), _with_ci(entry, "sens_at_95spec"),
                                _with_ci(s, "auroc") if "auroc" in s else "–", _with_ci(v, "ap") if "ap" in v else "–",
                                _num(t.get("test_sensitivity")), _num(t.get("test_specificity")), verdict])  # fmt: skip
        parts.append("<h2>Comparison</h2><p class=sub>Every volume score column; slice AUROC and voxel AP of the slice score and map "
                     "the column is made from. Sensitivity and specificity at the threshold calibrated on healthy validation scans "
                     "are the honest operating point; sensitivity at 95 % specificity is read off this section's ROC curve. "
                     "<i>Beats both baselines</i>: on each learned run's best column (highest volume AUROC), <i>yes</i> when the paired "
                     "95 % CI of its AUROC difference to the best column of both the <code>intensity</code> and the <code>normative</code> "
                     "baseline lies above 0, <i>ahead, CI includes 0</i> when only the point estimates are higher (details below).</p>"
                     + _table((["run"] if several else []) + ["score", "volume AUROC", "volume AP", "sens @ 95% spec", "slice AUROC",
                                                             "voxel AP", "sens @ threshold", "spec @ threshold",
                                                             "beats both baselines"],
                              rows, left=2 if several else 1))  # fmt: skip
    if against:
        rows = []
        for run, entry in against.items():
            cells = [html.escape(run), html.escape(entry["best_column"]), _num(entry["auroc"])]
            for base in sorted({b for e in against.values() for b in e["vs"]}):
                v = entry["vs"].get(base)
                if v is None:
                    cells.append("–")
                    continue
                ci = v["difference_ci"]
                cells.append(
                    f"{html.escape(v['column'])} {_num(v['auroc'])}: {v['difference']:+.3f} "
                    f'<span class="ci">[{_num(ci[0])}, {_num(ci[1])}]</span>'
                )
            cells.append(_verdict(entry))
            rows.append(cells)
        bases = sorted({b for e in against.values() for b in e["vs"]})
        parts.append(
            "<h2>Against the baselines</h2><p class=sub>Each learned run's best volume column against each baseline's "
            "best column on the same scans: AUROC difference (learned − baseline) with a paired, label-stratified "
            "bootstrap 95 % CI. A CI that contains 0 means the data cannot tell them apart.</p>"
            + _table(
                ["run", "best column", "volume AUROC"]
                + [f"vs {html.escape(b)}" for b in bases]
                + ["beats all"],
                rows,
                left=2,
            )
        )
    strata = metrics.get("strata", {})
    if strata:
        names = sorted(
            {k for e in strata.values() for k in e},
            key=lambda k: (k.split(":")[0] != "kind", _STRATUM_ORDER.get(k, 9), k),
        )
        best_keys = [
            f"{run}/{column}" if several else column
            for run, (column, _) in best_volume_columns(vol, several).items()
        ]
        rows = []
        for key in best_keys:
            if key not in strata:
                continue
            run, col = _split_key(key, several)
            cells = ([html.escape(run)] if several else []) + [html.escape(col)]
            for n in names:
                e = strata[key].get(n)
                cells.append(_with_ci(e, "auroc") if e and "auroc" in e else "–")
            rows.append(cells)
        counts = {n: next((e[n]["n_anomalous"] for e in strata.values() if n in e), 0) for n in names}
        headers = (
            (["run"] if several else []) + ["score"] + [f"{html.escape(n)} ({counts[n]})" for n in names]
        )
        parts.append(
            "<h2>Per lesion kind and size</h2><p class=sub>Volume AUROC of each run's best column when only the "
            "anomalous scans of one lesion kind, one lesion-volume stratum (small &lt; 1 cm³, medium 1–10 cm³, large "
            "&gt; 10 cm³) or one variant of a kind (<code>focal_opposite</code>: darker than the tissue where the "
            "contrast's lesions are brighter) are ranked against all healthy scans; anomalous scans in brackets. "
            "Every column's numbers are in "
            "<code>metrics.json</code> (<code>strata</code>).</p>"
            + _table(headers, rows, left=2 if several else 1)
        )
    bf = metrics.get("brain_fraction", {})
    if bf:
        rows = []
        for run, entry in bf.items():
            for col, rho in entry.get("rho", {}).items():
                flag = "" if rho is None or not np.isfinite(rho) or abs(rho) <= 0.2 else " <b>(&gt; 0.2)</b>"
                ci = entry.get("rho_ci", {}).get(col)
                ci_text = f' <span class="ci">[{_num(ci[0])}, {_num(ci[1])}]</span>' if ci else ""
                rows.append(
                    [
                        html.escape(run),
                        html.escape(col),
                        _num(rho) + ci_text + flag,
                        str(entry.get("n_slices")),
                    ]
                )
        control = next((e for k, e in slc.items() if e.get("control")), None)
        extra = ""
        if control is not None and "auroc" in control:
            extra = (
                f" As a slice score of its own, the brain fraction reaches slice AUROC {_with_ci(control, 'auroc')} "
                "(the control row of the slice table)."
            )
        parts.append(
            "<h2>Brain-fraction control</h2><p class=sub>Spearman ρ between each slice score column and the slice's "
            "brain fraction, on the counted slices of healthy scans: a score of anatomy should not track slice size "
            f"(|ρ| ≤ 0.2 is the project's bound; the CI resamples whole healthy scans).{extra}</p>"
            + _table(["run", "slice score", "ρ with brain fraction", "healthy slices"], rows, left=2)
        )
    if figs["curves"]:
        parts.append("<h2>ROC and precision-recall curves</h2>" + "".join(figs["curves"]))
    keys = ["auroc", "ap", "fpr_at_95tpr", "sens_at_90spec", "sens_at_95spec", "sens_at_99spec"]
    if vol:
        parts.append("<h2>Volume level</h2><p class=sub>One score per scan. Sensitivity at a specificity and FPR at 95 % TPR are read "
                     "off the ROC curve of this section (an oracle operating point); the calibrated thresholds below are the honest one.</p>"
                     + _level_table(vol, keys, several))  # fmt: skip
    thr = metrics.get("thresholds", {})
    if thr:
        rows = []
        for key, t in thr.items():
            run, col = _split_key(key, several)
            rows.append(([html.escape(run)] if several else []) + [html.escape(col), _num(t.get("threshold"), 4), str(t.get("n_calibration")),
                        _num(t.get("calibration_specificity")), _with_ci(t, "test_sensitivity"), _with_ci(t, "test_specificity")])  # fmt: skip
        target = meta.get("specificity_target", 0.95)
        parts.append(f"<h2>Thresholds</h2><p class=sub>Calibrated on the healthy <code>{html.escape(str(meta.get('calibration_section')))}</code> "
                     f"scans at {target:.0%} specificity (flag when score &gt; threshold), then applied to <code>{html.escape(section)}</code>.</p>"
                     + _table((["run"] if several else []) + ["score", "threshold", "healthy scans", "specificity (calibration)",
                                                             f"sensitivity ({html.escape(section)})", f"specificity ({html.escape(section)})"],
                              rows, left=2 if several else 1))  # fmt: skip
    if metrics.get("per_site"):
        parts.append("<h2>Per site</h2>")
        for site, entries in metrics["per_site"].items():
            parts.append(
                f"<h3>site {html.escape(site)}</h3>"
                + _level_table(
                    entries,
                    ["auroc", "ap", "sens_at_95spec", "specificity_at_threshold", "sensitivity_at_threshold"],
                    several,
                )
            )
    if slc:
        parts.append("<h2>Slice level</h2><p class=sub>One score per axial slice (the slices with enough brain that the scorer counts); a slice is anomalous when the ground-truth mask has voxels in it. "
                     "CIs resample whole scans (slices of one scan are not independent).</p>" + _level_table(slc, keys, several))  # fmt: skip
    if vox:
        parts.append("<h2>Voxel level</h2><p class=sub>Voxels inside the brain, pooled over scans (MOOD style), at most "
                     f"{meta.get('max_voxels_per_scan')} per scan (deterministic uniform subsample). Best Dice is an oracle upper bound: "
                     "its threshold is chosen on these same voxels.</p>" + _level_table(vox, ["auroc", "ap", "best_dice", "best_dice_threshold"], several))  # fmt: skip
    if figs["dist"]:
        parts.append("<h2>Score distributions</h2>" + "".join(figs["dist"]))
    if figs["profiles"]:
        parts.append("<h2>Slice profiles</h2>" + "".join(figs["profiles"]))
    if figs["overlays"]:
        parts.append("<h2>Maps on scans</h2>" + "".join(figs["overlays"]))
    notes = list(metrics.get("notes", [])) + [
        "Every score is oriented higher = more anomalous; non-finite scores count as most anomalous, never dropped.",
        "Intervals are percentile bootstrap intervals; with few anomalous scans they are wide, read them before the point estimates.",
        "Volume-level AUROC can be inflated when healthy and anomalous scans come from different sites or scanners; see the per-site table where sites are given.",
    ]
    parts.append(
        '<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
    )
    doc = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n'
    doc += "\n".join(parts) + "\n</body></html>\n"
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path


_STRATUM_ORDER = {"size:small": 0, "size:medium": 1, "size:large": 2}


def _ci_text(metrics: Mapping[str, Any]) -> str:
    meta = metrics.get("meta", {})
    n = meta.get("n_bootstrap", 0)
    if not n:
        return "none (n_bootstrap = 0)"
    return (
        f"95 % percentile bootstrap, {n} resamples (scans: stratified; slices and voxels: resampling scans)"
    )
