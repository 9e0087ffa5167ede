"""The HTML report renders: it parses, every referenced PNG exists and is a PNG, tables carry the numbers."""

from __future__ import annotations

from html.parser import HTMLParser

from mri_anomaly.evaluation.evaluate import evaluate
from test_evaluate_data import make_score_dir

VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _check(path):
    p = _Checker()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    assert not p.errors, p.errors[:5]
    assert not p.stack, f"unclosed tags {p.stack}"
    for src in p.images:
        png = path.parent / src
        assert png.is_file(), src
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    return p


def test_single_run_report(tmp_path):
    d, sections = make_score_dir(tmp_path)
    m = evaluate(d, sections, tmp_path / "out", n_bootstrap=50, n_bootstrap_voxel=10)
    p = _check(tmp_path / "out" / "report.html")
    names = sorted(src.split("/")[-1] for src in p.images)
    assert names == sorted(
        [
            "roc_volume.png",
            "pr_volume.png",
            "roc_slice.png",
            "pr_slice.png",
            "dist_scores.png",
            "profiles_scores.png",
            "overlay_residual.png",
        ]
    )
    text = " ".join(p.text)
    assert f"{m['volume']['ratio']['auroc']:.3f}" in text
    assert f"{m['voxel']['residual']['best_dice']:.3f}" in text
    for heading in ("Volume level", "Thresholds", "Per site", "Slice level", "Voxel level", "Maps on scans"):
        assert heading in text, heading


def test_comparison_report(tmp_path):
    a, sections = make_score_dir(tmp_path, "glow2d", seed=1)
    b, _ = make_score_dir(tmp_path, "deep-sad", seed=2, with_maps=False)
    evaluate([a, b], sections, tmp_path / "cmp", n_bootstrap=20, n_bootstrap_voxel=5)
    p = _check(tmp_path / "cmp" / "report.html")
    text = " ".join(p.text)
    assert "Comparison" in text and "glow2d" in text and "deep-sad" in text
    assert any("dist_deep-sad.png" in s for s in p.images) and any(
        "overlay_glow2d_residual.png" in s for s in p.images
    )


def test_a_map_score_reads_its_map_profile_and_an_aggregate_its_slice_score():
    from mri_anomaly.evaluation.report import _match

    slice_columns = ["r/llr", "r/nll_bpd", "r/llr_slice_q99", "r/nll_slice_q99"]
    assert _match("r/llr_q999", slice_columns, "r/") == "r/llr_slice_q99"
    assert _match("r/nll_q999", slice_columns, "r/") == "r/nll_slice_q99"
    assert _match("r/nll_top200mm3", slice_columns, "r/") == "r/nll_slice_q99"
    profiles = ["r/llr", "r/llr_slice_top200mm3", "r/abs_z_slice_top200mm3"]  # the package's profiles
    assert _match("r/llr_q999", profiles, "r/") == "r/llr_slice_top200mm3"
    assert _match("r/abs_z_top200mm3", profiles, "r/") == "r/abs_z_slice_top200mm3"
    assert _match("r/llr_top5_mean", profiles, "r/") == "r/llr"
    assert _match("r/llr_top5_mean", slice_columns, "r/") == "r/llr"
    assert _match("r/nll_bpd_max", slice_columns, "r/") == "r/nll_bpd"
    assert _match("r/final_scale_q999", slice_columns, "r/") is None
