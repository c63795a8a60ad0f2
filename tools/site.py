"""The course as a static web site, built from the committed notebooks: ``python -m tools.site``
(``make site``) writes ``_site/``; open ``_site/index.html`` in a browser, no server or network needed.

* ``index.html``: the course outline. For every ``notebooks/NN_*.ipynb``: its title, "What you will
  learn" and "What it costs" (read from the notebook's first markdown cell), what the committed run
  measured (``results/<stem>.json``: profile, time, peak memory) and its key figure (the first
  ``img/NN_*.png`` the notebook saves).
* ``notebooks/<stem>.html``: every notebook with its outputs, rendered by nbconvert's HTML exporter
  (the Jupyter project's own converter) with a template that loads nothing from the network: the
  LaTeX of the markdown cells becomes MathML at build time (latex2mathml), so no MathJax from a CDN;
  the Colab badge is a local copy; links to other notebooks point at their pages.
* ``gallery.html``: every figure of ``img/``, grouped by chapter.
* ``search.html``: full-text search over every section of every notebook page (headings, text, code,
  outputs), from an index built with the site (``assets/search-index.js``, a script rather than JSON so
  that it loads from ``file://``); every page's navigation bar has a search box.

Every link is relative, so the folder works from ``file://`` as well as from any static host. The
build checks that each internal link and image of every page points at a file of the site (and each
``#anchor`` at an id of its page) and reports what does not; ``tests/test_site.py`` then loads the
pages in headless Chromium.
"""
from __future__ import annotations

import argparse
import html
import json
import posixpath
import re
import shutil
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

from utils.paths import ROOT

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
COLAB_BADGE_URL = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_URL = "https://colab.research.google.com/github/lora-qlora-course/lora-qlora-course/blob/main/notebooks/{name}"
SCREENSHOT = "site_landing.png"      # img/ file written by tests/test_site.py; not a course figure
DEFAULT_TITLE = "LoRA and QLoRA fine-tuning, from scratch to Llama 3.2"

