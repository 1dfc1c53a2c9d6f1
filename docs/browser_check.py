"""Open every page of a built site in headless Chromium and report what a reader would see broken.

`python docs/browser_check.py [_site] [--screenshots DIR]`. Used by tests/test_docs.py.

The site is served by a stdlib `http.server` on 127.0.0.1 (a thread, random port). For each page:
no SEVERE console message (script errors, 404s, anything fetched from outside, which fails here),
every `<img>` decoded with a natural width > 0, and every `.math` element typeset by MathJax
without a TeX error (`mjx-merror`). `search.html?q=...` must list results (the search works offline).
Chromium is Debian's (`apt-get install -y chromium chromium-driver`), driven by selenium through
the chromedriver it ships; nothing is downloaded (SE_OFFLINE=1).
"""
from __future__ import annotations

import argparse, functools, http.server, os, shutil, sys, tempfile, threading, time
from contextlib import contextmanager
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


def find_browser() -> tuple[str | None, str | None]:
    "(chromium binary, chromedriver) from $CHROMIUM_BIN/$CHROMEDRIVER, Debian's paths, or PATH."
    if "CHROMIUM_BIN" in os.environ:
        browsers = [os.environ["CHROMIUM_BIN"]]
    else:
        browsers = ["/usr/bin/chromium"] + [shutil.which(n) or "" for n in ("chromium", "chromium-browser", "google-chrome")]
    if "CHROMEDRIVER" in os.environ:
        drivers = [os.environ["CHROMEDRIVER"]]
    else:
        drivers = ["/usr/bin/chromedriver", shutil.which("chromedriver") or "",
                   os.path.join(os.environ.get("CHROMEWEBDRIVER", "/nonexistent"), "chromedriver")]
    browser = next((p for p in browsers if p and os.path.exists(p)), None)
    driver = next((p for p in drivers if p and os.path.exists(p)), None)
    return browser, driver


@contextmanager
def serve(root: Path):
    "Serve `root` on 127.0.0.1 (random free port) in a thread; yields the base URL."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@contextmanager
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    os.environ.setdefault("SE_OFFLINE", "true")          # never let Selenium Manager download anything
    browser, driver = find_browser()
    if not browser or not driver:
        raise FileNotFoundError("headless Chromium not found: apt-get install -y chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    profile = tempfile.mkdtemp(prefix="docs-chromium-")
    for f in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    d.set_page_load_timeout(30)
    d.set_script_timeout(30)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


_SETTLE = """
const done = arguments[arguments.length - 1];
const imgs = [...document.images];
imgs.forEach(i => { i.loading = 'eager'; });
const math = (window.MathJax && MathJax.startup && MathJax.startup.promise) ? MathJax.startup.promise : Promise.resolve();
Promise.allSettled([math, ...imgs.map(i => i.decode())]).then(() => done({
  broken_images: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
  math: document.querySelectorAll('.math').length,
  untypeset: [...document.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container')).length,
  tex_errors: [...document.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || e.textContent).slice(0, 5),
  has_mathjax: !!window.MathJax,
}));
"""


def pages_of(site: Path) -> list[str]:
    site = Path(site)
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)


def check_pages(site: Path, pages: list[str] | None = None, screenshots: dict | None = None,
                search: str | None = "generalized") -> tuple[list[str], dict]:
    """Open `pages` (default: all) of the site; returns (problems, per-page stats).
    `screenshots` maps a page to a PNG path to save; `search` a word the search page must find."""
    site = Path(site)
    pages = pages or pages_of(site)
    problems, stats = [], {}
    with serve(site) as base, chromium() as d:
        for page in pages:
            t = time.time()
            d.get(f"{base}/{page}")
            r = d.execute_async_script(_SETTLE)
            logs = [l for l in d.get_log("browser") if l["level"] == "SEVERE"]
            problems += [f"{page}: console error: {l['message']}" for l in logs]
            problems += [f"{page}: image does not load: {s}" for s in r["broken_images"]]
            if r["math"] and not r["has_mathjax"]:
                problems.append(f"{page}: {r['math']} equations but MathJax did not load")
            elif r["untypeset"]:
                problems.append(f"{page}: {r['untypeset']} of {r['math']} equations not typeset")
            problems += [f"{page}: TeX error: {e}" for e in r["tex_errors"]]
            stats[page] = {"seconds": round(time.time() - t, 2), "math": r["math"]}
            if screenshots and page in screenshots:
                shot = Path(screenshots[page])
                shot.parent.mkdir(parents=True, exist_ok=True)
                d.save_screenshot(str(shot))
                # and, where the page has them, its first figure and first display equation
                for what, css in (("figure", "article img"), ("math", "article div.math")):
                    if d.execute_script(f"const e = document.querySelector('{css}'); if (!e) return false;"
                                        "e.scrollIntoView({block: 'center'}); return true;"):
                        time.sleep(0.2)
                        d.save_screenshot(str(shot.with_name(f"{shot.stem}-{what}.png")))
        if search and (site / "search.html").exists():
            d.get(f"{base}/search.html?q={search}")
            hits = 0
            for _ in range(50):                           # the index loads and searches asynchronously
                hits = d.execute_script("return document.querySelectorAll('#search-results li').length")
                if hits:
                    break
                time.sleep(0.1)
            if not hits:
                problems.append(f"search.html?q={search}: no results")
            stats["search"] = {"query": search, "hits": hits}
            problems += [f"search.html: console error: {l['message']}" for l in d.get_log("browser") if l["level"] == "SEVERE"]
    return problems, stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("site", nargs="?", default="_site")
    ap.add_argument("--screenshots", default=None, help="folder for screenshots of the home page")
    a = ap.parse_args(argv)
    shots = {"index.html": Path(a.screenshots) / "docs-home.png"} if a.screenshots else None
    problems, stats = check_pages(Path(a.site), screenshots=shots)
    print("\n".join(problems) or f"{len(stats)} pages open without errors")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
