"""``report.html``: the report's sections (:mod:`monai_emotion.study.report`) as one self-contained page.

Rendered with jinja2 from ``resources/report.html.j2``. Nothing is fetched when the page is
viewed: figures are embedded as base64 data URIs, CSS and the table sorter are inline, and each
saliency map becomes a nilearn ``view_img`` viewer (its scripts are inline too) in an iframe's
``srcdoc``. Maps larger than :data:`MAX_VIEWER_VOXELS` are block-resampled first so that the
page stays small enough to e-mail.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any

from monai_emotion.fileio import atomic_write_text

__all__ = ["write_html", "render_html", "inline_markup", "MAX_VIEWER_VOXELS"]

#: a viewer's map is resampled to at most about this many voxels (the full 1.2 mm grid has 1.1 M)
MAX_VIEWER_VOXELS = 250_000
_TEMPLATE = "report.html.j2"
#: nilearn's viewer page names its favicon by URL; a viewed report must fetch nothing
_REMOTE_LINK = re.compile(r"<link[^>]*href=\"https?://[^\"]*\"[^>]*>", re.IGNORECASE)
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def inline_markup(text: str) -> str:
    """The report's Markdown subset as HTML: ``**bold**``, ```code```, and lines starting ``- `` as a list.

    The text is escaped first, so no HTML of a summary string reaches the page.
    """
    def spans(line: str) -> str:
        line = html.escape(line, quote=False)
        line = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", line)
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", line)

    out, items = [], []
    for line in text.split("\n"):
        if line.startswith("- "):
            items.append(f"<li>{spans(line[2:])}</li>")
            continue
        if items:
            out.append("<ul>" + "".join(items) + "</ul>")
            items = []
        out.append(f"<p>{spans(line)}</p>")
    if items:
        out.append("<ul>" + "".join(items) + "</ul>")
    return "".join(out)


def _data_uri(path: Path) -> str | None:
    """A file as a ``data:`` URI (None when it is missing)."""
    if not path.is_file():
        return None
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _viewer_image(path: Path) -> Any:
    """The map, block-resampled when it has more than :data:`MAX_VIEWER_VOXELS` voxels."""
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    factor = math.ceil((math.prod(img.shape[:3]) / MAX_VIEWER_VOXELS) ** (1 / 3))
    if factor <= 1:
        return img
    from nilearn.image import resample_img

    shape = [math.ceil(n / factor) for n in img.shape[:3]]
    return resample_img(img, target_affine=img.affine @ np.diag([factor, factor, factor, 1]), target_shape=shape,
                        interpolation="continuous", force_resample=True, copy_header=True)


def _viewer(root: Path, viewer: dict[str, Any]) -> dict[str, Any]:
    """A nilearn ``view_img`` page of one map (no background: the maps are in the data's own space)."""
    path = root / viewer["path"]
    if not path.is_file():
        return {**viewer, "srcdoc": None}
    import warnings

    from nilearn.plotting import view_img

    with warnings.catch_warnings():  # nilearn's notes on the missing background and on resampling
        warnings.simplefilter("ignore")
        page = view_img(_viewer_image(path), bg_img=False, title=viewer["title"], black_bg=True,
                        symmetric_cmap=True, width_view=560).get_standalone()
    return {**viewer, "srcdoc": _REMOTE_LINK.sub("", page)}


def render_html(title: str, sections: list[dict[str, Any]], root: Path) -> str:
    """The page: every section, its figures embedded and its maps as viewers."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("monai_emotion", "resources"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True))
    env.filters["markup"] = inline_markup  # escapes first; the template marks the result safe
    shown = [{**s, "figures": [{**f, "src": _data_uri(root / f["path"]) if f.get("path") else None}
                               for f in s.get("figures", [])],
              "viewers": [_viewer(root, v) for v in s.get("viewers", [])]} for s in sections]
    return env.get_template(_TEMPLATE).render(title=title, sections=shown)


def write_html(title: str, sections: list[dict[str, Any]], root: Path) -> Path:
    """Write ``root/report.html``; its path."""
    path = Path(root) / "report.html"
    atomic_write_text(path, render_html(title, sections, Path(root)))
    return path