# The lab template of nbconvert, minus everything it would fetch from a CDN (require.js, MathJax,
# mermaid, the widget manager), plus the course's navigation bar. Widget outputs (tqdm bars) show
# their text fallback.
NOTEBOOK_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<link rel="stylesheet" href="../assets/site.css">{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
{{ resources.course_nav_top }}
{%- endblock body_header -%}
{%- block body_footer -%}
{{ resources.course_nav_bottom }}
{{ super() }}
{%- endblock body_footer -%}
{%- block data_widget_view scoped -%}
<div class="jp-RenderedText jp-OutputArea-output {{ extra_class }}" data-mime-type="text/plain">
<pre>{{ output.data.get('text/plain', '') | escape }}</pre>
</div>
{%- endblock data_widget_view -%}
{%- block footer -%}
</html>
{%- endblock footer -%}
"""

COLAB_BADGE_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="117" height="20" role="img" aria-label="Open in Colab">
<title>Open in Colab</title>
<rect width="117" height="20" rx="3" fill="#555"/><rect x="20" width="97" height="20" rx="3" fill="#f9ab00"/>
<rect x="20" width="6" height="20" fill="#f9ab00"/>
<circle cx="8" cy="10" r="4.2" fill="none" stroke="#f9ab00" stroke-width="2.2"/>
<circle cx="13" cy="10" r="4.2" fill="none" stroke="#e8710a" stroke-width="2.2"/>
<text x="68" y="14" fill="#000" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" text-anchor="middle">Open in Colab</text>
</svg>
"""

SITE_CSS = """
:root { --accent: #1b9e77; --muted: #5f6368; --line: #e0e0e0; }
body.course { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  margin: 0; color: #202124; background: #fafafa; line-height: 1.5; }
.course-nav { position: sticky; top: 0; z-index: 10; display: flex; flex-wrap: wrap; gap: 1.2em;
  align-items: center; padding: .55em 1.2em; background: #263238; font: 14px system-ui, "DejaVu Sans", sans-serif; }
.course-nav a { color: #e0f2f1; text-decoration: none; }
.course-nav a:hover { text-decoration: underline; }
.course-nav .here { color: #fff; font-weight: 600; }
.course-nav .spacer { flex: 1; }
.course-nav img { vertical-align: middle; }
.course-pager { display: flex; justify-content: space-between; margin: 2em 0 1em; padding: 1em 1.2em;
  border-top: 1px solid var(--line); font: 15px system-ui, "DejaVu Sans", sans-serif; }
.course-pager a { color: #00695c; }
main.course-main { max-width: 1120px; margin: 0 auto; padding: 1.5em 1.5em 3em; }
.course-main h1 { font-size: 2em; margin: .3em 0 .2em; }
.course-main .lede { font-size: 1.08em; color: #3c4043; max-width: 58em; }
.course-main .facts { color: var(--muted); font-size: .92em; }
.chapter { display: grid; grid-template-columns: minmax(0, 1.35fr) minmax(0, 1fr); gap: 1.4em;
  background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 1.2em 1.4em; margin: 1.2em 0;
  box-shadow: 0 1px 2px rgba(0,0,0,.04); }
.chapter h2 { margin: 0 0 .4em; font-size: 1.3em; }
.chapter h2 a { color: #00695c; text-decoration: none; }
.chapter h2 .num { color: var(--muted); font-weight: 400; margin-right: .3em; }
.chapter p { margin: .45em 0; }
.chapter .label { font-weight: 600; }
.chapter figure { margin: 0; }
.chapter figure img, .gallery figure img { width: 100%; height: auto; border: 1px solid var(--line);
  border-radius: 6px; background: #fff; }
.chapter figcaption, .gallery figcaption { font-size: .82em; color: var(--muted); margin-top: .3em; }
.measured { width: 100%; border-collapse: collapse; font-size: .9em; margin: .6em 0; }
.measured th, .measured td { text-align: left; padding: .25em .5em; border-bottom: 1px solid var(--line); }
.measured th { color: var(--muted); font-weight: 500; width: 9.5em; }
.measured caption { text-align: left; font-size: .85em; color: var(--muted); padding: .2em .5em; }
.links { margin-top: .7em; display: flex; gap: 1em; flex-wrap: wrap; align-items: center; font-size: .95em; }
.links a { color: #00695c; }
.links img { vertical-align: middle; }
.links .runtime { color: var(--muted); font-size: .92em; }
table.profiles { border-collapse: collapse; margin: .6em 0 1em; font-size: .93em; background: #fff; }
table.profiles th, table.profiles td { border: 1px solid var(--line); padding: .35em .6em; text-align: left; vertical-align: top; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1.2em; }
.gallery figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: .6em; }
.missing { color: #b00020; }
.course-nav form.search input { font: 13px system-ui, "DejaVu Sans", sans-serif; padding: .2em .5em; width: 13em;
  border: 1px solid #546e7a; border-radius: 4px; background: #37474f; color: #fff; }
#q { font-size: 1.1em; padding: .4em .6em; width: min(36em, 100%); }
ol.hits li { margin: .8em 0; } ol.hits li p { margin: .2em 0; color: var(--muted); font-size: .92em; }
@media (max-width: 820px) { .chapter { grid-template-columns: 1fr; } }
"""


# ----------------------------------------------------------------------------------------------
# Markdown with math rendered to MathML at build time
# ----------------------------------------------------------------------------------------------

def _latex2mathml():
    try:
        from latex2mathml.converter import convert
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the site needs latex2mathml to render the notebooks' formulas offline: "
                          "run `make install` (it is in requirements.txt) or `pip install latex2mathml`.") from err
    return convert


def _mathml_renderer_class():
    from nbconvert.filters.markdown_mistune import IPythonRenderer

    convert = _latex2mathml()

    class MathMLRenderer(IPythonRenderer):
        """nbconvert's markdown renderer, with formulas turned into MathML instead of left for MathJax."""

        errors: list[str] = []

        def _math(self, tex: str, display: str) -> str:
            try:
                return convert(tex.strip(), display=display)
            except Exception as err:  # latex2mathml raises several types on TeX it does not know
                self.errors.append(f"${tex}$: {type(err).__name__}: {err}")
                return f'<code class="tex">{html.escape(tex)}</code>'

        def inline_math(self, body: str) -> str:
            return self._math(body, "inline")

        def block_math(self, body: str) -> str:
            return self._math(body, "block")

        def latex_environment(self, name: str, body: str) -> str:
            return self._math(f"\\begin{{{name}}}{body}\\end{{{name}}}", "block")

    return MathMLRenderer


