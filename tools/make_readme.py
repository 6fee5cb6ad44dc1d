"""Generate README.md from nbs/index.ipynb (Quarto, which `nbdev_readme` needs, is not always available), and
results/index.txt, the listing of the stored results that lets `stored_results` glob them where there is no checkout.

    python tools/make_readme.py           # write README.md and results/index.txt
    python tools/make_readme.py --check   # exit 1 if either is out of date
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
        c.source = "\n".join(line for line in c.source.splitlines() if not line.startswith("#|"))
        if c.cell_type == "code": c.outputs = []
        cells.append(c)
    nb.cells = cells
    body, _ = MarkdownExporter().from_notebook_node(nb)
    return HEADER + re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"

def index_text() -> str:
    """results/index.txt: every stored result's path, one per line; files git ignores (checkpoints a benchmark left
    beside the committed ones) are not stored results, so a clean clone writes the same index."""
    import subprocess
    from diffseg_edu.core import results_index
    names = results_index(ROOT / "results")
    ignored = set()
    try:
        out = subprocess.run(["git", "check-ignore", "--stdin"], cwd=ROOT, capture_output=True, text=True,
                             input="".join(f"results/{n}\n" for n in names))
        ignored = {line[len("results/"):] for line in out.stdout.splitlines()} if out.returncode in (0, 1) else set()
    except OSError: pass                                    # no git: list everything
    return "".join(f"{n}\n" for n in names if n not in ignored)

if __name__ == "__main__":
    stale = []
    for path, text in ((ROOT / "README.md", readme_text()), (ROOT / "results" / "index.txt", index_text())):
        if "--check" in sys.argv:
            if not path.is_file() or path.read_text() != text: stale.append(path.relative_to(ROOT).as_posix())
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"{', '.join(stale)} out of date: run `python tools/make_readme.py`")
        sys.exit(1)
    if "--check" in sys.argv: print("README.md and results/index.txt are up to date")
