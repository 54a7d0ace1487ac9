"""layerwise as an installed package: the wheel carries the configs, and the `layerwise` command and
`python -m layerwise` work from any directory; from the repository, `python -m layerwise` is main.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the tree: an in-tree build leaves build/ and an .egg-info in the repository.
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "conf", tree / "conf", ignore=skip)
    shutil.copytree(ROOT / "src", tree / "src", symlinks=True, ignore=skip)  # src/layerwise/conf -> ../../conf
    dist = tmp_path_factory.mktemp("dist")
    res = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist,
                tree], cwd=tree, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (whl,) = dist.glob("layerwise-*.whl")
    return whl


def test_the_wheel_holds_every_config_as_a_file(wheel: Path):
    configs = {p.relative_to(ROOT / "conf").as_posix(): p.read_bytes() for p in (ROOT / "conf").rglob("*.yaml")}
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n.removeprefix("layerwise/conf/"): zf.read(n) for n in zf.namelist()
                   if n.startswith("layerwise/conf/")}
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "config.yaml" in configs and shipped == configs  # real files, the same bytes as conf/
    assert "layerwise = layerwise.__main__:main" in entry_points
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "layerwise/config/trainer_args.json" in names  # lightning.Trainer's arguments, for the config checks


def test_the_installed_command_uses_the_wheels_configs_from_any_directory(wheel: Path, tmp_path: Path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", target, wheel],
               cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    # Only the installed copy on the path (the repository's src/ is not), and run where there is no conf/.
    env = {"PYTHONPATH": str(target), "LAYERWISE_OUTPUT_ROOT": str(tmp_path / "out")}

    res = _run([target / "bin" / "layerwise", "--help"], elsewhere, env)
    assert res.returncode == 0, res.stderr[-2000:]
    groups = res.stdout.split("== Configuration groups ==")[1].split("==")[0]
    assert "method: auglocal, bp, cdni, deep_supervision" in groups and "model: " in groups and "data: " in groups

    res = _run([sys.executable, "-m", "layerwise", "--cfg", "job", "--resolve", "data=digits",
                "model=mlp"], elsewhere, env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "name: bp_mlp_digits_s0" in res.stdout and "widths:" in res.stdout

    res = _run([sys.executable, "-m", "layerwise", "--info", "searchpath"], elsewhere, env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"file://{target / 'layerwise' / 'conf'} " in res.stdout, res.stdout
    assert str(ROOT / "conf") not in res.stdout


@pytest.mark.parametrize("args", [["--epoch", "3"], ["name=" + "x" * 300]], ids=["legacy_flag", "run_name"])
def test_python_m_layerwise_is_main_py(args: list[str], tmp_path: Path):
    env = {"LAYERWISE_OUTPUT_ROOT": str(tmp_path)}
    via_main = _run([sys.executable, ROOT / "main.py", *args], ROOT, env)
    via_module = _run([sys.executable, "-m", "layerwise", *args], ROOT, env)
    assert via_main.returncode == via_module.returncode == 2, via_module.stderr[-2000:]
    assert via_module.stderr == via_main.stderr and len(via_module.stderr.strip().splitlines()) == 1
    assert via_module.stderr.startswith("error: ") and via_module.stdout == via_main.stdout == ""