class Markdown:
    """Markdown to HTML the way notebook cells are rendered, collecting formulas that fail."""

    def __init__(self):
        from nbconvert.filters.markdown_mistune import MarkdownWithMath

        self._cls, self._md = _mathml_renderer_class(), MarkdownWithMath
        self.errors: list[str] = []

    def __call__(self, text: str, **renderer_kw) -> str:
        renderer = self._cls(escape=False, **renderer_kw)
        renderer.errors = self.errors
        return self._md(renderer=renderer).render(text)


# ----------------------------------------------------------------------------------------------
# What the landing page says about each chapter
# ----------------------------------------------------------------------------------------------

@dataclass
class Chapter:
    path: Path
    number: str
    title: str
    learn_md: str | None
    cost_md: str | None
    results: dict | None
    figure: str | None            # file name in img/
    runtime: str                  # the Colab runtime to pick
    n_cells: int

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def page(self) -> str:
        return f"notebooks/{self.stem}.html"


def find_notebooks(root: Path = ROOT) -> list[Path]:
    return sorted((root / "notebooks").glob(NOTEBOOK_GLOB))


def _paragraph(md: str, label: str) -> str | None:
    """The paragraph that starts with ``**<label>.**`` (the bold label itself removed)."""
    m = re.search(r"\*\*" + re.escape(label) + r"\.?\*\*:?[ \t]*(.+?)(?:\n[ \t]*\n|\Z)", md, flags=re.S | re.I)
    return m.group(1).strip() if m else None


def parse_intro(md: str) -> tuple[str, str | None, str | None]:
    """(title, what you will learn, what it costs) from a notebook's first markdown cell."""
    m = re.search(r"^#[ \t]+(.+)$", md, flags=re.M)
    title = m.group(1).strip() if m else ""
    title = re.sub(r"^\d\d\s*[·:.\-–—]\s*", "", title)
    return title, _paragraph(md, "What you will learn"), _paragraph(md, "What it costs")


