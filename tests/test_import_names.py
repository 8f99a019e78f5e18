"""No name that the repo root or a saved model folder puts on `sys.path` may be the name of another module.

Python started in the repo root (a REPL, `python -c`, `python -`, a notebook) or in a saved folder has that directory
first on `sys.path`: a `kernels/__init__.py` there hid Hugging Face's `kernels` package, which transformers >= 5.25
imports whenever models load, and broke every import of transformers. These tests check the names against the
standard library and every module of the running environment's installed distributions, and run the imports from
those directories as a user does.
"""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from hf_xlstm.remote_code import save_code

REPO = Path(__file__).resolve().parents[1]


def taken_names() -> dict[str, str]:
    """Top-level module name -> who provides it: the standard library or installed distributions."""
    names = {name: "the standard library" for name in sys.stdlib_module_names}
    for name, distributions in importlib.metadata.packages_distributions().items():
        names.setdefault(name, ", ".join(sorted(set(distributions))))
    names.pop("hf_xlstm", None)  # ourselves
    return names


def importable_names(folder: Path) -> dict[str, str]:
    """Modules a directory on sys.path provides that win over installed ones: *.py files and regular packages.

    A folder without __init__.py is a namespace package, which the import system uses only when no entry of
    sys.path has a module or regular package of that name: it can never hide an installed package.
    """
    names = {}
    for entry in folder.iterdir():
        if entry.suffix == ".py":
            names[entry.stem] = entry.name
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            names[entry.name] = f"{entry.name}/__init__.py"
    return names


def collisions(folder: Path) -> list[str]:
    taken = taken_names()
    return [f"{where} is also the module {name!r} of {taken[name]}"
            for name, where in sorted(importable_names(folder).items()) if name in taken]


def test_the_checks_see_a_collision(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "json.py").write_text("")
    (tmp_path / "tests").mkdir()  # a namespace folder: cannot hide anything
    found = collisions(tmp_path)
    assert any(line.startswith("json.py ") for line in found)
    if "kernels" in taken_names():  # transformers >= 5.25 depends on it
        assert any(line.startswith("kernels/__init__.py ") for line in found)
    assert not any("tests" in line for line in found)


def test_repo_root_hides_no_module():
    assert collisions(REPO) == []
    # the layout the project promises stays: the ops in kernels/, shipped as hf_xlstm.kernels
    assert (REPO / "kernels" / "ops.py").is_file() and not (REPO / "kernels" / "__init__.py").exists()


def test_saved_folder_hides_no_module(tmp_path):
    written = save_code(tmp_path)
    assert "modeling_xlstm.py" in written and not {"kernels.py", "ops.py", "compat.py"} & set(written)
    assert collisions(tmp_path) == []


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -c code` in `cwd`: that directory is first on sys.path, as in a REPL started there."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ""})


IMPORTS = """
import hf_xlstm
from transformers import PreTrainedModel
from hf_xlstm import xLSTMConfig
import importlib.util
spec = importlib.util.find_spec("kernels")
print("kernels from", spec.origin if spec is not None else None)
"""


def test_imports_from_the_repo_root():
    done = run_python(IMPORTS, REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    origin = done.stdout.split("kernels from ")[-1].strip()
    assert not origin.startswith(str(REPO)), origin  # Hugging Face's kernels (installed) or none, never ours


def test_imports_from_a_saved_folder(tmp_path):
    save_code(tmp_path)
    done = run_python(IMPORTS, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


def test_import_beside_a_clone_named_like_the_package(tmp_path):
    # `git clone ... hf_xlstm` and Python started in the folder that holds it: the clone is a folder named
    # hf_xlstm without __init__.py, which must not hide the installed package
    clone = tmp_path / "hf_xlstm"
    clone.mkdir()
    for entry in REPO.iterdir():
        if entry.name != ".git":
            (clone / entry.name).symlink_to(entry)
    done = run_python("from hf_xlstm import xLSTMConfig, xLSTMForCausalLM; print(xLSTMConfig.model_type)", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "hf_xlstm"
