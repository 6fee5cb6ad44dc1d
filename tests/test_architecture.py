"The module chain: every module imports only modules of earlier notebooks, and never another module's private name."
import ast, json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

def chain() -> list:
    "Module names in notebook order (each notebook's `#| default_exp`)."
    order = []
    for nb in sorted((REPO / "nbs").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and src.startswith("#| default_exp"):
                order.append(src.split()[2]); break
    return order

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

def test_chain_is_the_documented_one():
    assert chain() == ["data", "unet", "metrics", "losses", "diffusion", "prototypes", "train", "bench"]

def test_imports_run_down_the_chain_and_skip_private_names():
    order, problems = chain(), []
    for i, module in enumerate(order):
        for line, target, names in imports(module):
            if target not in order[:i]:
                problems.append(f"{module}.py:{line} imports {target}, which is not an earlier module of {order}")
            problems += [f"{module}.py:{line} imports the private name {target}.{n}" for n in names if n.startswith("_")]
    assert not problems, "\n".join(problems)

def test_library_lines_fit_in_120_characters():
    "Every line of the library within 120 characters, except the first line of nbdev's generated `__all__` (ruff allows it 130)."
    long = []
    for path in sorted((REPO / "diffseg_edu").glob("*.py")):
        if path.name == "_modidx.py": continue
        long += [f"{path.name}:{i} ({len(line)})" for i, line in enumerate(path.read_text().split("\n"), 1)
                 if len(line) > 120 and not line.startswith("__all__ = ")]
    assert not long, long
