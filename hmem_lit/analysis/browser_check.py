"""Open a report page in a real headless browser (Debian's chromium through Playwright), check that every figure
loaded and that the page logged no console error, and take a screenshot.

    python -m hmem_lit.analysis.browser_check analysis/generated/quickstart docs/report_screenshot.png

Needs `playwright` (pip; its browsers are not downloaded: the system's /usr/bin/chromium is used) and chromium
(`apt-get install chromium`). The page is served from a local HTTP server on 127.0.0.1, never from the network.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import threading
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def check_report(report_dir: str | Path, screenshot: str | Path | None = None, width: int = 1280) -> dict[str, Any]:
    """-> {"images": n, "broken": [src...], "console_errors": [text...], "title": str}."""
    from playwright.sync_api import sync_playwright

    report_dir = Path(report_dir)
    if not (report_dir / "report.html").is_file():
        raise FileNotFoundError(f"{report_dir}: no report.html (run hmem report first)")
    handler = functools.partial(_QuietHandler, directory=str(report_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{server.server_port}/report.html", wait_until="networkidle")
            imgs = page.eval_on_selector_all(
                "img", "els => els.map(e => ({src: e.getAttribute('src') || '', ok: e.complete && e.naturalWidth > 0}))"
            )
            if screenshot:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=False)
            title = page.title()
            browser.close()
    finally:
        server.shutdown()
    return {
        "images": len(imgs),
        "broken": [i["src"][:80] for i in imgs if not i["ok"]],
        "console_errors": errors,
        "title": title,
    }


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/favicon.ico":  # the browser asks for one; the report has none (not a page error)
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hmem_lit.analysis.browser_check", description=__doc__.splitlines()[0])
    ap.add_argument("report_dir")
    ap.add_argument("screenshot", nargs="?")
    a = ap.parse_args(argv)
    res = check_report(a.report_dir, a.screenshot)
    print(res)
    return 0 if res["images"] and not res["broken"] and not res["console_errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
