"""The built wheel, installed outside the repository, serves the browser client and the demo.

The wheel is built without build isolation (hatchling comes with the `test`
extra) and installed with --no-deps into a fresh venv in a temporary
directory; that venv sees this environment's already-installed dependencies
through a plain `.pth` path line, which does not run this environment's own
.pth hooks (the editable install of the checkout), so `import pushskip` there
is the wheel's.
"""

from __future__ import annotations

import logging
import os
import site
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pushskip.app import create_app, find_static_dir
from tests.helpers import TEST_SECRET, free_port, make_settings, serve_process

ROOT = Path(__file__).resolve().parent.parent
PIP_QUIET = ["--quiet", "--disable-pip-version-check", "--no-input"]


def outside_repo(path: Path) -> bool:
    return not path.resolve().is_relative_to(ROOT)


def this_environments_site_dirs() -> list[str]:
    """Where this (test) environment's packages are installed."""
    dirs = [*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pushskip-wheel-test-") as name:
        path = Path(name).resolve()
        assert outside_repo(path), f"temporary directory {path} is inside the repository"
        yield path


@pytest.fixture(scope="module")
def wheel(scratch: Path) -> Path:
    out = scratch / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", *PIP_QUIET, "--no-deps", "--no-index"]
    subprocess.run(
        [*pip_wheel, "--no-build-isolation", "-w", str(out), str(ROOT)], check=True, timeout=120
    )
    (built,) = out.glob("pushskip-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(scratch: Path, wheel: Path) -> Path:
    """A fresh venv with the wheel installed, seeing this environment's other packages."""
    venv_dir = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv_dir)], check=True)
    python = venv_dir / "bin" / "python"
    # This environment's pip, run by the new interpreter: installs into the new venv.
    pip_install = [sys.executable, "-m", "pip", "--python", str(python), "install", *PIP_QUIET]
    subprocess.run([*pip_install, "--no-deps", "--no-index", str(wheel)], check=True, timeout=120)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Written after the install, so pip never saw the checkout's editable pushskip.
    lines = "".join(f"{d}\n" for d in this_environments_site_dirs())
    (Path(purelib) / "_pushskip_test_env.pth").write_text(lines)
    return venv_dir


def venv_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REDIS_URL")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PUSHSKIP_SECRET"] = TEST_SECRET
    return env


def test_wheel_holds_package_lua_and_static_and_nothing_else(wheel: Path) -> None:
    """The wheel is pushskip/ with lua/ and static/ inside; no tests, docs or top-level bench."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    for expected in (
        "pushskip/app.py",
        "pushskip/lua/skip.lua",
        "pushskip/static/pushskip.js",
        "pushskip/static/index.html",
        "pushskip/static/demo.js",
        "pushskip/static/demo.css",
    ):
        assert expected in names
    tops = {name.split("/", 1)[0] for name in names}
    dist_info = {top for top in tops if top.endswith(".dist-info")}
    assert len(dist_info) == 1 and tops - dist_info == {"pushskip"}, sorted(tops)
    assert not [n for n in names if n.startswith(("tests/", "docs/", "bench/", "static/"))]
    assert not [n for n in names if n.startswith("pushskip/bench")], "the bench is not shipped"


def test_installed_wheel_is_what_imports_in_the_fresh_venv(venv: Path, scratch: Path) -> None:
    """In the fresh venv, `import pushskip` is the wheel's copy, with its own static folder."""
    code = "import pushskip.app as a; print(a.__file__); print(a.find_static_dir())"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=scratch,
        env=venv_env(venv),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    module, static = Path(out[0]), Path(out[1])
    assert module.is_relative_to(venv) and outside_repo(module)
    assert static == module.parent / "static"
    assert (static / "pushskip.js").is_file()


def test_installed_console_script_serves_client_and_demo(venv: Path, scratch: Path) -> None:
    """The wheel's `pushskip serve`, run outside the repository, serves / and /pushskip.js."""
    port = free_port()
    argv = [str(venv / "bin" / "pushskip"), "--log-level", "WARNING", "serve", "--port", str(port)]
    cwd = scratch / "cwd"
    cwd.mkdir(exist_ok=True)
    with serve_process(argv, port, env=venv_env(venv), cwd=str(cwd)) as (base, proc):
        page = httpx.get(base + "/", timeout=5)
        client = httpx.get(base + "/pushskip.js", timeout=5)
        demo = httpx.get(base + "/demo.js", timeout=5)
    assert proc.returncode == 0
    assert page.status_code == 200
    assert "<html" in page.text and "demo.js" in page.text
    assert client.status_code == 200
    assert "javascript" in client.headers["content-type"]
    assert "PushskipClient" in client.text
    assert demo.status_code == 200


def test_source_checkout_serves_the_top_level_static() -> None:
    """From the checkout (editable install), the app serves the repository's static/ itself."""
    assert find_static_dir() == ROOT / "static"


def test_missing_static_dir_is_logged_at_app_creation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An app with no static folder says so in a warning instead of serving nothing silently."""
    missing = tmp_path / "no-static-here"
    with caplog.at_level(logging.WARNING, logger="pushskip.app"):
        create_app(make_settings("redis://127.0.0.1:1"), static_dir=missing)
    assert any(str(missing) in r.getMessage() for r in caplog.records)