def key_figure(stem: str, nb, img_dir: Path) -> str | None:
    """The first figure the notebook saves (``save_figure(fig, "NN_name", ...)``) that exists in img/;
    else the first ``img/NN_*.png`` by name."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for name in re.findall(r"save_figure\(\s*\w+\s*,\s*[\"'](\w+)[\"']", cell.source):
            if (img_dir / f"{name}.png").is_file():
                return f"{name}.png"
    found = sorted(p.name for p in img_dir.glob(f"{stem[:2]}_*.png"))
    return found[0] if found else None


def load_chapter(path: Path, root: Path = ROOT) -> Chapter:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    first_md = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    title, learn, cost = parse_intro(first_md)
    results = None
    res_path = root / "results" / f"{path.stem}.json"
    if res_path.is_file():
        try:
            results = json.loads(res_path.read_text())
        except ValueError:
            results = None
    runtime = "T4 GPU" if str(nb.metadata.get("accelerator", "")).upper() == "GPU" else "CPU"
    return Chapter(path=path, number=path.stem[:2], title=title or path.stem, learn_md=learn, cost_md=cost,
                   results=results, figure=key_figure(path.stem, nb, root / "img"), runtime=runtime,
                   n_cells=len(nb.cells))


def _peak_memory(results: dict) -> str | None:
    peak = results.get("peak_memory_mb")
    kind = results.get("peak_memory_kind")
    if isinstance(peak, dict):
        numbers = {k: v for k, v in peak.items() if isinstance(v, (int, float))}
        if not numbers:
            return None
        text = f"{max(numbers.values()):,.0f} MB (" + ", ".join(f"{k}: {v:,.0f}" for k, v in numbers.items()) + ")"
    elif isinstance(peak, (int, float)):
        text = f"{peak:,.0f} MB"
    else:
        return None
    return f"{text}, {kind}" if kind else text


def _duration(seconds) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def measured_rows(results: dict | None) -> list[tuple[str, str]]:
    """The rows of the "measured" table of a chapter card (what the committed run recorded)."""
    if not results:
        return [("measured", "not yet: run the notebook (make course) to write results/")]
    rows = [("profile", str(results.get("profile", "?"))), ("device", str(results.get("device", "?")))]
    if (d := _duration(results.get("notebook_seconds"))) is not None:
        rows.append(("notebook time", d))
    if (m := _peak_memory(results)) is not None:
        rows.append(("peak memory", m))
    return rows


# ----------------------------------------------------------------------------------------------
# Pages
# ----------------------------------------------------------------------------------------------

def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, body: str, nav: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
            f'<link rel="stylesheet" href="assets/site.css">\n</head>\n<body class="course">\n{nav}\n'
            f'<main class="course-main">\n{body}\n</main>\n</body>\n</html>\n')


def _nav(chapters: list[Chapter], prefix: str, here: str | None) -> str:
    def link(href, text, key):
        cls = ' class="here"' if key == here else ""
        return f'<a{cls} href="{prefix}{href}">{_e(text)}</a>'

    items = [link("index.html", "Course", "index")]
    items += [link(c.page, c.number, c.stem) for c in chapters]
    items.append(link("gallery.html", "Figures", "gallery"))
    items.append(link("search.html", "Search", "search"))
    items.append(f'<form class="search" action="{prefix}search.html" role="search"><input name="q" type="search" '
                 'placeholder="Search the course" aria-label="Search the course"></form>')
    return '<nav class="course-nav">' + " ".join(items) + "</nav>"


def _colab_link(chapter: Chapter, prefix: str) -> str:
    url = COLAB_URL.format(name=chapter.path.name)
    return (f'<a href="{_e(url)}"><img src="{prefix}assets/colab-badge.svg" width="117" height="20" '
            f'alt="Open In Colab"></a>')


def _readme_intro(root: Path) -> tuple[str, str | None]:
    """The course title and first paragraph of the README (the lead's words, one place)."""
    readme = root / "README.md"
    if not readme.is_file():
        return DEFAULT_TITLE, None
    text = readme.read_text()
    m = re.search(r"^#[ \t]+(.+)$", text, flags=re.M)
    title = m.group(1).strip() if m else DEFAULT_TITLE
    rest = text[m.end():] if m else text
    para = next((p.strip() for p in re.split(r"\n[ \t]*\n", rest) if p.strip() and not p.lstrip().startswith(("#", "|", "!", "<", "```"))), None)
    return title, para


def _labelled(label: str, rendered: str) -> str:
    """Put a bold label at the start of the first paragraph of rendered markdown."""
    tag = f'<span class="label">{_e(label)}</span> '
    return rendered.replace("<p>", "<p>" + tag, 1) if rendered.lstrip().startswith("<p") else tag + rendered


def landing_page(chapters: list[Chapter], md: Markdown, root: Path) -> str:
    from utils.profiles import PROFILES

    title, intro = _readme_intro(root)
    out = [f"<h1>{_e(title)}</h1>"]
    if intro:
        out.append(f'<div class="lede">{md(intro)}</div>')
    profiles_seen = sorted({str(c.results.get("profile")) for c in chapters if c.results})
    out.append('<p class="facts">Rendered from the committed notebooks with their outputs'
               + (f" (profile{'s' if len(profiles_seen) > 1 else ''}: {_e(', '.join(profiles_seen))})" if profiles_seen else "")
               + f'. {len(chapters)} chapter{"s" if len(chapters) != 1 else ""} &middot; '
               '<a href="gallery.html">all figures</a>.</p>')
    out.append("<h2>Course outline</h2>")
    for c in chapters:
        learn = _labelled("What you will learn.", md(c.learn_md) if c.learn_md else
                          '<p class="missing">(no "What you will learn" paragraph)</p>')
        cost = _labelled("What it costs.", md(c.cost_md) if c.cost_md else
                         '<p class="missing">(no "What it costs" paragraph)</p>')
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in measured_rows(c.results))
        if c.figure:
            fig = (f'<figure><a href="img/{_e(c.figure)}"><img src="img/{_e(c.figure)}" alt="key figure of chapter '
                   f'{c.number}: {_e(c.figure)}"></a><figcaption>{_e(c.figure)}</figcaption></figure>')
        else:
            fig = '<figure><figcaption>No figure yet.</figcaption></figure>'
        out.append(
            f'<section class="chapter" id="chapter-{c.number}"><div>'
            f'<h2><a href="{c.page}"><span class="num">{c.number}</span>{_e(c.title)}</a></h2>'
            f'<div class="learn">{learn}</div><div class="cost">{cost}</div>'
            f'<table class="measured"><caption>Measured in the committed run</caption>'
            f'{rows}</table>'
            f'<div class="links"><a href="{c.page}">Read the notebook</a>'
            f'<a href="notebooks/{_e(c.path.name)}" download>Download .ipynb</a>{_colab_link(c, "")}'
            f'<span class="runtime">Colab runtime: {_e(c.runtime)}</span></div>'
            f"</div>{fig}</section>")
    out.append("<h2>Profiles: where the course runs</h2>")
    out.append("<p>One switch, <code>COURSE_PROFILE</code>, picks a row; every size a notebook uses comes from it.</p>")
    out.append('<table class="profiles"><tr><th>profile</th><th>what it is</th></tr>'
               + "".join(f"<tr><td><code>{_e(p.name)}</code></td><td>{_e(p.description)}</td></tr>" for p in PROFILES.values())
               + "</table>")
    return _page(title, "\n".join(out), _nav(chapters, "", "index"))


