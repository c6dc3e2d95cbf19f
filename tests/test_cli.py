"""The CLI as a user runs it: a real subprocess, exit codes, files written or not."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from metalic.cli import main

CLI = [sys.executable, "-m", "metalic.cli"]


def run(*args, cwd=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_families_lists_all_six_with_ranges():
    out = run("families")
    assert out.returncode == 0
    for name in ("poisson", "heat", "advection", "reaction", "burgers", "kdv"):
        assert name in out.stdout
    assert "nu in [0.001, 0.05]" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["solve", "navier"], "unknown family 'navier'"),
        (["solve", "burgers", "--param", "nu=0.5"], "nu=0.5 is outside [0.001, 0.05]"),
        (["solve", "burgers", "--param", "mu=0.01"], "unknown parameter 'mu'"),
        (["solve", "burgers", "--param", "nu"], "--param expects NAME=VALUE"),
        (["solve", "heat", "--arm", "u,jump"], "unknown interface term 'jump'"),
        (["solve", "heat", "--adam", "-3"], "--adam must be a non-negative"),
        (["solve", "heat", "--lbfgs", "-1"], "--lbfgs must be a non-negative"),
        (["solve", "heat", "--subdomains", "0"], "--subdomains: Input should be greater than or equal to 1"),
        (["solve", "burgers", "--param", "nu=0.01", "--param", "nu=0.02"], "--param nu is given twice"),
        (["solve", "burgers", "--collocation", "100000000"], "--collocation: at most 20000 (server cap)"),
        (["solve", "poisson", "--final-time-data"], "time-dependent"),
        (["solve", "heat", "--device", "cuda:7"], "CUDA is not available"),
        (["solve", "heat", "--out", "nowhere/m.pt"], "does not exist"),
        (["frobnicate"], "invalid choice"),
        (["campaign", "heat", "--arm-kernel", "linear", "--out", "c"], "argument --arm-kernel: invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path, capsys, monkeypatch):
    # In this process (the same main() as the executable; one real subprocess is checked below).
    monkeypatch.setenv("METALIC_HOME", str(tmp_path / "home"))
    argv = [*args, "--out", str(tmp_path / "m.pt")] if "--out" not in args and args[0] == "solve" else list(args)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("metalic: error:")
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [("METALIC_COMPILE", "maybe", "'auto', 'on' or 'off'"), ("METALIC_PRIORS", "yes", "'on' or 'off'")],
)
def test_a_bad_setting_is_one_line_naming_its_variable(name, value, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METALIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(name, value)
    assert main(["serve", "--port", "1"]) == 2  # before anything starts or migrates
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"metalic: error: {name}: Input should be {message}"]
    assert list(tmp_path.iterdir()) == []


def test_the_executable_reports_bad_input_without_a_traceback(tmp_path):
    out = run("solve", "burgers", "--param", "nu=0.5", "--out", str(tmp_path / "m.pt"))
    assert out.returncode == 2
    assert (
        out.stderr.strip() == "metalic: error: --param: parameter nu=0.5 is outside [0.001, 0.05] for family 'burgers'"
    )
    assert list(tmp_path.iterdir()) == []


def test_solve_trains_saves_plots_and_predict_reads_the_model(tmp_path):
    model, figure = tmp_path / "adv.pt", tmp_path / "adv.png"
    out = run(
        "solve", "advection", "--param", "beta=2", "--arm", "u,flux", "--adam", "30", "--lbfgs", "10",
        "--collocation", "100", "--boundary", "20", "--out", str(model), "--plot", str(figure), "--quiet",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "rel L2" in out.stdout and "wall time" in out.stdout
    assert "lbfgs 10 (stop: max_iter)" in out.stdout
    assert model.stat().st_size > 0 and figure.read_bytes()[:4] == b"\x89PNG"
    pred = run("predict", str(model), "--at", "1.0,0.5", "--at", "3,0")
    assert pred.returncode == 0, pred.stderr
    rows = pred.stdout.strip().splitlines()
    assert len(rows) == 2 and rows[0].startswith("1 0.5 ")
    bad = run("predict", str(tmp_path / "missing.pt"), "--at", "1,1")
    assert bad.returncode == 2 and "does not exist" in bad.stderr


@pytest.mark.parametrize("command", [["db", "upgrade"], ["dispatcher"], ["worker"], ["campaign"]])
def test_service_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: metalic" in capsys.readouterr().out


def test_worker_check_reports_an_unreachable_store_in_one_line(capsys, monkeypatch):
    monkeypatch.setenv("METALIC_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    from metalic import settings
    from metalic.store import db

    settings.get_settings.cache_clear()
    try:
        assert main(["worker", "--check"]) == 2
    finally:
        settings.get_settings.cache_clear()
        db._stores.clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metalic: error: cannot open the database: OperationalError")


def test_a_cuda_index_is_checked_against_the_devices_this_machine_has():
    from metalic.settings import resolve_device

    if not torch.cuda.is_available():  # this CPU machine: any CUDA device is refused up front
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
        return
    count = torch.cuda.device_count()
    assert resolve_device(f"cuda:{count - 1}") == torch.device(f"cuda:{count - 1}")
    with pytest.raises(ValueError, match=f"this machine has {count} CUDA device"):
        resolve_device(f"cuda:{count}")
