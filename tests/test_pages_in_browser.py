"""The pages eviltwins writes, opened in a real browser (headless Chromium): ``report.html`` of
a sweep, ``scan.html`` of a scan and the documentation site (index and the TrojanNN* methods
page). In each, every image loads, nothing is wider than a 1280-pixel window, and the verdict
or the claims are visible text. Skipped, with one line, where no Chromium is installed
(``.ci/run`` installs Debian's ``chromium`` so that CI runs them)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eviltwins.cli import main
from eviltwins.experiments import run_sweep
from eviltwins.experiments.reporting import write_sweep_report
from eviltwins.io import read_json

REPO = Path(__file__).resolve().parents[1]
WIDTH = 1280
BROWSER = next(
    (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt: chromium)")

# Appended to a copy of the page: once everything has loaded, write what the page shows into a
# <pre> element that --dump-dom prints.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(-60));
  const wide = [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
    .map(e => e.tagName + '.' + e.className).slice(0, 5);
  const out = document.createElement('pre');
  out.id = 'eviltwins-probe';
  out.textContent = JSON.stringify({
    images: imgs.length, broken, wide, innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth, text: document.body.innerText,
  });
  document.body.appendChild(out);
});
</script>"""


def open_in_browser(page: Path) -> dict:
    """What Chromium shows of ``page`` in a 1280-pixel window (see :data:`PROBE`)."""
    probe = page.with_name(f".probe-{page.name}")
    text = page.read_text()
    probe.write_text(
        text.replace("</body>", PROBE + "</body>") if "</body>" in text else text + PROBE
    )
    args = [BROWSER, "--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to sandbox as root
    args += [f"--window-size={WIDTH},900", "--virtual-time-budget=15000", "--dump-dom"]
    out = subprocess.run(
        [*args, probe.as_uri()], capture_output=True, text=True, timeout=180, check=False
    )
    probe.unlink()
    found = re.search(r'<pre id="eviltwins-probe">(.*?)</pre>', out.stdout, re.S)
    assert found, f"the page did not finish loading: {out.stderr[-500:]}"
    return json.loads(html.unescape(found[1]))


def assert_shown_well(seen: dict, min_images: int) -> None:
    assert seen["innerWidth"] == WIDTH
    assert seen["images"] >= min_images and seen["broken"] == []
    assert seen["scrollWidth"] <= WIDTH and seen["wide"] == [], seen["wide"]


def test_the_sweep_report_shows_its_claims_and_figures(tmp_path):
    spec = {
        "name": "browser",
        "datasets": ["digits"],
        "train_limit": 400,
        "test_limit": 200,
        "clean": {"epochs": 2},
        "attacks": [
            {"name": "none"},
            {"name": "trojannn", "label": "TrojanNN", "params": {"epochs": 1, "max_steps": 4}},
        ],
        "sizes": [0.2, 0.3],
        "transparencies": [0.0],
        "detectors": [{"name": "neural-cleanse", "params": {"steps": 4, "n_inputs": 32}}],
    }
    run_sweep(spec, tmp_path / "run", threads=1, quiet=True)
    report = write_sweep_report(tmp_path / "run")
    seen = open_in_browser(tmp_path / "run" / "report" / "report.html")
    assert_shown_well(seen, min_images=len(report.figures))
    assert "The paper's claims, measured" in seen["text"]
    assert report.claims and report.claims[0].claim in seen["text"]
    assert "The model inspectors over these models" in seen["text"]


def test_the_scan_page_shows_its_verdict_and_reversed_triggers(digits_badnet_folder, tmp_path):
    cfg = tmp_path / "scan.yaml"
    cfg.write_text("neural-cleanse: {steps: 20, n_inputs: 64}\nabs: {steps: 20, top_k: 3}\n")
    out = tmp_path / "scan"
    argv = ["scan", "--model", str(digits_badnet_folder), "--config", str(cfg), "--out", str(out)]
    assert main([*argv, "--quiet", "--device", "cpu"]) == 0
    verdict = read_json(out / "scan.json")["verdict"]
    seen = open_in_browser(out / "scan.html")
    assert_shown_well(seen, min_images=1)
    assert verdict in seen["text"]


def test_the_documentation_site_shows_its_pages(tmp_path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    home = open_in_browser(site / "index.html")
    assert_shown_well(home, min_images=0)
    assert "eviltwins" in home["text"] and "Getting started" in home["text"]
    star = open_in_browser(site / "methods" / "trojannn-star" / "index.html")
    assert_shown_well(star, min_images=0)
    assert "TrojanNN*" in star["text"] and "evade" in star["text"]


def test_the_probe_sees_a_broken_image_and_an_overflowing_table(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><html><body><p>verdict here</p><img src='missing.png' alt='x'>"
        "<table style='width:2000px'><tr><td>wide</td></tr></table></body></html>"
    )
    seen = open_in_browser(page)
    assert len(seen["broken"]) == 1 and seen["broken"][0].endswith("missing.png")
    assert seen["scrollWidth"] > WIDTH and seen["wide"]
    with pytest.raises(AssertionError):
        assert_shown_well(seen, min_images=1)
    assert "verdict here" in seen["text"]
