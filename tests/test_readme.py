"""The README's flows run as written, top to bottom, where a user runs them: from the repo root. Every fenced block
that follows a `<!-- README test: run -->` line runs, bash blocks in a shell, python blocks one after the other in one
Python process (as a reader pastes them into one session) whose current directory is first on `sys.path`, as in a
REPL or `python -` started there. Blocks that need the Hub, a GPU or an hour are left unmarked.

The directory is a copy of the repo root's entries (links to each of them), not the checkout itself: imports there
see exactly what they see from the repo root (a module or package of the repo shadows an installed one alike), while
the flows' outputs (outputs/xlstm-tiny-stdlib, my-xlstm, ...) cannot overwrite a user's own runs of the same commands.

Where the README's sizes would not fit a test run, the test runs smaller ones: CUTS lists each change, and each
one's README text must still be there, so the README cannot drift away from what the test runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- README test: run -->"

# (README text, what the test runs instead). Only sizes, step counts and the install step (done already) change.
PRETRAIN_TINY = ("--preset micro --max_corpus_chars 200000 --tokenizer_vocab_size 1000 --block_size 32 --max_steps 4 "
                 "--save_steps 2 --logging_steps 2 --max_eval_blocks 8 --sample_new_tokens 8")
CUTS = [
    ("pip install torch==2.13.0 && pip install -e . && python scripts/pretrain.py\n",
     f"python scripts/pretrain.py {PRETRAIN_TINY}\n"),
    ("--ddp_backend gloo --output_dir outputs/ddp\n", f"--ddp_backend gloo --output_dir outputs/ddp {PRETRAIN_TINY}\n"),
    ("--max_steps 500 --block_size 256", "--max_steps 2 --block_size 32"),
    ("--lora true --lora_r 16 --max_steps 500", "--lora true --lora_r 16 --max_steps 2 --block_size 32"),
    ("--tasks xlstm_local \\\n", "--tasks xlstm_local --limit 4 \\\n"),
    ("--tasks local --limit 100", "--tasks local --limit 4"),
    ('tasks=["xlstm_local"], batch_size=8)', 'tasks=["xlstm_local"], batch_size=8, limit=4)'),
    ('tasks=["xlstm_local"],\n                        task_manager', 'tasks=["xlstm_local"], limit=4,\n'
                                                                       '                        task_manager'),
]


def runnable_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block right after a MARK line, in document order."""
    pattern = re.compile(re.escape(MARK) + r"\n```(\w+)\n(.*?)\n```", re.S)
    return [(m.group(1), m.group(2) + "\n") for m in pattern.finditer(text)]


def test_every_cut_still_matches_the_readme():
    text = (REPO / "README.md").read_text()
    for readme_text, _ in CUTS:
        assert text.count(readme_text) == 1, f"README no longer says {readme_text!r} (once): update CUTS"
    blocks = runnable_blocks(text)
    assert len(blocks) >= 8 and text.count(MARK) == len(blocks), "a mark not followed by a fenced block"
    assert {lang for lang, _ in blocks} == {"bash", "python"}


# The Python session: reads the path of a block's file from stdin, runs it in one namespace, says how it ended.
SESSION = """
import sys, traceback
namespace = {"__name__": "__main__"}
for line in sys.stdin:
    path, number = line.rstrip("\\n").rsplit(" ", 1)
    try:
        exec(compile(open(path).read(), f"README.md block {number}", "exec"), namespace)
        status = "ok"
    except BaseException:
        traceback.print_exc()
        status = "failed"
    print(f"\\n@@ block {number} {status}", flush=True)
"""


def repo_root_copy(folder: Path) -> Path:
    """A directory holding a link to every entry of the repo root (its outputs, which the flows write, left out)."""
    folder.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {".git", "outputs"} and not entry.name.startswith("my-"):
            (folder / entry.name).symlink_to(entry)
    return folder


def test_readme_flows_run_as_written(tmp_path):
    text = (REPO / "README.md").read_text()
    for readme_text, test_text in CUTS:
        text = text.replace(readme_text, test_text)
    root = repo_root_copy(tmp_path / "repo")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": ""}
    session = subprocess.Popen([sys.executable, "-c", SESSION], cwd=root, env=env, text=True, bufsize=1,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for number, (language, code) in enumerate(runnable_blocks(text), 1):
            if language == "bash":
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=root, env=env,
                                      capture_output=True, text=True, stdin=subprocess.DEVNULL)
                assert done.returncode == 0, f"README block {number} failed:\n{code}\n{done.stdout[-3000:]}" \
                                             f"\n{done.stderr[-3000:]}"
                continue
            block_file = tmp_path / f"block_{number}.py"
            block_file.write_text(code)
            session.stdin.write(f"{block_file} {number}\n")
            output = []
            for line in session.stdout:
                if line.startswith(f"@@ block {number} "):
                    break
                output.append(line)
            else:
                raise AssertionError(f"the Python session ended in README block {number}:\n{''.join(output)[-3000:]}")
            assert line.strip().endswith("ok"), f"README block {number} failed:\n{code}\n{''.join(output)[-3000:]}"
    finally:
        session.stdin.close()
        session.wait(timeout=60)
    # what the flows promise to leave behind
    for folder in ("outputs/xlstm-tiny-stdlib", "my-xlstm", "my-xlstm-ft", "my-xlstm-lora"):
        assert (root / folder / "config.json").is_file(), folder
        assert (root / folder / "tokenizer.json").is_file(), folder
    assert (root / "my-xlstm" / "eval_results.json").is_file()
