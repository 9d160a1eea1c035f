"""Remake docs/images/review-page.png: the review page on a demo atlas, in headless Chromium.

    threads-search demo --out demo-run
    python docs/images/make_review_page.py --run demo-run

Serves the atlas on 127.0.0.1 (a free port), runs the README's rare-case query and saves the
screenshot. Needs Debian's chromium at /usr/bin/chromium and the dev extra (playwright).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

QUERY = "SYN-S5-0013-01Z-00-DX1"  # the held-out clear_cell slide the demo searches with
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


def main() -> None:
    from playwright.sync_api import sync_playwright
    from service_support import live_server

    from threads_search.service.app import create_app
    from threads_search.service.config import ServiceConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("demo-run"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("review-page.png"))
    args = parser.parse_args()
    app = create_app(ServiceConfig(atlas=args.run / "atlas", reports_dir=args.run / "report"))
    with live_server(app) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1440, "height": 980})
        page.goto(base + "/")
        page.wait_for_selector("#status:text-is('ready')")
        page.fill("#query-id", QUERY)
        page.fill("#k", "10")
        page.click("#search-button")
        page.wait_for_function("() => /hits$/.test(document.querySelector('#status').textContent)")
        page.check("#facets [data-facet-column='cohort'][data-facet-value='heldout']")
        page.wait_for_function("() => document.querySelector('#query-text').textContent.includes('cohort')")
        page.wait_for_function("() => /hits$/.test(document.querySelector('#status').textContent)")
        page.wait_for_timeout(500)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
