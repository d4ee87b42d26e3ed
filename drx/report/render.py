"""The report's templates and static files: Jinja2 over the package folder ``drx/report/templates/``.

Three environments, one per output format, each with the filters its templates use:

* Markdown (``*.md.j2``): ``minus`` (ASCII ``-`` → U+2212, which reads as a real minus sign),
  ``md_escape`` (``|`` inside a cell) and ``md_grid`` (a padded pipe table);
* LaTeX (``*.tex.j2``): ``\\VAR{...}`` / ``\\BLOCK{...}`` / ``\\#{...}`` delimiters, so the
  template's own braces stay LaTeX's; ``tex`` escapes text (:func:`latex_escape`);
* HTML (``*.html.j2``): autoescaped; ``minus`` as above.

Templates see numbers already formatted as text (:func:`drx.report.tables.cell_view`); they only
typeset them. Undefined names are errors (``StrictUndefined``), never silently empty cells.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Sequence

import jinja2

__all__ = ["latex_escape", "md_grid", "render", "static_text"]

_PACKAGE = "drx.report"
_FOLDER = "templates"

# LaTeX: characters with a special meaning, and the non-ASCII symbols drx labels use.
_LATEX_MAP = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "→": r"$\rightarrow$",
    "←": r"$\leftarrow$",
    "−": r"$-$",
    "–": "--",
    "—": "---",
    "±": r"$\pm$",
    "×": r"$\times$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "Δ": r"$\Delta$",
    "λ": r"$\lambda$",
    "α": r"$\alpha$",
    "<": r"$<$",
    ">": r"$>$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters and map drx's symbols (→, Δ, ±, …) to math mode."""
    return "".join(_LATEX_MAP.get(ch, ch) for ch in str(text))


def _minus(text: Any) -> str:
    return str(text).replace("-", "−")


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|")


def md_grid(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown pipe table from ``rows`` (the first is the header), padded to column width so
    it also reads as plain text in a terminal; the first column left-aligned, the others right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "|" + "|".join(
        ":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    ) + "|"
    lines = ["| " + " | ".join(x.ljust(w) for x, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join([lines[0], rule, *lines[1:]])


def _environment(**options: Any) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(_PACKAGE, _FOLDER),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.do"],
        **options,
    )
    env.filters.update(minus=_minus, md_escape=_md_escape, md_grid=md_grid, tex=latex_escape)
    return env


_ENVIRONMENTS = {
    "md": _environment(autoescape=False),
    "tex": _environment(
        autoescape=False,
        block_start_string=r"\BLOCK{",
        block_end_string="}",
        variable_start_string=r"\VAR{",
        variable_end_string="}",
        comment_start_string=r"\#{",
        comment_end_string="}",
    ),
    "html": _environment(autoescape=True),
}


def render(name: str, **context: Any) -> str:
    """Render the template ``drx/report/templates/<name>`` (``table.md.j2``...) with ``context``.

    The format, hence the environment, is the extension before ``.j2``. Raises
    ``jinja2.UndefinedError`` when the template uses a name the context lacks.
    """
    fmt = name.removesuffix(".j2").rsplit(".", 1)[-1]
    return _ENVIRONMENTS[fmt].get_template(name).render(**context)


def static_text(name: str) -> str:
    """The text of a static package file under ``drx/report/templates/`` (e.g. ``report.css``)."""
    return resources.files(_PACKAGE).joinpath(_FOLDER).joinpath(name).read_text(encoding="utf-8")
