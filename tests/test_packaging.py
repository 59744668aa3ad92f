"""``pip install .`` (not only an editable install) provides both packages and both scripts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_both_packages_and_both_console_scripts(tmp_path: Path) -> None:
    # No build isolation: the venv already has setuptools, and CI may only reach the registries.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("hangup-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [entry_points] = [name for name in names if name.endswith("entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert "hangup-proxy = proxy.cli:main" in scripts
    assert "hangup-demo-backend = demo_backend.cli:main" in scripts
    for module in (
        "proxy/serving/forward.py",
        "proxy/cli.py",
        "demo_backend/protocol.py",
        "demo_backend/cli.py",
        "proxy/py.typed",
    ):
        assert module in names, module
    assert not any(name.startswith("tests/") for name in names)
    # pyproject.toml's license-files: the MIT text travels with the metadata (PEP 639).
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
