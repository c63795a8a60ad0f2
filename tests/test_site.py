"""The rendered course (``make site``) checked twice: statically after the build, and in a real browser.

The browser part drives headless Chromium (Debian's ``chromium``) over the Chrome DevTools Protocol
(websocket-client, installed with jupyter_server): the site is served from a local HTTP server, every
page reachable from the landing page is loaded, and for each page we check that it rendered (HTTP 200,
a title, text, no JavaScript error), that every image decoded (natural width > 0), that every internal
link and #anchor resolves, and that nothing was fetched from the network. The landing page's
screenshot is written where COURSE_SCREENSHOT_TO says (`make course` refreshes `img/site_landing.png` for the README).

Without Chromium the browser tests are SKIPPED with a warning (install it: ``apt-get install -y
chromium``); under CI (``CI=true``, as in ``.ci/run``) a missing Chromium is a failure.
"""
from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import nbformat
import pytest

from tools import site as course_site
from utils.paths import IMG_DIR, ROOT

VIEWPORT = (1280, 1000)          # the landing page screenshot's size in CSS pixels
PAGE_TIMEOUT = 30                # seconds for one page to load


# ----------------------------------------------------------------------------------------------
# The site, built once from the committed notebooks
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return course_site.build(tmp_path_factory.mktemp("site") / "_site")


def test_build_reports_no_problem(built):
    assert built.problems == [], "\n".join(built.problems)


def test_every_notebook_has_a_page_and_a_card(built):
    index = (built.out / "index.html").read_text()
    notebooks = course_site.find_notebooks()
    assert [c.path for c in built.chapters] == notebooks and notebooks
    for c in built.chapters:
        assert (built.out / c.page).is_file()
        assert (built.out / "notebooks" / c.path.name).is_file()           # the download link
        assert f'href="{c.page}"' in index and f'id="chapter-{c.number}"' in index
        assert c.title and c.learn_md and c.cost_md, f"{c.path.name}: title / learn / cost missing"
        if c.figure:
            assert f'src="img/{c.figure}"' in index


def test_gallery_shows_every_figure(built):
    gallery = (built.out / "gallery.html").read_text()
    figures = sorted(p.name for p in IMG_DIR.glob("*.png") if not p.name.startswith("site_"))
    assert built.images == figures
    for name in figures:
        assert f'src="img/{name}"' in gallery and (built.out / "img" / name).is_file()


def test_pages_load_nothing_from_the_network(built):
    for page in built.out.rglob("*.html"):
        refs = course_site.page_refs(page).refs
        remote = [(tag, url) for tag, _, url in refs if tag != "a" and urlsplit(url).scheme in ("http", "https")]
        assert remote == [], f"{page.name} loads {remote}"
        assert "cdnjs" not in page.read_text(), f"{page.name} still names a CDN"


# ----------------------------------------------------------------------------------------------
# The builder on a small made-up course: what it rewrites and what it reports
# ----------------------------------------------------------------------------------------------

def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(c) if isinstance(c, str) else c for c in cells]
    return nb


INTRO = ("# {n} · Chapter {n}\n\n[![Open In Colab]({badge})](https://colab.research.google.com/x)\n\n"
         "**What you will learn.** The update $\\Delta W = BA$.\n\n**What it costs.** 1 minute.\n")


