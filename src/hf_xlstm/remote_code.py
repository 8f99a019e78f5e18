"""Writes the model's own code next to its weights, so that
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` works without hf_xlstm installed.

transformers' remote-code loader wants flat modules that import each other relatively (`from .x import y`).
Our installed layout has the ops in the `hf_xlstm.kernels` package; in the saved folder that package becomes
the module `kernels.py` (its `__init__`) beside its sibling modules, so every relative import resolves in both
layouts. This file ships too, so a model loaded from such a folder can be saved again.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# Written as `from .kernels import ...` (not `from . import kernels`): that is the form transformers' loader
# follows when it gathers the files a remote module needs.
from .kernels import mlstm as _an_op  # noqa: F401

# The modules of hf_xlstm the model needs (the package __init__, which registers Auto classes, stays behind).
MODEL_MODULES = ("configuration_xlstm.py", "modeling_xlstm.py", "cache_xlstm.py", "compat.py", "remote_code.py")

AUTO_MAP = {
    "AutoConfig": "configuration_xlstm.xLSTMConfig",
    "AutoModel": "modeling_xlstm.xLSTMModel",
    "AutoModelForCausalLM": "modeling_xlstm.xLSTMForCausalLM",
}


def code_files() -> dict[str, Path]:
    """Destination file name -> source path, for the layout we run from (installed package or flat folder)."""
    here = Path(__file__).resolve().parent
    kernels_file = Path(sys.modules[f"{__package__}.kernels"].__file__).resolve()
    if kernels_file.name != "__init__.py":
        # A flat remote-code folder (a model loaded with trust_remote_code). transformers keeps the config's and
        # the model's modules in separate folders and, on save, copies the model class's file and what it
        # imports itself; we copy what sits beside this file (the config side, kernels included).
        return {path.name: path for path in sorted(here.glob("*.py")) if path.name != "__init__.py"}
    files = {name: here / name for name in MODEL_MODULES}  # installed: hf_xlstm/kernels/ is a package
    files["kernels.py"] = kernels_file
    for path in sorted(kernels_file.parent.glob("*.py")):
        if path.name != "__init__.py":
            files[path.name] = path
    return files


def save_code(folder: str | Path) -> list[str]:
    """Copy the model code into `folder`; returns the file names written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, source in code_files().items():
        destination = folder / name
        if source.resolve() != destination.resolve():
            shutil.copyfile(source, destination)
        written.append(name)
    return written
