"""Writes the model's own code next to its weights, so that
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` works without hf_xlstm installed.

transformers' remote-code loader wants flat modules that import each other relatively (`from .x import y`).
Installed, the ops live in the sub-package `hf_xlstm.kernels`; in a saved folder every module is a flat file.

A saved folder is also a directory that users `cd` into and start Python in, with the folder first on `sys.path`:
any file there named like an installed module (`kernels.py` shadowed Hugging Face's `kernels` package, which
transformers imports) breaks every import of that name. So each code file is saved under a name of its own (the
`xlstm_` prefix, `SAVED_NAMES`), and the relative imports in the copies are rewritten to those names. Folders saved
before carry their own (older) code and still load as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

# Written as `from .kernels.ops import ...` (not `import`): the form transformers' loader follows when it gathers the
# files a remote module needs (in a saved folder this line reads `from .xlstm_ops import ...`).
from .kernels.ops import mlstm as _an_op  # noqa: F401

HERE = Path(__file__).resolve().parent
# Installed, the kernels sub-package sits beside this file; in a saved folder loaded with trust_remote_code, every
# module is already a flat file under its saved name.
INSTALLED = (HERE / "kernels").is_dir()

# The modules of hf_xlstm the model needs (the package __init__, which registers Auto classes, stays behind), and
# the kernels sub-package's modules.
MODEL_MODULES = ("configuration_xlstm", "modeling_xlstm", "cache_xlstm", "compat", "remote_code")
KERNEL_MODULES = tuple(sorted(path.stem for path in (HERE / "kernels").glob("*.py")))

# Module name -> name in a saved folder. The auto_map names (configuration_xlstm, modeling_xlstm) and cache_xlstm
# name the model already; every other module gets the prefix, so no code file can be mistaken for another package.
SAVED_NAMES = {name: name if "xlstm" in name else f"xlstm_{name}" for name in MODEL_MODULES + KERNEL_MODULES}

AUTO_MAP = {
    "AutoConfig": "configuration_xlstm.xLSTMConfig",
    "AutoModel": "modeling_xlstm.xLSTMModel",
    "AutoModelForCausalLM": "modeling_xlstm.xLSTMForCausalLM",
}

# `from .kernels.ops import`, `from .ops import`, `from .compat import` ... (the relative imports our modules use)
_RELATIVE_IMPORT = re.compile(r"^(\s*from \.)(?:kernels\.)?(\w+)( import )", re.MULTILINE)


def _flat_source(text: str) -> str:
    """An installed module's source with its relative imports pointing at the saved folder's file names."""

    def rename(match: re.Match) -> str:
        module = match.group(2)
        if module not in SAVED_NAMES:
            raise ValueError(f"remote_code: relative import of {module!r}, which SAVED_NAMES does not list; add it")
        return f"{match.group(1)}{SAVED_NAMES[module]}{match.group(3)}"

    return _RELATIVE_IMPORT.sub(rename, text)


def code_files() -> dict[str, Path]:
    """File name in a saved folder -> source path, for the layout we run from (installed package or saved folder)."""
    if not INSTALLED:
        # transformers keeps the config's and the model's modules in separate folders and, on save, copies the model
        # class's file and what it imports itself; we copy what sits beside this file (the config side, kernels
        # included).
        return {path.name: path for path in sorted(HERE.glob("*.py")) if path.name != "__init__.py"}
    files = {f"{SAVED_NAMES[name]}.py": HERE / f"{name}.py" for name in MODEL_MODULES}
    files.update({f"{SAVED_NAMES[name]}.py": HERE / "kernels" / f"{name}.py" for name in KERNEL_MODULES})
    return files


def save_code(folder: str | Path) -> list[str]:
    """Write the model code into `folder` under its saved names; returns the file names written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, source in code_files().items():
        destination = folder / name
        if source.resolve() != destination.resolve():
            text = source.read_text()
            destination.write_text(_flat_source(text) if INSTALLED else text)
        written.append(name)
    return written
