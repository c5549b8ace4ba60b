# SPDX-License-Identifier: Apache-2.0
"""The package's shape: layers without import circles, old module paths that
still work, and one declaration of the queue's settings."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys

import shmq
from shmq.channel.queue import Queue
from shmq.settings.params import declared_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_import_circle_among_the_packages_modules():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import-cycles"),
                             os.path.join(ROOT, "shmq")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"import circles:\n{result.stdout}{result.stderr}"


def test_the_import_circle_check_finds_a_circle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import b\n")
    (package / "b.py").write_text("from pkg.a import f\n")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import-cycles"), str(package)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout.strip() == "pkg.a <-> pkg.b"


def test_old_module_paths_are_the_modules_that_moved():
    for old, new in shmq._MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    assert importlib.import_module("shmq.cli.commands.stats") is importlib.import_module("shmq.cli.commands.stats")
    from shmq.ops.metrics import prometheus
    from shmq.channel.queue import Queue as old_queue

    assert old_queue is Queue and callable(prometheus)
    assert importlib.import_module("shmq.ops.metrics").__spec__.name == "shmq.ops.metrics"  # its own spec kept


def test_the_queue_takes_exactly_the_declared_settings():
    declared = inspect.signature(declared_settings).parameters
    taken = {key: p for key, p in inspect.signature(Queue.__init__).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY or key == "path"}
    taken.pop("config")
    assert list(taken) == list(declared)
    for key, p in declared.items():
        assert str(taken[key].annotation).replace("os.PathLike | ", "") == str(p.annotation), key


def test_the_c_core_calls_no_layer_above_its_own():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "c-layers"), os.path.join(ROOT, "csrc")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"C layer problems:\n{result.stdout}{result.stderr}"


def test_the_c_layer_check_finds_an_upward_call_a_circle_and_an_unplaced_file(tmp_path):
    (tmp_path / "layers").write_text("layer low:\nlayer high: low\n"
                                     "a.c low\nb.c high\nc.c high\nd.c high\n")
    (tmp_path / "a.c").write_text("int shmq_a(void) { return shmq_b(); }\n")
    (tmp_path / "b.c").write_text("int shmq_b(void) { return shmq_a() + shmq_c(); }\n")
    (tmp_path / "c.c").write_text("int shmq_c(void) { return shmq_d(); }\n")
    (tmp_path / "d.c").write_text("int shmq_d(void) { return shmq_c(); }\n")
    (tmp_path / "e.c").write_text("static int shmq_e(void) { return 0; }\n")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "c-layers"), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"e.c: not in {tmp_path / 'layers'}",
        "a.c (low) calls up into b.c (high): shmq_b",
        "circle in layer high: c.c <-> d.c",
    ]


def test_the_old_path_finder_works_in_a_bare_interpreter():
    """Installed without the editable finder (pip install .), nothing has
    imported importlib.util before shmq: the finder itself must import nothing
    when it is asked about other modules (it once recursed for ever)."""
    import sysconfig

    code = "import shmq, json, shmq.queue, shmq.metrics; print(shmq.queue.__name__)"
    # -S: no site, so no .pth file (and no editable finder) runs first; the packages come by PYTHONPATH.
    path = os.pathsep.join([ROOT, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "shmq.channel.queue"


def test_every_package_folder_is_installed():
    """pip install . must carry every package of the tree (a folder missing from
    the install broke every command of an installed shmq)."""
    import tomllib

    from setuptools import find_packages

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)["tool"]["setuptools"]
    found = set(find_packages(ROOT, include=config["packages"]["find"]["include"]))
    on_disk = {os.path.relpath(folder, ROOT).replace(os.sep, ".")
               for folder, _dirs, files in os.walk(os.path.join(ROOT, "shmq")) if "__init__.py" in files}
    assert on_disk and on_disk <= found, sorted(on_disk - found)