def gallery_page(chapters: list[Chapter], images: list[str], root: Path) -> str:
    by_number = {c.number: c for c in chapters}
    groups: dict[str, list[str]] = {}
    for name in images:
        key = name[:2] if name[:2] in by_number else "other"
        groups.setdefault(key, []).append(name)
    out = ["<h1>Figures</h1>", f'<p class="facts">Every figure in <code>img/</code> ({len(images)}), '
           "as the notebooks saved them; each carries its profile, model and sample size in a footnote.</p>"]
    for key in sorted(groups, key=lambda k: (k == "other", k)):
        if key == "other":
            out.append("<h2>Other figures</h2>")
        else:
            c = by_number[key]
            out.append(f'<h2><a href="{c.page}">{c.number} · {_e(c.title)}</a></h2>')
        out.append('<div class="gallery">' + "".join(
            f'<figure id="{_e(Path(n).stem)}"><a href="img/{_e(n)}"><img src="img/{_e(n)}" alt="{_e(n)}"></a>'
            f"<figcaption>{_e(n)}</figcaption></figure>" for n in groups[key]) + "</div>")
    return _page("Figures", "\n".join(out), _nav(chapters, "", "gallery"))


# ----------------------------------------------------------------------------------------------
# Notebook pages
# ----------------------------------------------------------------------------------------------

def _exporter():
    import jinja2
    from nbconvert import HTMLExporter

    class CourseHTMLExporter(HTMLExporter):
        def __init__(self, md: Markdown, **kw):
            super().__init__(**kw)
            self._course_md = md

        @jinja2.pass_context
        def markdown2html(self, context, source):  # nbconvert's filter signature
            cell = context.get("cell", {})
            path = context.get("resources", {}).get("metadata", {}).get("path", "")
            return self._course_md(source, attachments=cell.get("attachments", {}), path=path,
                                   anchor_link_text=self.anchor_link_text,
                                   exclude_anchor_links=self.exclude_anchor_links)

    def make(md: Markdown):
        return CourseHTMLExporter(md, template_name="lab", template_file="course_notebook.html.j2",
                                  extra_loaders=[jinja2.DictLoader({"course_notebook.html.j2": NOTEBOOK_TEMPLATE})])

    return make


def _pager(chapters: list[Chapter], i: int) -> str:
    prev = (f'<a href="{chapters[i - 1].stem}.html">&larr; {chapters[i - 1].number} · {_e(chapters[i - 1].title)}</a>'
            if i > 0 else '<a href="../index.html">&larr; Course outline</a>')
    nxt = (f'<a href="{chapters[i + 1].stem}.html">{chapters[i + 1].number} · {_e(chapters[i + 1].title)} &rarr;</a>'
           if i + 1 < len(chapters) else '<a href="../gallery.html">All figures &rarr;</a>')
    return f'<nav class="course-pager">{prev}{nxt}</nav>'