@pytest.fixture
def toy_course(tmp_path):
    root = tmp_path / "course"
    (root / "notebooks").mkdir(parents=True)
    (root / "img").mkdir()
    (root / "utils").mkdir()
    (root / "utils" / "helper.py").write_text("x = 1\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1])
    fig.savefig(root / "img" / "02_curve.png")
    plt.close(fig)
    code = nbformat.v4.new_code_cell('save_figure(fig, "02_curve", "p")', execution_count=1)
    code.outputs = [nbformat.v4.new_output("display_data", data={      # a tqdm bar saved as a widget
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "100%|##########| 3/3 [00:01<00:00]"})]
    nbformat.write(_notebook(INTRO.format(n="01", badge=course_site.COLAB_BADGE_URL),
                             "See [the next one](02_second.ipynb#Part-2) and [the helper](../utils/helper.py)."),
                   root / "notebooks" / "01_first.ipynb")
    nbformat.write(_notebook(INTRO.format(n="02", badge=course_site.COLAB_BADGE_URL), "## Part 2\n\ntext", code),
                   root / "notebooks" / "02_second.ipynb")
    (root / "results").mkdir()
    (root / "results" / "01_first.json").write_text(json.dumps(
        {"profile": "smoke", "device": "cpu", "notebook_seconds": 65.8,
         "peak_memory_mb": {"full": 1900, "lora": 1200}, "peak_memory_kind": "process peak RSS"}))
    return root


def test_toy_course_builds_clean_and_rewrites_links(toy_course, tmp_path):
    site = course_site.build(tmp_path / "out", root=toy_course)
    assert site.problems == [], site.problems
    page = (site.out / "notebooks" / "01_first.html").read_text()
    assert 'href="02_second.html#Part-2"' in page                        # notebook link -> its page
    assert 'href="../utils/helper.py"' in page and (site.out / "utils" / "helper.py").read_text() == "x = 1\n"
    assert 'src="../assets/colab-badge.svg"' in page                     # the badge, offline
    assert "<math" in page and "$\\Delta" not in page                    # formulas are MathML
    assert [c.figure for c in site.chapters] == [None, "02_curve.png"]
    second = (site.out / "notebooks" / "02_second.html").read_text()
    assert "100%|##########| 3/3" in second and "widget-view+json" not in second   # its text, not a dead widget
    index = (site.out / "index.html").read_text()
    assert "1,900 MB (full: 1,900, lora: 1,200), process peak RSS" in index and "66 s" in index


def test_broken_links_and_remote_images_are_reported(toy_course, tmp_path):
    nb = nbformat.read(toy_course / "notebooks" / "02_second.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell(
        "[gone](../utils/missing.py) [anchor](#No-such-heading) ![remote](https://example.org/x.png)"))
    nbformat.write(nb, toy_course / "notebooks" / "02_second.ipynb")
    problems = course_site.build(tmp_path / "out", root=toy_course).problems
    assert any("../utils/missing.py -> missing file" in p for p in problems), problems
    assert any("no id 'No-such-heading'" in p for p in problems), problems
    assert any("loads https://example.org/x.png from the network" in p for p in problems), problems


def test_missing_intro_paragraphs_are_reported(toy_course, tmp_path):
    nbformat.write(_notebook("# 03 · Untitled\n\nJust text."), toy_course / "notebooks" / "03_bare.ipynb")
    problems = course_site.build(tmp_path / "out", root=toy_course).problems
    assert "03_bare.ipynb: its first markdown cell has no **What you will learn.** paragraph" in problems
    assert "03_bare.ipynb: its first markdown cell has no **What it costs.** paragraph" in problems


def test_build_refuses_to_empty_a_folder_it_did_not_build(toy_course, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="was not built by tools.site"):
        course_site.build(precious, root=toy_course)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_parse_intro_reads_title_learn_and_cost():
    title, learn, cost = course_site.parse_intro(
        "# 04 · ROUGE analysis\n\n**What you will learn.** ROUGE by hand.\nMore.\n\n**What it costs** 2 minutes.\n\nrest")
    assert (title, learn, cost) == ("ROUGE analysis", "ROUGE by hand.\nMore.", "2 minutes.")


