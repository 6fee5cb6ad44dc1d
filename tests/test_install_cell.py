"""The notebooks' first code cell, the Colab install cell: the same in every lesson, run as it stands (no `eval: false`,
no commented-out command), and its logic tried in a fresh virtual environment against this checkout."""
import json, os, shutil, site, subprocess, sys, venv
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parent.parent
LESSONS = sorted((REPO / "nbs").glob("[0-9]*.ipynb"))


def install_cell(nb: Path) -> str:
    "The first code cell after `default_exp` (a lesson without a module has none): the install cell."
    cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"
             and not "".join(c["source"]).startswith("#| default_exp")]
    return "".join(cells[0]["source"])


def test_every_lesson_starts_with_the_same_runnable_install_cell():
    cells = {nb.name: install_cell(nb) for nb in LESSONS}
    assert len(set(cells.values())) == 1, "the install cells differ"
    cell = cells[LESSONS[0].name]
    assert "eval: false" not in cell and "# !pip" not in cell and "DIFFSEG_INSTALL_FROM" in cell
    compile(cell, "install cell", "exec")                       # plain Python: no magics, so it runs anywhere


def test_the_last_cell_exports_only_inside_the_repository():
    for nb in LESSONS:
        last = "".join(json.loads(nb.read_text())["cells"][-1]["source"])
        assert 'Path("../settings.ini").is_file()' in last and "nbdev_export()" in last, nb.name


def _fresh_venv(path: Path) -> Path:
    """A new virtual environment without this library. Its dependencies (torch, nbdev, setuptools …) are found in the
    current environment's site-packages, appended to its path by a `.pth` file, so nothing is downloaded; the folders
    are added as plain paths, so the current environment's editable install of diffseg_edu is not."""
    venv.create(path, with_pip=True)
    py = path / "bin" / "python"
    own = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                         text=True, check=True).stdout.strip()
    (Path(own) / "_diffseg_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return py


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX venv layout")
def test_install_cell_installs_from_the_checkout_in_a_fresh_venv(tmp_path):
    pytest.importorskip("setuptools")
    py = _fresh_venv(tmp_path / "venv")
    # a copy of the checkout's package files, so that the build leaves nothing in the checkout itself
    source = tmp_path / "checkout"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "results", "nbs",
                                                                 "tests", "__pycache__", "_proc", "_docs"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # offline: no index, no dependencies (they are visible already), no isolated build (setuptools is visible already)
    env.update(DIFFSEG_INSTALL_FROM=str(source), PIP_NO_INDEX="1", PIP_NO_DEPS="1", PIP_NO_BUILD_ISOLATION="0",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    run = lambda code, **kw: subprocess.run([py, "-c", code], cwd=tmp_path, env={**env, **kw}, capture_output=True,
                                           text=True, timeout=300)
    before = run("import diffseg_edu")
    assert before.returncode != 0 and "No module named 'diffseg_edu'" in before.stderr
    cell = install_cell(LESSONS[0])
    first = run(cell)
    assert first.returncode == 0, first.stderr[-2000:]
    where = first.stdout.strip().splitlines()[-1]
    assert where.startswith("diffseg_edu ") and str(tmp_path / "venv") in where, where
    # the installed library works: a lesson's imports resolve against it
    lesson = run("import diffseg_edu.data, diffseg_edu.train; print(diffseg_edu.train.__file__)")
    assert lesson.returncode == 0 and str(tmp_path / "venv") in lesson.stdout, lesson.stderr[-2000:]
    # run again, the cell installs nothing: a source that does not exist would fail if it tried
    again = run(cell, DIFFSEG_INSTALL_FROM=str(tmp_path / "no-such-source"))
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr[-2000:]
