"""The layout of the project: lessons and reference notebooks apart, one module per notebook, imports that run one way
down the chain of modules, never another module's private name; lessons and modules of a readable size."""
import ast, json, re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NBS = REPO / "nbs"

# The module chain, bottom first: a module imports only modules before it (the README's contributor table).
CHAIN = ["core", "data", "frames", "phantoms", "datasets", "losses", "unet", "checkpoints", "metrics", "diffusion",
         "prototypes", "noise", "config", "engine", "train", "bench", "budget", "cli"]
LESSON_CELLS, LESSON_WORDS, FIRST_FIGURE, MODULE_LINES = 90, 1800, 25, 800

def notebooks() -> list:
    return sorted(p for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)

def lessons() -> list:
    "The lessons: `nbs/NN_name.ipynb` (the reference notebooks live in `nbs/reference/`)."
    return sorted(NBS.glob("[0-9][0-9]_*.ipynb"))

def default_exp(nb: Path):
    "The module a notebook exports to (`#| default_exp`), or None."
    for cell in json.loads(nb.read_text())["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and src.startswith("#| default_exp"): return src.split()[2]

def prose_words(cells: list) -> int:
    "Words of the markdown cells, fenced code blocks left out."
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return len(re.sub(r"```.*?```", " ", text, flags=re.S).split())

def first_figure(cells: list):
    "Index of the first cell whose stored output is an image, or None."
    for i, c in enumerate(cells):
        for o in c.get("outputs", []):
            if any(k.startswith("image/") for k in o.get("data", {})): return i

def imports(module: str) -> list:
    "`(line, imported module, names)` of every import of a package module in `module`, at any depth (functions included)."
    tree = ast.parse((REPO / "diffseg_edu" / f"{module}.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("diffseg_edu")):
            target = (node.module or "").removeprefix("diffseg_edu").lstrip(".")
            found.append((node.lineno, target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".", 1)[1], []) for a in node.names if a.name.startswith("diffseg_edu.")]
    return found

def test_every_module_comes_from_one_notebook():
    sources = {}
    for nb in notebooks():
        if (m := default_exp(nb)): sources.setdefault(m, []).append(nb.relative_to(NBS).as_posix())
    assert {m: len(v) for m, v in sources.items()} == {m: 1 for m in CHAIN}, sources
    modules = {p.stem for p in (REPO / "diffseg_edu").glob("*.py")} - {"__init__", "_modidx"}
    assert modules == set(CHAIN), modules ^ set(CHAIN)

def test_engineering_lives_in_reference_notebooks():
    "Lessons export only the modules they teach; every other module comes from `nbs/reference/`."
    taught = {default_exp(nb) for nb in lessons()} - {None}
    assert taught == {"data", "losses", "unet", "metrics", "diffusion", "prototypes", "train"}, taught

def test_imports_run_down_the_chain_and_skip_private_names():
    "No import runs back up the chain (so the graph has no cycle), and none names another module's private name."
    problems = []
    for i, module in enumerate(CHAIN):
        for line, target, names in imports(module):
            if target not in CHAIN[:i]:
                problems.append(f"{module}.py:{line} imports {target}, which is not an earlier module of {CHAIN}")
            problems += [f"{module}.py:{line} imports the private name {target}.{n}" for n in names if n.startswith("_")]
    assert not problems, "\n".join(problems)

def test_lessons_are_lesson_sized():
    f"Every lesson: at most {LESSON_CELLS} cells, {LESSON_WORDS} words of prose, and a figure before cell {FIRST_FIGURE}."
    problems = []
    for nb in lessons():
        cells = json.loads(nb.read_text())["cells"]
        if len(cells) > LESSON_CELLS: problems.append(f"{nb.name}: {len(cells)} cells (at most {LESSON_CELLS})")
        if (w := prose_words(cells)) > LESSON_WORDS: problems.append(f"{nb.name}: {w} words of prose (at most {LESSON_WORDS})")
        fig = first_figure(cells)
        if fig is None or fig >= FIRST_FIGURE: problems.append(f"{nb.name}: first figure at cell {fig} (before {FIRST_FIGURE})")
    assert not problems, "\n".join(problems)

def test_modules_are_readable_in_size():
    long = [f"{p.name}: {n} lines" for p in sorted((REPO / "diffseg_edu").glob("*.py"))
            if p.name != "_modidx.py" and (n := len(p.read_text().splitlines())) > MODULE_LINES]
    assert not long, f"over {MODULE_LINES} lines: {long}"

def test_library_lines_fit_in_120_characters():
    "Every line of the library within 120 characters, except the first line of nbdev's generated `__all__` (ruff allows it 130)."
    long = []
    for path in sorted((REPO / "diffseg_edu").glob("*.py")):
        if path.name == "_modidx.py": continue
        long += [f"{path.name}:{i} ({len(line)})" for i, line in enumerate(path.read_text().split("\n"), 1)
                 if len(line) > 120 and not line.startswith("__all__ = ")]
    assert not long, long