_ATTR = re.compile(r'(?P<pre>\b(?:href|src)=)(?P<q>["\'])(?P<url>[^"\']*)(?P=q)', re.I)


class _Links:
    """Rewrites the links of a notebook page: local Colab badge, notebook -> page, repository files copied."""

    def __init__(self, root: Path, out: Path, stems: set[str]):
        self.root, self.out, self.stems = root, out, stems

    def __call__(self, page_html: str) -> str:
        return _ATTR.sub(self._one, page_html)

    def _one(self, m: re.Match) -> str:
        url = html.unescape(m.group("url"))
        new = self.rewrite(url)
        if new == url:
            return m.group(0)
        return f'{m.group("pre")}{m.group("q")}{_e(new)}{m.group("q")}'

    def rewrite(self, url: str) -> str:
        if url == COLAB_BADGE_URL:
            return "../assets/colab-badge.svg"
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or url.startswith(("#", "/")) or not parts.path:
            return url
        target, frag = urldefrag(url)
        rel = posixpath.normpath(posixpath.join("notebooks", unquote(target)))
        if rel.startswith("../"):
            return url                       # outside the course: left as is, reported as broken
        src = self.root / rel
        if rel.startswith("notebooks/") and rel.endswith(".ipynb") and Path(rel).stem in self.stems:
            new = posixpath.relpath(f"notebooks/{Path(rel).stem}.html", "notebooks")
        elif src.is_file():
            dest = self.out / rel
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
            return url
        else:
            return url
        return new + (f"#{frag}" if frag else "")


# ----------------------------------------------------------------------------------------------
# Search: an index of every section of every notebook page, and a page that queries it
# ----------------------------------------------------------------------------------------------

class _Sections(HTMLParser):
    """A rendered notebook page cut at its headings: (id, heading, text up to the next heading)."""
    HEADINGS, SKIP = ("h1", "h2", "h3", "h4"), ("style", "script", "head", "nav")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: list[list] = [["", "", []]]
        self._heading, self._skip = None, 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.HEADINGS and dict(attrs).get("id"):
            self._heading = tag
            self.sections.append([dict(attrs)["id"], "", []])
        elif tag == "a" and "anchor-link" in (dict(attrs).get("class") or ""):
            self._skip += 1                       # nbconvert's pilcrow after each heading

    def handle_endtag(self, tag):
        if tag in self.SKIP or (tag == "a" and self._skip and self._heading):
            self._skip = max(0, self._skip - 1)
        elif tag == self._heading:
            self._heading = None

    def handle_data(self, data):
        if self._skip:
            return
        if self._heading:
            self.sections[-1][1] += data
        else:
            self.sections[-1][2].append(data)


URL_SAFE = "!$&'()*+,;=:@/?-._~%"   # kept as they are in a fragment (nbconvert's ids are already %-encoded)
SEARCH_TEXT_CHARS = 4000        # per section: enough for its prose and the start of its outputs


def search_index(out: Path, chapters: list[Chapter]) -> list[dict]:
    """One entry per heading of every notebook page: its url (with the heading's id), chapter, title, text."""
    from urllib.parse import quote

    entries = []
    for c in chapters:
        parser = _Sections()
        parser.feed((out / c.page).read_text(encoding="utf-8"))
        for anchor, title, text in parser.sections:
            title, text = " ".join(title.split()), " ".join(" ".join(text).split())
            if anchor and title:
                entries.append({"url": f"{c.page}#{quote(anchor, safe=URL_SAFE)}", "chapter": c.number,
                                "title": title, "text": text[:SEARCH_TEXT_CHARS]})
    return entries


