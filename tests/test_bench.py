"Benchmarks: the speed rows and their ratio, isolation, the ACDC driver (train, resume, reuse, summary), label efficiency, the demo timing, the CLI."
from diffseg_edu.core import cpu_kind
import json
import torch

import pytest

from diffseg_edu.bench import unseen_patients
from diffseg_edu.bench import DEMO_GOALS, PUBLISHED, SPEED_ROWS, acdc_table, demo_benchmark, demo_table, label_efficiency, run_name, speed_benchmark, speed_table, summarise_demo, summarise_runs, train_or_reuse, write_speed
from diffseg_edu.cli import bench_main as main
from diffseg_edu.train import ConfigError, train
from diffseg_edu.config import make_config
from diffseg_edu.checkpoints import read_checkpoint


def test_speed_rows_ratio_and_files(tmp_path):
    res = speed_benchmark(methods=("supervised", "diffrect"), img_size=32, n_iters=2, warmup=1, isolate=False, progress=False)
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["floor", "supervised", "diffrect"]
    assert rows["floor"]["ratio"] == 1.0
    for r in rows.values():
        assert r["min_s"] <= r["median_s"] <= r["max_s"] and r["ratio"] == pytest.approx(r["median_s"] / rows["floor"]["median_s"])
    assert rows["supervised"]["images_per_s"] == pytest.approx(3 / rows["supervised"]["median_s"])    # labelled rows only
    assert rows["diffrect"]["images_per_s"] == pytest.approx(6 / rows["diffrect"]["median_s"])
    path = write_speed({**res, "command": "test"}, tmp_path)
    assert path.name == f"speed_cpu-{cpu_kind()}_32.json" and json.loads(path.read_text())["rows"][2]["method"] == "diffrect"
    assert len(speed_table(res).splitlines()) == 2 + 3


def test_speed_isolated_processes_report_their_own_peak(tmp_path):
    res = speed_benchmark(methods=("supervised",), img_size=32, n_iters=1, warmup=0, isolate=True, progress=False)
    assert [r["method"] for r in res["rows"]] == ["floor", "supervised"]
    assert all(r["peak_mb"] > 50 and r["memory"] == "process peak RSS" for r in res["rows"])


def test_speed_fails_before_any_work():
    with pytest.raises(ConfigError, match="img_size=40"):
        speed_benchmark(img_size=40, isolate=True, progress=False)


def test_summarise_runs_mean_and_sample_std():
    rec = lambda m, s, d: {"method": m, "seed": s, "wall_s": 60.0, "splits": {"val": {"dice": d, "jaccard": d / 2, "hd95": None, "asd": 1.0}}}
    summary = summarise_runs([rec("a", 0, 0.5), rec("a", 1, 0.7), rec("b", 0, 0.9)])
    a, b = summary
    assert a["n"] == 2 and a["metrics"]["dice"] == pytest.approx([0.6, 0.1414213], abs=1e-6)     # sample std of (0.5, 0.7)
    assert a["metrics"]["hd95"] == [None, None]
    assert b["metrics"]["dice"] == [0.9, None]                                                    # one seed: no spread
    table = acdc_table({"settings": {"labeled_patients": 3, "iters": 10, "img_size": 32}, "summary": summary})
    assert "0.6000 ± 0.1414" in table and "| – |" in table and "| 0.9000 |" in table


def test_label_efficiency_groups_finished_runs(tmp_path):
    def fake(name, method, n, dice, finished=True):
        d = tmp_path / name; d.mkdir()
        (d / "config.json").write_text(json.dumps({"method": method, "preset": "cpu", "img_size": 128, "iters": 300, "labeled_patients": n}))
        if finished: (d / "metrics.json").write_text(json.dumps({"val": {"mean": {"dice": dice}}}))
    fake("a1", "diffrect", 1, 0.5); fake("a2", "diffrect", 1, 0.7); fake("b", "diffrect", 3, 0.8); fake("c", "supervised", 3, 0.6)
    fake("d", "supervised", 7, 0.0, finished=False)
    pts = {(p["method"], p["labeled_patients"]): p for p in label_efficiency(tmp_path)}
    assert set(pts) == {("diffrect", 1), ("diffrect", 3), ("supervised", 3)}
    assert pts[("diffrect", 1)]["n"] == 2 and pts[("diffrect", 1)]["val_dice"] == pytest.approx(0.6)


