"""One short pretraining run shared by the pretraining and Hub tests (made once per test session)."""

from __future__ import annotations

from pathlib import Path

from hf_xlstm.pretraining import parse_args, run_pretraining

# micro preset (xLSTM[1:1], hidden 32), a small slice of the embedded corpus, 6 steps with a checkpoint at 3
SHORT_RUN = [
    "--preset", "micro", "--max_corpus_chars", "60000", "--tokenizer_vocab_size", "300", "--block_size", "32",
    "--max_steps", "6", "--save_steps", "3", "--logging_steps", "1", "--per_device_train_batch_size", "4",
    "--per_device_eval_batch_size", "16", "--max_eval_blocks", "16", "--sample_prompts", "def ",
    "--sample_new_tokens", "8", "--warmup_steps", "1", "--disable_tqdm", "true", "--use_cpu", "true",
    "--dataloader_num_workers", "0",
]

_RUNS: dict[str, tuple[Path, dict]] = {}


def short_run(root: Path) -> tuple[Path, dict]:
    """(output folder, results) of the short run; later calls return the first run's."""
    if "run" not in _RUNS:
        folder = Path(root) / "short-run"
        _RUNS["run"] = folder, run_pretraining(*parse_args([*SHORT_RUN, "--output_dir", str(folder)]))
    return _RUNS["run"]
