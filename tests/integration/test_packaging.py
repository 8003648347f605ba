"""What `pip install rankstream` puts on a user's sys.path: one import package, `rankstream`,
holding every module of the checkout's `shared/` and `workers/` folders."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (path,) = out.glob("rankstream-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_one_top_level_package(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist()}
    (dist_info,) = (top for top in tops if top.endswith(".dist-info"))
    assert tops - {dist_info} == {"rankstream"}
    assert wheel.read(f"{dist_info}/top_level.txt").decode().split() == ["rankstream"]


def test_every_module_of_the_checkout_is_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    packaged = set(wheel.namelist())
    expected = {
        f"rankstream/{path.relative_to(ROOT / 'shared').as_posix()}"
        for path in (ROOT / "shared").rglob("*.py")
    } | {
        f"rankstream/workers/{path.relative_to(ROOT / 'workers').as_posix()}"
        for path in (ROOT / "workers").rglob("*.py")
    }
    assert expected - packaged == set(), "modules a package list in pyproject.toml leaves out"
    assert "rankstream/py.typed" in packaged
    assert "rankstream/sample_data/corpus.jsonl" in packaged
