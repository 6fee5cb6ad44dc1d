"""Generate README.md from nbs/index.ipynb (Quarto, which `nbdev_readme` needs, is not always available).

    python tools/make_readme.py           # write README.md
    python tools/make_readme.py --check   # exit 1 if README.md is out of date
"""
import re, sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parent.parent
HEADER = "<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n"

def readme_text() -> str:
    "Markdown of index.ipynb without hidden cells, nbdev directives and outputs."
    nb = nbformat.read(ROOT / "nbs" / "index.ipynb", as_version=4)
    cells = []
    for c in nb.cells:
        if re.search(r"^#\|\s*(hide|exporti?)\b", c.source, re.M):
            continue
        c.source = "\n".join(l for l in c.source.splitlines() if not l.startswith("#|"))
        if c.cell_type == "code": c.outputs = []
        cells.append(c)
    nb.cells = cells
    body, _ = MarkdownExporter().from_notebook_node(nb)
    return HEADER + re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"

if __name__ == "__main__":
    text, path = readme_text(), ROOT / "README.md"
    if "--check" in sys.argv:
        if not path.is_file() or path.read_text() != text:
            print("README.md is out of date: run `python tools/make_readme.py`"); sys.exit(1)
        print("README.md is up to date")
    else:
        path.write_text(text); print(f"wrote {path}")
