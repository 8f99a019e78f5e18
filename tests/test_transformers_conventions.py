"""transformers' own model-test conventions: its ModelTesterMixin, of the installed release, runs our model tester
(tests/transformers_conventions/modeling_tester.py) in a fresh process.

The mixin lives in tests/test_modeling_common.py of transformers' source distribution, fetched here from the
package index for exactly the installed version (pip download, a few seconds: the one test that needs the package
index; nothing comes from the Hugging Face Hub)."""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import transformers

HERE = Path(__file__).parent

# test_modeling_common.py imports these two modules, which the source distribution does not ship.
STAND_INS = {
    "generation/test_utils.py": "class GenerationTesterMixin:  # stand-in: not in transformers' sdist\n    pass\n",
    "exporters/test_export.py": "class ExportTesterMixin:  # stand-in: not in transformers' sdist\n    pass\n",
}


def _transformers_tests(root: Path) -> Path:
    """tests/test_modeling_common.py of the installed transformers, from its source distribution."""
    version = transformers.__version__
    download = root / "sdist"
    done = subprocess.run([sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-binary",
                           ":all:", "--no-deps", "-q", "-d", str(download)],
                          capture_output=True, text=True)
    archives = sorted(download.glob(f"transformers-{version}.tar.gz"))
    assert archives, f"could not fetch transformers {version}'s source distribution:\n{done.stderr[-2000:]}"
    member = f"transformers-{version}/tests/test_modeling_common.py"
    with tarfile.open(archives[0]) as tar:
        source = tar.extractfile(member)
        assert source is not None, f"{member} is not in the source distribution"
        return source.read()


def test_model_tester_mixin_of_the_installed_transformers_passes(tmp_path):
    tests = tmp_path / "tests"
    (tests / "models" / "hf_xlstm").mkdir(parents=True)
    (tests / "test_modeling_common.py").write_bytes(_transformers_tests(tmp_path))
    for name, text in STAND_INS.items():
        (tests / name).parent.mkdir(exist_ok=True)
        (tests / name).write_text(text)
    for package in (tests, tests / "generation", tests / "exporters", tests / "models", tests / "models" / "hf_xlstm"):
        (package / "__init__.py").touch()
    shutil.copyfile(HERE / "transformers_conventions" / "modeling_tester.py",
                    tests / "models" / "hf_xlstm" / "test_modeling_hf_xlstm.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings =\n    ignore::pytest.PytestUnknownMarkWarning\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
                           "tests/models/hf_xlstm/test_modeling_hf_xlstm.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    print(summary)
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 150, summary  # the mixin really ran (about 170 tests on transformers 5.23 and 5.24)