# ----------------------------------------------------------------------------------------------
# Headless Chromium over the DevTools protocol
# ----------------------------------------------------------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"]) or None
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_chromium() -> str:
    path = find_chromium()
    if path:
        return path
    msg = ("Chromium not found: the BROWSER TEST OF THE SITE DID NOT RUN. Install Debian's chromium "
           "(`apt-get install -y chromium`) or set CHROMIUM=/path/to/chrome.")
    if _in_ci():
        pytest.fail("CI=true and " + msg, pytrace=False)
    warnings.warn(msg, UserWarning, stacklevel=2)   # shows in pytest's warnings summary, even with -q
    pytest.skip(msg)


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client, a dependency of jupyter_server

        self.ws = websocket.create_connection(ws_url, timeout=PAGE_TIMEOUT, suppress_origin=True)
        self.events: list[dict] = []
        self._id = 0

    def _recv(self, deadline: float) -> dict:
        self.ws.settimeout(max(0.1, deadline - time.monotonic()))
        return json.loads(self.ws.recv())

    def send(self, method: str, timeout: float = PAGE_TIMEOUT, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = self._recv(deadline)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, since: int, timeout: float = PAGE_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events[since:]:
                if e.get("method") == event:
                    return e
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self.events.append(self._recv(deadline))

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def close(self):
        self.ws.close()


# What we read from each loaded page, once its images have settled.
PAGE_PROBE = r"""
(async () => {
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); })));
  const rawMath = [];
  for (const el of document.querySelectorAll('.jp-RenderedMarkdown, .chapter')) {
    const copy = el.cloneNode(true);
    copy.querySelectorAll('code, pre, math').forEach(c => c.remove());
    const m = copy.textContent.match(/\$[^$\n]+\$/);
    if (m) rawMath.push(m[0]);
  }
  return {
    title: document.title,
    text: document.body ? document.body.innerText.length : 0,
    cells: document.querySelectorAll('.jp-Cell').length,
    images: [...document.images].map(i => ({src: i.currentSrc.slice(0, 100), width: i.naturalWidth})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name')),
    math: [...document.querySelectorAll('math')].map(m => m.getBoundingClientRect().width),
    rawMath,
  };
})()
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(folder: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _launch(chromium: str, profile_dir: Path) -> tuple[subprocess.Popen, str]:
    profile_dir.mkdir(parents=True, exist_ok=True)
    log = open(profile_dir / "chromium.log", "wb")
    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--remote-debugging-port=0", f"--user-data-dir={profile_dir}", "--no-first-run",
         "--no-default-browser-check", "--hide-scrollbars", "--disable-extensions",
         f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
         # every host name fails to resolve: a page that reaches for the network shows it at once
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT)
    port_file, deadline = profile_dir / "DevToolsActivePort", time.monotonic() + 30
    while not (port_file.is_file() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = (profile_dir / "chromium.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"Chromium did not start (exit {proc.poll()}):\n{tail}", pytrace=False)
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
        pages = [t for t in json.load(r) if t.get("type") == "page"]
    return proc, pages[0]["webSocketDebuggerUrl"]


def _visit(cdp: DevTools, url: str) -> dict:
    start = len(cdp.events)
    nav = cdp.send("Page.navigate", url=url)
    if nav.get("errorText"):
        return {"url": url, "error": nav["errorText"], "events": []}
    cdp.wait_for("Page.loadEventFired", start)
    probe = cdp.evaluate(PAGE_PROBE)
    events = cdp.events[start:]
    doc = [e["params"]["response"] for e in events if e.get("method") == "Network.responseReceived"
           and e["params"].get("type") == "Document"]
    probe.update(url=url, status=doc[-1]["status"] if doc else None, events=events)
    return probe


def browse(folder: Path, chromium: str, profile_dir: Path) -> dict:
    """Load every page reachable from ``folder/index.html`` in headless Chromium; screenshot the landing page."""
    server = _serve(folder)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    proc, ws_url = _launch(chromium, profile_dir)
    cdp = DevTools(ws_url)
    try:
        for domain in ("Page", "Runtime", "Network"):
            cdp.send(f"{domain}.enable")
        cdp.send("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                 deviceScaleFactor=1, mobile=False)
        pages, files, queue = {}, {}, ["index.html"]
        screenshot = None
        while queue:
            rel = queue.pop(0)
            if rel in pages:
                continue
            pages[rel] = _visit(cdp, base + rel)
            if rel == "index.html":
                screenshot = base64.b64decode(cdp.send("Page.captureScreenshot", format="png")["data"])
            for href in pages[rel].get("links", []):
                target, _ = urldefrag(href)
                if not target.startswith(base):
                    continue                      # external hyperlinks (Colab, GitHub) are not followed
                path = unquote(target[len(base):])
                if path.endswith(".html"):
                    queue.append(path)
                elif path not in files:
                    try:
                        with urllib.request.urlopen(target, timeout=10) as r:
                            files[path] = (r.status, len(r.read()))
                    except OSError as err:
                        files[path] = (getattr(err, "code", None) or str(err), 0)
        try:
            cdp.send("Browser.close", timeout=5)
        except Exception:
            pass
    finally:
        cdp.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.shutdown()
    return {"base": base, "pages": pages, "files": files, "screenshot": screenshot}


# What a page must satisfy; each returns the problems found (the tests below want none).

def render_problems(crawl: dict, n_cells: dict[str, int]) -> list[str]:
    bad = []
    for rel, p in crawl["pages"].items():
        if "error" in p or p.get("status") != 200:
            bad.append(f"{rel}: not loaded ({p.get('error') or 'HTTP ' + str(p.get('status'))})")
            continue
        if not p["title"] or p["text"] < 100:
            bad.append(f"{rel} looks empty: title {p['title']!r}, {p['text']} characters")
        errors = [e["params"]["exceptionDetails"].get("text") for e in p["events"]
                  if e.get("method") == "Runtime.exceptionThrown"]
        if errors:
            bad.append(f"{rel}: JavaScript errors {errors}")
        if rel in n_cells and p["cells"] != n_cells[rel]:   # a notebook page shows every cell of its notebook
            bad.append(f"{rel}: {p['cells']} cells rendered, the notebook has {n_cells[rel]}")
    return bad


def image_problems(crawl: dict) -> list[str]:
    return [f"{rel}: image did not load: {i['src']}" for rel, p in crawl["pages"].items()
            for i in p.get("images", []) if i["width"] <= 0]


def link_problems(crawl: dict) -> list[str]:
    base, pages = crawl["base"], crawl["pages"]
    bad = [f"{path}: {status}" for path, (status, size) in crawl["files"].items() if status != 200 or size == 0]
    for rel, p in pages.items():
        for href in p.get("links", []):
            target, frag = urldefrag(href)
            if not target.startswith(base) or not frag:
                continue
            dest = pages.get(unquote(target[len(base):]))
            if dest is not None and frag not in dest.get("ids", []) and unquote(frag) not in dest.get("ids", []):
                bad.append(f"{rel}: {href} -> no such anchor")
    return bad


def network_problems(crawl: dict) -> list[str]:
    base, bad = crawl["base"], []
    for rel, p in crawl["pages"].items():
        remote = [e["params"]["request"]["url"] for e in p["events"] if e.get("method") == "Network.requestWillBeSent"
                  and not e["params"]["request"]["url"].startswith((base, "data:", "about:"))]
        failed = [e["params"].get("errorText") for e in p["events"] if e.get("method") == "Network.loadingFailed"]
        if remote or failed:
            bad.append(f"{rel}: remote requests {remote}, failed loads {failed}")
    return bad


def math_problems(crawl: dict) -> list[str]:
    bad = []
    for rel, p in crawl["pages"].items():
        if p.get("rawMath"):
            bad.append(f"{rel}: TeX left untypeset: {p['rawMath']}")
        if any(w <= 0 for w in p.get("math", [])):
            bad.append(f"{rel}: a formula rendered with zero width")
    return bad


@pytest.fixture(scope="module")
def crawl(built, tmp_path_factory):
    """Every page of the course site, loaded in headless Chromium."""
    return browse(built.out, require_chromium(), tmp_path_factory.mktemp("chromium"))


def test_every_page_is_reachable_from_the_landing_page(built, crawl):
    assert set(built.pages) <= set(crawl["pages"]), set(built.pages) - set(crawl["pages"])


def test_every_page_renders(built, crawl):
    n_cells = {c.page: sum(cell.cell_type in ("code", "markdown") for cell in nbformat.read(c.path, 4).cells)
               for c in built.chapters}
    assert render_problems(crawl, n_cells) == []


def test_every_image_loads(crawl):
    assert image_problems(crawl) == []
    assert sum(len(p["images"]) for p in crawl["pages"].values()) > len(crawl["pages"])


def test_every_internal_link_resolves(crawl):
    assert link_problems(crawl) == []


def test_nothing_is_fetched_from_the_network(crawl):
    assert network_problems(crawl) == []


def test_formulas_are_typeset(crawl):
    assert math_problems(crawl) == []
    assert sum(len(p["math"]) for p in crawl["pages"].values()) > 0


def test_landing_page_screenshot(crawl):
    from PIL import Image

    png = crawl["screenshot"]
    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.size == VIEWPORT
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, "the landing page screenshot looks blank"
    # `make course` refreshes the README's screenshot; `make test` leaves the working tree as it is.
    if os.environ.get("COURSE_SCREENSHOT_TO"):
        target = Path(os.environ["COURSE_SCREENSHOT_TO"])
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(png)
        tmp.replace(target)


def test_the_browser_checks_catch_a_broken_site(toy_course, tmp_path):
    """The same checks on a toy site we break on purpose: each kind of fault is reported."""
    chromium = require_chromium()
    site = course_site.build(tmp_path / "out", root=toy_course)
    (site.out / "img" / "02_curve.png").write_bytes(b"")                     # an image that cannot decode
    page = site.out / "notebooks" / "01_first.html"
    page.write_text(page.read_text().replace("</main>", (
        '<a href="missing.html">gone</a> <a href="02_second.html#nowhere">no anchor</a>'
        '<img src="http://example.org/remote.png" alt="remote">'
        '<div class="jp-RenderedMarkdown">raw $x^2$ here</div>'
        "<script>undefinedFunction()</script></main>"), 1))
    crawl = browse(site.out, chromium, tmp_path / "chromium")
    render = render_problems(crawl, {})
    assert any(r.startswith("notebooks/missing.html: not loaded (HTTP 404)") for r in render), render
    assert any("JavaScript errors" in r for r in render), render
    images = image_problems(crawl)
    assert f"gallery.html: image did not load: {crawl['base']}img/02_curve.png" in images, images
    assert "notebooks/01_first.html: image did not load: http://example.org/remote.png" in images, images
    assert any("#nowhere -> no such anchor" in r for r in link_problems(crawl)), link_problems(crawl)
    assert any("example.org/remote.png" in r for r in network_problems(crawl)), network_problems(crawl)
    assert math_problems(crawl) == ["notebooks/01_first.html: TeX left untypeset: ['$x^2$']"]


# ----------------------------------------------------------------------------------------------
# Search: the index built with the site, and the search page in the browser
# ----------------------------------------------------------------------------------------------

def test_search_index_points_at_real_sections_of_every_chapter(built):
    by_page: dict[str, list[dict]] = {}
    for entry in built.search:
        page, frag = urldefrag(entry["url"])
        by_page.setdefault(page, []).append(entry)
        assert frag and (frag in course_site.page_refs(built.out / page).ids), f"{entry['url']}: no such section"
    assert set(by_page) == {c.page for c in built.chapters}
    for c in built.chapters:
        titles = " | ".join(e["title"] for e in by_page[c.page])
        headings = [line.lstrip("#").strip() for cell in nbformat.read(c.path, 4).cells if cell.cell_type == "markdown"
                    for line in cell.source.splitlines() if line.startswith("## ") and "$" not in line and "`" not in line]
        missing = [h for h in headings if h.replace("**", "") not in titles]
        assert not missing, f"{c.page}: sections missing from the search index: {missing}"
    index_js = (built.out / "assets" / "search-index.js").read_text()
    assert index_js.startswith("window.COURSE_INDEX = ") and len(built.search) == index_js.count('"url": ')


SEARCH_PROBE = r"""
(async () => {
  for (let i = 0; i < 50 && !document.getElementById('count').textContent; i++) await new Promise(r => setTimeout(r, 50));
  return {count: document.getElementById('count').textContent,
          hits: [...document.querySelectorAll('#hits li a')].map(a => a.href),
          titles: [...document.querySelectorAll('#hits li a')].map(a => a.textContent)};
})()
"""


@pytest.fixture(scope="module")
def searched(built, tmp_path_factory):
    """The search page in headless Chromium: two queries typed in the URL, one through a notebook page's search box."""
    chromium = require_chromium()
    server = _serve(built.out)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    proc, ws_url = _launch(chromium, tmp_path_factory.mktemp("chromium-search"))
    cdp = DevTools(ws_url)
    try:
        for domain in ("Page", "Runtime"):
            cdp.send(f"{domain}.enable")
        out = {}
        for q in ("double quantization", "zzqxv nonsense"):
            start = len(cdp.events)
            cdp.send("Page.navigate", url=base + "search.html?q=" + q.replace(" ", "%20"))
            cdp.wait_for("Page.loadEventFired", start)
            out[q] = cdp.evaluate(SEARCH_PROBE)
        page = built.chapters[-1].page                 # the box in a notebook page's navigation bar
        start = len(cdp.events)
        cdp.send("Page.navigate", url=base + page)
        cdp.wait_for("Page.loadEventFired", start)
        start = len(cdp.events)
        cdp.evaluate("(() => { const f = document.querySelector('form.search'); f.q.value = 'merge adapter'; "
                     "f.submit(); return true; })()")
        cdp.wait_for("Page.loadEventFired", start)
        out["box"] = cdp.evaluate(SEARCH_PROBE)
        out["box"]["url"] = cdp.evaluate("location.href")
        out["ids"] = {c.page: course_site.page_refs(built.out / c.page).ids for c in built.chapters}
        out["base"] = base
    finally:
        cdp.close()
        proc.kill()
        server.shutdown()
    return out


def test_search_finds_a_topic_and_links_to_its_section(searched):
    res, base = searched["double quantization"], searched["base"]
    assert res["hits"] and int(res["count"].split()[0]) >= len(res["hits"]), res
    assert any("quantization" in t.lower() for t in res["titles"][:3]), res["titles"][:5]
    for href in res["hits"]:
        target, frag = urldefrag(href)
        page = unquote(target[len(base):])
        assert frag in searched["ids"][page] or unquote(frag) in searched["ids"][page], f"{href}: no such section"


def test_search_says_when_nothing_matches(searched):
    assert searched["zzqxv nonsense"] == {"count": "0 sections match", "hits": [], "titles": []}


def test_search_box_of_a_notebook_page_opens_the_results(searched):
    box = searched["box"]
    assert "/search.html?q=merge+adapter" in box["url"] and box["hits"], box
