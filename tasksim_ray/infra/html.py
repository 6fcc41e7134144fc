"""A run's report as one self-contained page: ``<report dir>/index.html``.

Built from what the report stages already write, whatever they are: every Markdown file of the
folder (``summary.md`` first) becomes a section, every PNG a figure embedded as a data URI, and each
sub-folder (``transfer/``: the studies' tables and figures) a section of its own. The page loads
nothing from anywhere (no network, no script; its Content-Security-Policy forbids both), so it can be
mailed, archived or opened offline. Raw HTML in the Markdown is shown as text, never rendered: task
names come from users' files.
"""

from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timezone
from pathlib import Path

import markdown

from tasksim_ray.infra.cache import write_text_atomic

__all__ = ["INDEX", "write_html_report"]

INDEX = "index.html"
_FIRST = ("summary.md",)  # shown before the folder's other Markdown files
_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b; margin: 0; }
header { background: #1f3b57; color: #fff; padding: 1rem 2rem; }
header h1 { margin: 0; font-size: 1.4rem; } header p { margin: .2rem 0 0; opacity: .8; }
nav { padding: .5rem 2rem; border-bottom: 1px solid #ddd; background: #f6f8fa; }
nav a { margin-right: 1.2rem; color: #1f3b57; }
main { padding: 0 2rem 3rem; max-width: 1200px; }
section { margin-top: 2rem; } h2 { border-bottom: 2px solid #1f3b57; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } thead th { background: #eef2f6; }
code { background: #f0f0f0; padding: 0 .2rem; border-radius: 3px; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; border: 1px solid #e3e3e3; padding: .5rem; background: #fff; }
figure img { max-width: 100%; height: auto; display: block; }
p img { max-width: calc(50% - 1rem); height: auto; vertical-align: top; margin: 0 .4rem .4rem 0; }
figcaption { font-size: 13px; color: #555; margin-top: .3rem; }
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _markdown_to_html(text: str) -> str:
    """Markdown with tables; raw HTML stays text (escaped), never markup."""
    md = markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists"])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md.convert(text)


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _caption(png: Path) -> str:
    return png.stem.replace("_", " ")


def _anchor(rel: Path) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(rel)).strip("-").lower() or "report"


def _inline_images(body: str, folder: Path, used: set[Path]) -> str:
    """Images the Markdown links by relative path become data URIs (and leave the gallery)."""
    def swap(match: re.Match[str]) -> str:
        target = (folder / html.unescape(match.group(1))).resolve()
        if target.parent == folder.resolve() and target.suffix == ".png" and target.is_file():
            used.add(target)
            return f'src="{_data_uri(target)}"'
        return match.group(0)

    return re.sub(r'src="([^"]+)"', swap, body)


def _section(folder: Path, root: Path) -> tuple[str, str] | None:
    """One folder's Markdown and figures as ``(anchor, html)``; None for a folder with neither. Figures
    the Markdown links appear where it links them; the others follow as a gallery, by name."""
    docs = sorted(folder.glob("*.md"), key=lambda p: (p.name not in _FIRST, p.name))
    pngs = sorted(folder.glob("*.png"))
    if not docs and not pngs:
        return None
    rel = folder.relative_to(root)
    anchor = "report" if rel == Path(".") else _anchor(rel)
    used: set[Path] = set()
    parts = [_inline_images(_markdown_to_html(p.read_text(encoding="utf-8")), folder, used) for p in docs]
    gallery = [f'<figure><img src="{_data_uri(p)}" alt="{html.escape(_caption(p))}">'
               f"<figcaption>{html.escape(p.name)}</figcaption></figure>"
               for p in pngs if p.resolve() not in used]
    if gallery:
        parts.append('<h3>Figures</h3><div class="figures">' + "".join(gallery) + "</div>")
    heading = "" if rel == Path(".") else f"<h2>{html.escape(str(rel))}</h2>"
    return anchor, f'<section id="{anchor}">{heading}{"".join(parts)}</section>'


def write_html_report(report_dir: Path, title: str | None = None) -> Path:
    """Write ``report_dir/index.html`` from the folder's Markdown and PNGs and those of its
    sub-folders (one section each), and return its path. Call it again after a study adds a folder."""
    report_dir = Path(report_dir)
    folders = [report_dir] + sorted(p for p in report_dir.rglob("*") if p.is_dir() and not p.name.startswith("."))
    sections = [s for f in folders if (s := _section(f, report_dir)) is not None]
    title = title or f"tasksim report: {report_dir.resolve().parent.name}"
    nav = "".join(f'<a href="#{a}">{"run" if a == "report" else html.escape(a)}</a>' for a, _ in sections)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1><p>{html.escape(str(report_dir))} · written {stamp}</p></header>"
            f"<nav>{nav}</nav><main>{''.join(body for _, body in sections)}</main></body></html>\n")
    out = report_dir / INDEX
    write_text_atomic(out, page.encode("ascii", "xmlcharrefreplace").decode("ascii"))  # any locale
    return out