def test_train_or_reuse_resumes_then_reuses(synthetic_root, tmp_path):
    cfg = make_config("smoke", root=str(synthetic_root), method="fixmatch")
    folder = tmp_path / run_name("fixmatch", 2, 0)
    train(cfg, folder, progress=False, stop_after=3)                      # an interrupted run
    first = train_or_reuse(cfg, folder)
    assert first["status"] == "resumed" and read_checkpoint(folder / "last.pt")["iteration"] == cfg.iters
    # the run's time counts every call: the interrupted one's seconds come from last.pt
    timing = json.loads((folder / "timing.json").read_text())
    assert timing["earlier_s"] > 0 and timing["wall_s"] == pytest.approx(timing["call_s"] + timing["earlier_s"])
    assert timing["train_s"] > timing["earlier_s"] and read_checkpoint(folder / "last.pt")["seconds"] >= timing["train_s"] - 5
    again = train_or_reuse(cfg, folder)
    assert again["status"] == "reused" and again["splits"] == first["splits"]
    with pytest.raises(ConfigError, match="another configuration"):
        train_or_reuse(make_config("smoke", root=str(synthetic_root), method="supervised"), folder)


def test_a_resume_from_a_file_without_seconds_times_only_its_call(synthetic_root, tmp_path):
    "last.pt written before it recorded the training time: the earlier time is unknown, not zero."
    cfg = make_config("smoke", root=str(synthetic_root), method="supervised")
    folder = tmp_path / run_name("supervised", 2, 0)
    train(cfg, folder, progress=False, stop_after=3)
    old = torch.load(folder / "last.pt", weights_only=False)
    del old["seconds"]
    torch.save(old, folder / "last.pt")
    train_or_reuse(cfg, folder)
    timing = json.loads((folder / "timing.json").read_text())
    assert timing["earlier_s"] is None and timing["train_s"] is None and timing["wall_s"] is None
    assert train_or_reuse(cfg, folder)["wall_s"] is None                  # the table shows no time, not a part of one


def test_acdc_command_end_to_end_on_the_phantom(synthetic_root, tmp_path, capsys):
    out = tmp_path / "acdc"
    argv = ["acdc", "--root", str(synthetic_root), "--labeled-patients", "2", "--methods", "supervised", "fixmatch", "--seeds", "0", "1",
            "--iters", "2", "--img-size", "32", "--val-every", "1", "--out", str(out)]
    assert main(argv) == 0
    # another budget than the preset's 1,200 iterations: its own table, refine_start at the same fraction of the run
    assert "refine_start 100 → 0 (the same fractions of the run)" in capsys.readouterr().err
    res = json.loads((out / "acdc_p2_it2.json").read_text())
    assert res["command"] == "diffseg-bench " + " ".join(argv)
    assert res["settings"]["refine_start"] == 0 and res["settings"]["val_every"] == 1       # --val-every given: kept
    assert res["settings"]["iters"] == 2 and res["settings"]["optimizer"] == make_config("cpu").optimizer
    assert [(r["method"], r["seed"], r["status"]) for r in res["records"]] == [("supervised", 0, "trained"), ("supervised", 1, "trained"),
                                                                              ("fixmatch", 0, "trained"), ("fixmatch", 1, "trained")]
    val = {s["method"]: s for s in res["summary"] if s["split"] == "val"}
    assert val["supervised"]["n"] == 2 and val["supervised"]["metrics"]["dice"][1] is not None
    assert {s["split"] for s in res["summary"]} == {"val", "test"}              # every split with a list is evaluated
    assert (out / "runs" / "fixmatch_p2_s1" / "best.pt").exists() and (out / "label_efficiency.png").exists()
    eff = json.loads((out / "label_efficiency.json").read_text())
    assert {p["method"] for p in eff["points"]} == {"supervised", "fixmatch"} and eff["published"][0]["dice"] == PUBLISHED[0]["dice"]
    assert "| supervised | val | 2 |" in (out / "acdc_p2_it2.md").read_text()
    assert main(argv) == 0                                                      # a rerun reuses every finished run
    assert all(r["status"] == "reused" for r in json.loads((out / "acdc_p2_it2.json").read_text())["records"])
    # the budget study reads that table (and the runs' curves) and writes its table and plot
    assert main(["budget", str(out / "acdc_p2_it2.json"), "--out", str(out)]) == 0
    budget = json.loads((out / "budget.json").read_text())
    assert len(budget["curves"]) == 4 and budget["curves"][0]["points"][-1]["iteration"] == 2
    assert "| supervised | val | " in (out / "budget.md").read_text() and (out / "budget.png").stat().st_size > 0
    assert main(["budget", str(out / "nowhere.json"), "--out", str(out)]) == 2
    assert "nowhere.json: no such acdc result file" in capsys.readouterr().err


