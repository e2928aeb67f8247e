"""The README's picture of `treeclip serve`: a trained demo model classifying demo photos.

Starts `treeclip serve MODEL --taxa DATA` on a free port, drops one held-out photo of each
of `--species` seen species (their first evaluation photo) on the page in headless
Chromium (Debian's /usr/bin/chromium through Playwright), checks that the page names
each photo's own species, and saves the screenshot. A species the model gets wrong is
reported and the picture is not written, so the picture never shows a wrong answer as
a right one.

    .venv/bin/treeclip demo --quick --out runs/quick      # data (a demo run's data/)
    .venv/bin/treeclip train runs/quick/data --out runs/shot --model demo-vit-32 --steps 600 \\
        --batch-size 128 --lr 3e-3 --warmup 60 --text-type mixed --compact-vocab --cache-images
    .venv/bin/python tools/serve_screenshot.py runs/shot/model runs/quick/data \\
        --species Ardea_alba,Amanita_muscaria,Quercus_robur --out docs/serve-screenshot.png
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

CHROMIUM = os.environ.get("TREECLIP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


def start_server(model: str, data: str) -> tuple[subprocess.Popen, str]:
    """`treeclip serve` on a free loopback port; its process and URL."""
    proc = subprocess.Popen([sys.executable, "-m", "treeclip", "serve", model, "--taxa", data, "--port", "0",
                             "--log-level", "warning"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            sys.exit("treeclip serve exited early")
        if "serving" in line:
            url = line.split(" at ", 1)[1].split()[0].rstrip("/").replace("localhost", "127.0.0.1")
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, url
    sys.exit("treeclip serve did not start in 5 minutes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data", help="the synthetic dataset the model was trained on (its taxa and tasks/)")
    ap.add_argument("--species", required=True, help="comma list of seen species folders, e.g. Ardea_alba")
    ap.add_argument("--out", default="docs/serve-screenshot.png")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    images = Path(args.data) / "tasks" / "synth-seen" / "images"
    photos = [sorted((images / name).glob("*.jpg"))[0] for name in args.species.split(",")]
    proc, url = start_server(args.model, args.data)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('taxa')")
            page.set_input_files("#files", [str(f) for f in photos])
            page.wait_for_function(f"document.querySelectorAll('.card .answer').length === {len(photos)}",
                                   timeout=120_000)
            answers = [c.inner_text().strip() for c in page.query_selector_all(".card .answer")]
            wrong = [(f.parent.name, a) for f, a in zip(photos, answers) if a.replace(" ", "_") != f.parent.name]
            if wrong:
                sys.exit(f"the model names {wrong} (photo's species, answer): no picture written")
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(20)
    print(f"wrote {args.out}: {', '.join(answers)}")


if __name__ == "__main__":
    main()