SEARCH_JS = r"""(function () {
  const input = document.getElementById('q'), hits = document.getElementById('hits'),
        count = document.getElementById('count'), index = window.COURSE_INDEX || [];
  function run(query) {
    const terms = query.toLowerCase().split(/\s+/).filter(t => t.length > 1);
    hits.replaceChildren();
    count.textContent = terms.length ? '' : index.length + ' sections indexed: type a word or two.';
    if (!terms.length) return;
    const found = [];
    for (const s of index) {
      const title = s.title.toLowerCase(), text = s.text.toLowerCase();
      if (!terms.every(t => title.includes(t) || text.includes(t))) continue;
      const score = terms.reduce((n, t) => n + (title.includes(t) ? 20 : 0) + text.split(t).length - 1, 0);
      found.push([score, s]);
    }
    found.sort((a, b) => b[0] - a[0]);
    count.textContent = found.length + (found.length === 1 ? ' section matches' : ' sections match');
    for (const [, s] of found.slice(0, 40)) {
      const li = document.createElement('li'), a = document.createElement('a'), p = document.createElement('p');
      a.href = s.url;
      a.textContent = s.chapter + ' \u00b7 ' + s.title;
      const at = s.text.toLowerCase().indexOf(terms[0]), from = Math.max(0, at - 80);
      p.textContent = (from > 0 ? '\u2026' : '') + s.text.slice(from, from + 240) + '\u2026';
      li.append(a, p);
      hits.append(li);
    }
  }
  input.value = new URLSearchParams(location.search).get('q') || '';
  run(input.value);
  input.addEventListener('input', () => run(input.value));
})();
"""


def search_page(chapters: list[Chapter], n_sections: int) -> str:
    body = ("<h1>Search</h1>"
            f'<p class="facts">Every section of the {len(chapters)} notebooks ({n_sections} sections: their text, code '
            "and outputs as committed), searched in your browser; no server, no network. A section matches when it "
            "holds every word you type; sections whose heading holds them come first.</p>"
            '<form action="search.html" role="search"><input id="q" name="q" type="search" '
            'placeholder="e.g. double quantization" aria-label="Search the course" autofocus></form>'
            '<p id="count" class="facts"></p><ol id="hits" class="hits"></ol>'
            '<script src="assets/search-index.js"></script><script src="assets/search.js"></script>')
    return _page("Search", body, _nav(chapters, "", "search"))


# ----------------------------------------------------------------------------------------------
# Checking the built site without a browser
# ----------------------------------------------------------------------------------------------

class _Refs(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[str, str, str]] = []   # (tag, attribute, url)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("id", "name") and v:
                self.ids.add(v)
            if v is None:
                continue
            if (k == "href" and tag in ("a", "link", "area")) or (k == "src" and tag in ("img", "script", "iframe", "source", "video", "audio")):
                self.refs.append((tag, k, v))


def page_refs(page: Path) -> _Refs:
    p = _Refs()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def check_site(out: Path) -> list[str]:
    """Every internal href/src of every page points at a file of the site (and each #anchor at an id
    of its page); nothing but hyperlinks leaves the site. Returns the problems found."""
    problems, parsed = [], {}
    pages = sorted(out.rglob("*.html"))
    for page in pages:
        parsed[page] = page_refs(page)
    for page in pages:
        rel_page = page.relative_to(out).as_posix()
        for tag, attr, url in parsed[page].refs:
            if url.startswith(("data:", "mailto:", "javascript:")):
                continue
            parts = urlsplit(url)
            if parts.scheme or parts.netloc:
                if tag != "a":
                    problems.append(f"{rel_page}: <{tag} {attr}> loads {url} from the network")
                continue
            target, frag = urldefrag(url)
            if target.startswith("/"):
                problems.append(f"{rel_page}: absolute link {url} does not work from a folder")
                continue
            dest = page if not target else (page.parent / unquote(target)).resolve()
            try:
                dest.relative_to(out.resolve())
            except ValueError:
                problems.append(f"{rel_page}: {url} points outside the site")
                continue
            if not dest.is_file():
                problems.append(f"{rel_page}: {url} -> missing file")
                continue
            if frag and dest.suffix == ".html":
                ids = parsed[dest].ids if dest in parsed else page_refs(dest).ids
                if frag not in ids and unquote(frag) not in ids:   # as browsers do: raw, then decoded
                    problems.append(f"{rel_page}: {url} -> no id {unquote(frag)!r} in {dest.name}")
    return problems


# ----------------------------------------------------------------------------------------------
# The build
# ----------------------------------------------------------------------------------------------

