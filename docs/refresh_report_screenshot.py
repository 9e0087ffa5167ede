"""Refresh ``docs/images/report_screenshot.png`` from a demo's ``report.html``, opened in headless Chromium.

The report is loaded from disk in headless Chromium (Debian package ``chromium``); the script fails (exit
status 1, nothing written) when the page logs a console error or a figure does not load, and otherwise
writes a screenshot of the top of the page.

Usage::

    make demo                                              # the demo folder, demo-out/ by default
    python docs/refresh_report_screenshot.py --demo demo-out   # -> docs/images/report_screenshot.png
    python docs/refresh_report_screenshot.py --report path/to/report.html --out /tmp/shot.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))  # this checkout's package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--demo", default="demo-out", help="demo folder (its report/report.html); default demo-out"
    )
    where.add_argument("--report", default=None, help="a report.html to open instead")
    parser.add_argument(
        "--out", default=str(REPO / "docs" / "images" / "report_screenshot.png"), help="PNG to write"
    )
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (default 1280)")
    parser.add_argument(
        "--height", type=int, default=2000, help="screenshot height in CSS pixels (default 2000)"
    )
    args = parser.parse_args(argv)

    from mri_anomaly.evaluation.browser import open_in_chromium

    report = Path(args.report) if args.report else Path(args.demo) / "report" / "report.html"
    if not report.is_file():
        print(f"error: {report} not found (run `make demo` first, or pass --report)", file=sys.stderr)
        return 1
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    check = open_in_chromium(report, screenshot=tmp, width=args.width, height=args.height)
    loaded = len(check.images) - len(check.broken_images)
    print(
        f"{report}: {check.title!r}, {loaded}/{len(check.images)} figures loaded, "
        f"{len(check.console_errors)} console error(s)"
    )
    if not check.ok:
        tmp.unlink(missing_ok=True)
        for line in check.console_errors:
            print(f"  console: {line}", file=sys.stderr)
        for src in check.broken_images:
            print(f"  figure did not load: {src}", file=sys.stderr)
        return 1
    tmp.replace(out)
    print(f"screenshot -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