def test_cli_bad_input_exits_2(synthetic_root, tmp_path, capsys):
    assert main(["speed", "--img-size", "40", "--out", str(tmp_path)]) == 2
    assert "img_size=40" in capsys.readouterr().err
    assert main(["acdc", "--root", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert main(["acdc", "--root", str(synthetic_root), "--labeled-patients", "99", "--iters", "1", "--out", str(tmp_path)]) == 2
    # no --dataset: the preset's (xa-cpu trains on the varied angiography phantom's 24 training sequences)
    assert main(["acdc", "--preset", "xa-cpu", "--labeled-patients", "99", "--iters", "1", "--out", str(tmp_path)]) == 2
    assert "the list has 24 (v00 … v23)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["speed", "--methods", "meanteacher"])
    assert SPEED_ROWS[0] == "floor"


def test_summarise_demo_counts_goals_and_failures():
    rec = lambda s, w, d: {"variant": "a", "seed": s, "rc": 0, "wall_s": w, "peak_rss_mb": 900.0, "best_iteration": 150,
                           "splits": {"val": {"dice": d}, "test": {"dice": d - 0.01}}}
    failed = {"variant": "a", "seed": 3, "rc": 1, "wall_s": 5.0, "peak_rss_mb": None, "error": "boom"}
    goals = {"wall_s": 180.0, "val_dice": 0.85}
    (a,) = summarise_demo([rec(0, 170.0, 0.86), rec(1, 190.0, 0.87), rec(2, 150.0, 0.84), failed], goals)
    assert (a["n"], a["failed"], a["met_time"], a["met_dice"], a["met_both"]) == (4, 1, 2, 2, 1)   # the failed run meets nothing
    assert a["val_dice"] == pytest.approx([0.8566667, 0.0152753], abs=1e-6) and a["peak_rss_mb"] == 900.0
    assert a["wall_s"] == pytest.approx([128.75, 5.0, 190.0])


def test_demo_command_times_the_command_in_a_child(tmp_path):
    "`diffseg-bench demo`: one child run (the function itself is shown in reference/bench), its files, never twice into one folder."
    assert main(["demo", "--preset", "smoke", "--seeds", "0", "--overwrite", "--unseen-seed", "99", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "smoke.json").read_text())
    (rec,) = res["records"]
    assert 0 <= rec["splits"]["unseen"]["dice"] <= 1 and res["settings"]["unseen_seed"] == 99    # patients never trained on
    assert "unseen Dice" in (tmp_path / "smoke.md").read_text()
    assert rec["rc"] == 0 and rec["best_iteration"] is not None and 0 <= rec["splits"]["val"]["dice"] <= 1 and rec["wall_s"] > 0
    if rec["peak_rss_mb"] is not None: assert rec["peak_rss_mb"] > 100          # the child's memory (torch alone is more)
    (s,) = res["summary"]
    assert s["met_time"] == 1 and s["met_dice"] == int(rec["splits"]["val"]["dice"] >= DEMO_GOALS["demo"]["val_dice"])
    assert res["settings"]["config"]["preset"] == "smoke" and len(demo_table(res).splitlines()) == 3 + 1 + 3
    with pytest.raises(ConfigError, match="need a phantom data set"): unseen_patients("acdc", 99)
    assert res["command"].startswith("diffseg-bench demo") and (tmp_path / "smoke.md").exists()
    with pytest.raises(ConfigError, match="exists"):                           # a timing is never taken twice into one folder
        demo_benchmark(seeds=(0,), preset="smoke", out=tmp_path)
    assert main(["demo", "--preset", "smoke", "--seeds", "0", "--out", str(tmp_path)]) == 2                  # exists: exit 2


def test_module_entry_point_reaches_every_command(tmp_path):
    "`python -m diffseg_edu.bench` runs main after every definition (a bad preset must reach demo_benchmark's check: exit 2)."
    import subprocess, sys
    r = subprocess.run([sys.executable, "-m", "diffseg_edu.cli", "bench", "demo", "--preset", "nope", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown preset 'nope'" in r.stderr, r.stderr[-2000:]


def _tiny_notebook(path, source: str):
    cell = {"cell_type": "code", "id": "a", "metadata": {}, "execution_count": None, "outputs": [], "source": source}
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [cell]}))
    return path


def test_notebooks_command_times_writes_and_judges(tmp_path, capsys):
    ok = _tiny_notebook(tmp_path / "ok.ipynb", "x = 1")
    bad = _tiny_notebook(tmp_path / "bad.ipynb", "raise ValueError('broken lesson')")
    out = tmp_path / "nb"
    assert main(["notebooks", str(ok), "--out", str(out)]) == 0                      # within the limit: 0
    res = json.loads((out / "notebooks.json").read_text())
    assert res["rows"][0]["notebook"] == "ok.ipynb" and res["rows"][0]["error"] is None and "| ok.ipynb |" in (out / "notebooks.md").read_text()
    assert main(["notebooks", str(ok), str(bad), "--out", str(out)]) == 1           # a failing lesson: 1, its cell named
    row = json.loads((out / "notebooks.json").read_text())["rows"][1]
    assert row["error"].startswith("cell [0] `raise ValueError('broken lesson')`: ValueError: broken lesson")
    assert main(["notebooks", str(ok), "--limit", "0.001", "--out", str(out)]) == 1  # over the limit: 1
    assert main(["notebooks", str(tmp_path / "missing.ipynb"), "--out", str(out)]) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_diffseg_bench_inference(synthetic_root, tmp_path, capsys):
    "Timing evaluation is diffseg-bench's job (diffseg-eval only evaluates)."
    out = tmp_path / "bench.json"
    assert main(["inference", "--dataset", "synthetic", "--root", str(synthetic_root), "--img-size", "64", "--n-cases", "1", "--out", str(out)]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert [r["what"] for r in lines] == ["inference", "metrics"] and lines[0]["slices_per_s"] > 0
    stored = json.loads(out.read_text())
    assert stored["machine"]["cores"] >= 1 and stored["command"].startswith("diffseg-bench inference")


def test_diffseg_bench_augment(synthetic_root, tmp_path, capsys):
    assert main(["augment", "--img-size", "64", "--batch-size", "4", "--iters", "3", "--root", str(synthetic_root)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[0])["slices_per_s"] > 0 and "loader+augment" in lines[-1] and "slices/s" in lines[-1]

def test_profile_command_on_a_ci_size_iteration(tmp_path, capsys):
    "`diffseg-bench profile`: the groups and the top operations of one iteration, printed and stored per kind of CPU."
    assert main(["profile", "--method", "diffrect", "--img-size", "32", "--iters", "1", "--warmup", "1", "--top", "4",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| dropout |" in out and "| convolution |" in out
    res = json.loads((tmp_path / f"profile_diffrect_fp32_{cpu_kind()}_32.json").read_text())
    assert len(res["top"]) == 4 and {g["group"] for g in res["groups"]} >= {"convolution", "casts", "other"}
