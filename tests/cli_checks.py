"What the command-line tests check alike: a one-line error (no traceback) and the tiny training command."
import os

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

def one_line_error(err: str, *names) -> str:
    "The last stderr line is the command's one error line (no traceback), naming every one of `names`."
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    for n in names: assert str(n) in line, (n, line)
    return line

def smoke(root, out, *extra) -> list:
    "`diffseg-train` arguments of the smoke preset's supervised run from `root` into `out`."
    return ["--preset", "smoke", "--method", "supervised", "--root", str(root), "--out", str(out), "--quiet", *extra]