@dataclass
class Site:
    out: Path
    chapters: list[Chapter]
    images: list[str]
    pages: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    search: list[dict] = field(default_factory=list)


def build(out: Path | str = ROOT / "_site", root: Path | str = ROOT) -> Site:
    """Write the site to ``out`` (emptied first) from the notebooks, img/ and results/ under ``root``."""
    import nbformat

    root, out = Path(root).resolve(), Path(out).resolve()
    if out == root or root.is_relative_to(out):
        raise ValueError(f"refusing to empty {out}: it holds the course itself; choose another --out.")
    paths = find_notebooks(root)
    if not paths:
        raise FileNotFoundError(f"no notebooks matching notebooks/{NOTEBOOK_GLOB} under {root}")
    if out.exists():
        if any(out.iterdir()) and not (out / "assets" / "site.css").is_file():
            raise ValueError(f"refusing to empty {out}: it is not empty and was not built by tools.site; "
                             "choose another --out.")
        shutil.rmtree(out)
    (out / "notebooks").mkdir(parents=True)
    (out / "assets").mkdir()
    (out / "assets" / "site.css").write_text(SITE_CSS)
    (out / "assets" / "colab-badge.svg").write_text(COLAB_BADGE_SVG)
    img_dir = root / "img"
    images = sorted(p.name for p in img_dir.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg", ".gif")
                    and not p.name.startswith("site_")) if img_dir.is_dir() else []
    if img_dir.is_dir():
        shutil.copytree(img_dir, out / "img")

    chapters = [load_chapter(p, root) for p in paths]
    site = Site(out=out, chapters=chapters, images=images)
    md = Markdown()
    for c in chapters:
        if not c.learn_md:
            site.problems.append(f"{c.path.name}: its first markdown cell has no **What you will learn.** paragraph")
        if not c.cost_md:
            site.problems.append(f"{c.path.name}: its first markdown cell has no **What it costs.** paragraph")

    export = _exporter()(md)
    links = _Links(root, out, {c.stem for c in chapters})
    for i, c in enumerate(chapters):
        nb = nbformat.read(c.path, as_version=4)
        resources = {"metadata": {"name": f"{c.number} · {c.title}", "path": str(c.path.parent)},
                     "course_nav_top": _nav(chapters, "../", c.stem).replace(
                         "</nav>", f'<span class="spacer"></span><a href="{_e(c.path.name)}" download>.ipynb</a>'
                                   f'{_colab_link(c, "../")}</nav>'),
                     "course_nav_bottom": _pager(chapters, i)}
        body, _ = export.from_notebook_node(nb, resources=resources)
        body = body.replace('<body class="jp-Notebook"', '<body class="jp-Notebook course-notebook"', 1)
        (out / c.page).write_text(links(body), encoding="utf-8")
        shutil.copy2(c.path, out / "notebooks" / c.path.name)
        site.pages.append(c.page)

    (out / "index.html").write_text(landing_page(chapters, md, root), encoding="utf-8")
    (out / "gallery.html").write_text(gallery_page(chapters, images, root), encoding="utf-8")
    site.search = search_index(out, chapters)
    (out / "assets" / "search-index.js").write_text(
        "window.COURSE_INDEX = " + json.dumps(site.search, ensure_ascii=False) + ";\n", encoding="utf-8")
    (out / "assets" / "search.js").write_text(SEARCH_JS, encoding="utf-8")
    (out / "search.html").write_text(search_page(chapters, len(site.search)), encoding="utf-8")
    site.pages[:0] = ["index.html", "gallery.html", "search.html"]
    site.problems += [f"formula not converted: {e}" for e in md.errors]
    site.problems += check_site(out)
    return site


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.site", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "_site"), help="output folder (emptied first; default: _site)")
    args = ap.parse_args(argv)
    site = build(args.out)
    try:
        shown = Path(args.out).resolve().relative_to(ROOT)
    except ValueError:
        shown = Path(args.out).name
    print(f"built {len(site.pages)} pages ({len(site.chapters)} notebooks, {len(site.images)} figures) in {shown}/; "
          f"open {shown}/index.html")
    for p in site.problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if site.problems else 0


if __name__ == "__main__":
    sys.exit(main())
