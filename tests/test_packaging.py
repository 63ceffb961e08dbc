"""Packaging: a wheel ships every preset, and seqrl.presets finds them in a wheel as in a checkout.

The presets are top-level folders of the repository (agents/, envs/); pyproject.toml maps them into the
package as seqrl/_presets/agents and seqrl/_presets/envs. These tests build a real wheel (pip, isolated
build, a few seconds) from a copy of the project's sources and compare what it holds with the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import seqrl.presets as presets

REPO = Path(__file__).resolve().parent.parent
PRESET_FOLDERS = ("agents", "envs")


def repo_presets(folder: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((REPO / folder).glob("*.toml"))}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built by pip from a copy of the sources (so the build leaves nothing in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in ("seqrl", *PRESET_FOLDERS):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for lic in REPO.glob("LICEN[CS]E*"):
        shutil.copy2(lic, src / lic.name)
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    (whl,) = out.glob("seqrl-*.whl")
    return whl


def test_repository_has_presets():
    for folder in PRESET_FOLDERS:
        assert repo_presets(folder), f"no {folder}/*.toml in the repository"


def test_wheel_ships_every_preset_byte_for_byte(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        for folder in PRESET_FOLDERS:
            prefix = f"seqrl/_presets/{folder}/"
            shipped = {n[len(prefix):]: z.read(n) for n in names if n.startswith(prefix) and n.endswith(".toml")}
            expected = repo_presets(folder)
            assert sorted(shipped) == sorted(expected), f"{folder}: repository {sorted(expected)}, wheel {sorted(shipped)}"
            for name, data in expected.items():
                assert shipped[name] == data, f"{folder}/{name} differs in the wheel"
        # the gymnasium envs package is shipped as code, untouched by the preset mapping
        assert "seqrl/envs/__init__.py" in names


def test_installed_wheel_reads_its_own_presets(wheel, tmp_path):
    """seqrl.presets, imported from the unpacked wheel, reads seqrl/_presets/ there: the checkout is not on
    the path (the command runs outside it with -I, which also drops PYTHONPATH and user site-packages),
    so this is what an install from the wheel sees."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import seqrl.presets as p; "
            "print(p.AGENTS_DIR); print(p.ENVS_DIR); "
            "print(','.join(sorted(x.name for x in p.AGENTS_DIR.glob('*.toml')))); "
            "print(','.join(sorted(x.name for x in p.ENVS_DIR.glob('*.toml'))))")
    run = subprocess.run([sys.executable, "-I", "-c", code, str(site)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    agents_dir, envs_dir, agents, envs = run.stdout.strip().splitlines()[-4:]
    assert Path(agents_dir) == (site / "seqrl" / "_presets" / "agents").resolve()
    assert Path(envs_dir) == (site / "seqrl" / "_presets" / "envs").resolve()
    assert agents.split(",") == sorted(repo_presets("agents"))
    assert envs.split(",") == sorted(repo_presets("envs"))


def test_checkout_reads_the_repository_folders():
    """In a checkout (editable install, tests) there is no shipped copy: the presets are the repository's
    folders, so an edited or new preset is seen at once."""
    if presets.SHIPPED.is_dir():
        pytest.skip("seqrl is imported from an installed wheel, not from a checkout")
    assert presets.AGENTS_DIR == REPO / "agents"
    assert presets.ENVS_DIR == REPO / "envs"


def test_every_subpackage_is_listed_in_pyproject():
    """Mapping the preset folders needs an explicit package list in pyproject.toml: a subpackage missing
    from it would be left out of the wheel without an error."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(d.relative_to(REPO).parts) for d in (REPO / "seqrl").rglob("*")
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))} | {"seqrl"}
    assert on_disk <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(on_disk - listed)}"
    for folder in PRESET_FOLDERS:
        assert config["package-dir"][f"seqrl._presets.{folder}"] == folder
