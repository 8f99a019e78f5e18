"""Evaluation with lm-eval-harness: the local tasks shipped with hf_xlstm, running lm-eval on a model folder or
model object, and writing the results.

Local tasks (in `TASKS_DIR`, found from a source checkout and from an installed package alike; nothing is
downloaded):

    xlstm_heldout_ppl    held-out perplexity (loglikelihood_rolling) on a few KB of English prose shipped here,
                         or on your own text (metadata `heldout_file`: a .txt/.md file is one document; a .jsonl
                         file holds one per line in a "text" field)
    xlstm_last_word      last-word cloze (loglikelihood): predict the final word of a sentence whose context
                         makes it guessable; reports perplexity of the word and accuracy of greedy decoding
    xlstm_assoc_recall   associative recall (multiple choice): a list of "key: value" pairs of words drawn from
                         the tokenizer's own vocabulary, then one key; choose its value among values from the
                         same list (chance = 1 / recall_choices). Built deterministically from the tokenizer
                         (metadata `tokenizer`, or `pretrained` as the lm-eval CLI passes it)
    xlstm_local          a group of the three

From the command line (the CLI hands `--model_args` to the tasks as metadata, so the recall task finds the
tokenizer in `pretrained`):

    lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True --device cpu \
        --include_path "$(python -c 'import hf_xlstm.evaluation as e; print(e.TASKS_DIR)')" --tasks xlstm_local

From Python: `evaluate(DIR or model, tokenizer=..., tasks=["xlstm_local"])`, or lm-eval's own API with
`task_manager(tokenizer=...)`.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
LOCAL_TASKS = ("xlstm_heldout_ppl", "xlstm_last_word", "xlstm_assoc_recall")
LOCAL_GROUP = "xlstm_local"
# Standard lm-eval task names for a base LM (zero-shot); their datasets come from the Hub.
STANDARD_TASKS = ("lambada_openai", "wikitext", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande")
RESULTS_FILE = "eval_results.json"


# ---------------------------------------------------------------------------------------------------- local data
def _read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _as_dataset(rows: list[dict]):
    from datasets import Dataset, DatasetDict

    return DatasetDict({"test": Dataset.from_list(rows)})


def heldout_dataset(heldout_file: str | None = None, **_: Any):
    """custom_dataset of xlstm_heldout_ppl: {"text"} rows, test split. The file follows hf_xlstm.data's one rule:
    a .txt/.md/.py file is one document; .json/.jsonl/.csv/.parquet hold a document per row in a "text" column."""
    from datasets import DatasetDict

    from .data import read_documents

    documents = read_documents([heldout_file or TASKS_DIR / "heldout.jsonl"])
    documents = documents.filter(lambda row: bool(row["text"].strip()))
    if len(documents) == 0:
        raise ValueError(f"heldout_file {heldout_file}: no non-empty documents found.")
    return DatasetDict({"test": documents})


def last_word_dataset(**_: Any):
    """custom_dataset of xlstm_last_word: {"context", "target"} rows (target is the sentence's last word)."""
    rows = []
    for row in _read_jsonl(TASKS_DIR / "cloze.jsonl"):
        context, target = row["text"].rsplit(" ", 1)
        rows.append({"context": context, "target": target})
    return _as_dataset(rows)


def _load_tokenizer(tokenizer=None, pretrained=None):
    from transformers import PreTrainedTokenizerBase

    from .data import load_tokenizer

    source = tokenizer if tokenizer is not None else pretrained
    if isinstance(source, PreTrainedTokenizerBase):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            "xlstm_assoc_recall builds its data from the tokenizer's vocabulary: pass the tokenizer (a name or "
            "folder, or a tokenizer object from Python) as metadata `tokenizer` (e.g. "
            "hf_xlstm.evaluation.task_manager(tokenizer=...)); the lm-eval CLI passes `pretrained` from "
            f"--model_args. Got tokenizer={tokenizer!r}, pretrained={pretrained!r}."
        )
    return load_tokenizer(source, what="the xlstm_assoc_recall task")


def vocabulary_words(tokenizer) -> list[str]:
    """Words (ASCII letters, 2+ characters) that the tokenizer encodes, with a leading space, as exactly one
    token: " word" -> [id]. In id order, so the list depends only on the tokenizer."""
    special = set(tokenizer.all_special_ids)
    ids = sorted(i for i in tokenizer.get_vocab().values() if i not in special)
    texts = tokenizer.batch_decode([[i] for i in ids])
    candidates = [(i, t) for i, t in zip(ids, texts)
                  if t.startswith(" ") and len(t) >= 3 and t[1:].isascii() and t[1:].isalpha()]
    encoded = tokenizer([t for _, t in candidates], add_special_tokens=False)["input_ids"]
    words, seen = [], set()
    for (i, t), enc in zip(candidates, encoded):
        if enc == [i] and t[1:] not in seen:
            seen.add(t[1:])
            words.append(t[1:])
    return words


def assoc_recall_docs(words: list[str], num_examples: int, num_pairs: int, num_choices: int, seed: int) -> list[dict]:
    """Deterministic associative-recall items: "k1: v1, k2: v2, ... . kq:" -> choose vq among `num_choices`
    values of the same list. Returns rows {"context", "choices", "label"}."""
    if not 2 <= num_choices <= num_pairs:
        raise ValueError(f"recall_choices must be in [2, recall_pairs={num_pairs}], got {num_choices}.")
    if len(words) < 2 * num_pairs:
        raise ValueError(
            f"The tokenizer has only {len(words)} single-token words (' word' -> one token); associative recall with "
            f"recall_pairs={num_pairs} needs {2 * num_pairs}. Lower recall_pairs or use a larger vocabulary."
        )
    rng = random.Random(seed)
    rows = []
    for _ in range(num_examples):
        picked = rng.sample(words, 2 * num_pairs)
        keys, values = picked[:num_pairs], picked[num_pairs:]
        q = rng.randrange(num_pairs)
        distractors = rng.sample([v for j, v in enumerate(values) if j != q], num_choices - 1)
        choices = distractors + [values[q]]
        rng.shuffle(choices)
        listing = ", ".join(f"{k}: {v}" for k, v in zip(keys, values))
        rows.append({"context": f"{listing}. {keys[q]}:", "choices": choices, "label": choices.index(values[q])})
    return rows


def assoc_recall_dataset(tokenizer=None, pretrained=None, recall_examples: int = 100, recall_pairs: int = 8,
                         recall_choices: int = 4, recall_seed: int = 1234, **_: Any):
    """custom_dataset of xlstm_assoc_recall (the arguments come from lm-eval's task metadata)."""
    words = vocabulary_words(_load_tokenizer(tokenizer, pretrained))
    return _as_dataset(assoc_recall_docs(words, int(recall_examples), int(recall_pairs), int(recall_choices),
                                         int(recall_seed)))


# ---------------------------------------------------------------------------------------------------- running lm-eval
def task_manager(tokenizer=None, include_defaults: bool = False, metadata: dict | None = None):
    """An lm-eval TaskManager that knows the local tasks. `tokenizer` (name, folder or object) feeds the recall
    task; `include_defaults=True` also indexes lm-eval's built-in tasks (slower to build)."""
    from lm_eval.tasks import TaskManager

    meta = dict(metadata or {})
    if tokenizer is not None:
        meta["tokenizer"] = tokenizer
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults, metadata=meta)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers (False at once when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout)
        return True
    except urllib.error.HTTPError:  # it answered
        return True
    except OSError:
        return False


HUB_UNREACHABLE = ("the dataset comes from the Hugging Face Hub, which is not reachable (or HF_HUB_OFFLINE / "
                   "HF_DATASETS_OFFLINE is set)")


def select_tasks(spec: str | list[str] | tuple[str, ...], hub: bool | None = None,
                 ) -> tuple[list[str], dict[str, str]]:
    """The tasks to run and the ones left out: (names, {task: reason}). Aliases: "local" (the shipped tasks),
    "standard" (STANDARD_TASKS; their datasets come from the Hub, so without it this is an error), "auto" (local,
    plus standard when the Hub is reachable; otherwise standard is left out, with the reason). Other names pass
    through. `hub=None` checks the Hub when needed."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise ValueError("No tasks given: name lm-eval tasks, or use 'local', 'standard' or 'auto'.")
    out: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name in ("local", LOCAL_GROUP):
            out += LOCAL_TASKS
        elif name in ("standard", "auto"):
            hub = hub_reachable() if hub is None else hub
            out += LOCAL_TASKS * (name == "auto")
            if hub:
                out += STANDARD_TASKS
            elif name == "standard":
                raise ValueError(
                    "The standard lm-eval tasks download their datasets from the Hugging Face Hub, which is not "
                    "reachable (or HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set). Use tasks='local' offline."
                )
            else:
                skipped.update(dict.fromkeys(STANDARD_TASKS, HUB_UNREACHABLE))
        else:
            out.append(name)
    out = list(dict.fromkeys(out))
    return out, {task: reason for task, reason in skipped.items() if task not in out}


def resolve_tasks(spec: str | list[str] | tuple[str, ...], hub: bool | None = None) -> list[str]:
    """The task names `select_tasks` runs (aliases expanded)."""
    return select_tasks(spec, hub)[0]


def check_task_names(names: list[str]) -> None:
    """Raise a ValueError naming the tasks lm-eval does not know, before a model is loaded for nothing (lm-eval
    itself finds out after loading the model). Indexing lm-eval's own tasks takes seconds, so only names that are
    neither local tasks nor YAML files are looked up."""
    unknown = [n for n in names if n not in (*LOCAL_TASKS, LOCAL_GROUP) and not Path(n).is_file()]
    if not unknown:
        return
    known = set(task_manager(include_defaults=True).all_tasks)
    unknown = [n for n in unknown if n not in known]
    if unknown:
        import difflib

        close = sorted({m for n in unknown for m in difflib.get_close_matches(n, known, n=3)})
        raise ValueError(f"Unknown lm-eval task {', '.join(map(repr, unknown))}"
                         + (f" (close: {', '.join(close)})" if close else "")
                         + ": name tasks as `lm-eval ls tasks` lists them, or use 'local', 'standard' or 'auto'.")


def evaluate(model, tokenizer=None, tasks: str | list[str] = "local", *, batch_size: int = 8, limit: int | None = None,
             num_fewshot: int | None = None, device: str = "cpu", dtype: str = "float32",
             metadata: dict | None = None, log_samples: bool = False, **simple_evaluate_kwargs) -> dict:
    """Run lm-eval on `model`: a model folder (loaded by lm-eval's "hf" model with trust_remote_code, as the CLI
    does) or a model object (wrapped in lm-eval's HFLM; pass its `tokenizer`). Returns lm-eval's results dict.

    tasks: names or aliases (see `resolve_tasks`). metadata: extra task metadata (heldout_file, recall_*).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from .data import check_model_folder

    names = resolve_tasks(tasks)
    if isinstance(model, (str, os.PathLike)):
        folder = str(check_model_folder(model))
        lm = HFLM(pretrained=folder, tokenizer=tokenizer, trust_remote_code=True, batch_size=batch_size,
                  device=device, dtype=dtype)
        tokenizer = tokenizer if tokenizer is not None else folder
    else:
        if tokenizer is None:
            raise ValueError("Evaluating a model object needs its tokenizer: evaluate(model, tokenizer=...).")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = task_manager(tokenizer=tokenizer, include_defaults=any(n not in LOCAL_TASKS for n in names),
                           metadata=metadata)
    return simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                           log_samples=log_samples, **simple_evaluate_kwargs)


# ---------------------------------------------------------------------------------------------------- results
def summarize(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-eval's results (metric names without the ",none" filter suffix; standard
    errors as "<metric>_stderr" where lm-eval computed them)."""
    summary: dict[str, dict[str, float]] = {}
    for task, metrics in results["results"].items():
        row = {}
        for key, value in metrics.items():
            if key == "alias" or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            if filt not in ("", "none"):
                metric = f"{metric}[{filt}]"
            row[metric] = float(value)
        if row:
            summary[task] = row
    return summary


def results_record(results: dict, model_name: str | None = None) -> dict:
    """The JSON we keep: summary, lm-eval's per-task numbers, versions, n-shot, sample counts and run settings."""
    config = results.get("config", {})
    return {
        "model": model_name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "summary": summarize(results),
        "results": results["results"],
        "versions": results.get("versions", {}),
        "n-shot": results.get("n-shot", {}),
        "n-samples": results.get("n-samples", {}),
        "settings": {k: config.get(k) for k in ("batch_size", "limit", "device") if k in config},
        "lm_eval_version": _lm_eval_version(),
    }


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def write_results(results: dict, path: str | Path, model_name: str | None = None) -> Path:
    """Write `results_record(results)` as JSON to `path` (a file, or a folder -> folder/eval_results.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_record(results, model_name), indent=2, default=str) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------- model card
LM_EVAL_SOURCE = {"source_name": "lm-evaluation-harness",
                  "source_url": "https://github.com/EleutherAI/lm-evaluation-harness"}
_NOT_METRICS = ("sample_len",)


def card_eval_results(results: dict) -> list[dict]:
    """lm-eval results as model-card entries (huggingface_hub.EvalResult keyword dicts), one per task and metric;
    standard errors and non-finite values (a diverging perplexity) are left out."""
    configs = results.get("configs", {})
    limit = results.get("config", {}).get("limit")
    limited = f", first {limit} examples" if limit is not None else ""
    entries = []
    for task, metrics in summarize(results).items():
        cfg = configs.get(task, {})
        dataset = cfg.get("dataset_path") if isinstance(cfg.get("dataset_path"), str) else None
        for metric, value in metrics.items():
            if metric.endswith("_stderr") or metric in _NOT_METRICS or not math.isfinite(value):
                continue
            entries.append({
                "task_type": "text-generation", "task_name": task,
                "dataset_type": dataset or task, "dataset_name": dataset or task,
                "dataset_config": cfg.get("dataset_name") if isinstance(cfg.get("dataset_name"), str) else None,
                "dataset_split": cfg.get("test_split") or cfg.get("validation_split"),
                "metric_type": metric, "metric_value": value,
                "metric_config": f"{results.get('n-shot', {}).get(task, 0)}-shot" + limited, **LM_EVAL_SOURCE,
            })
    return entries


# ---------------------------------------------------------------------------------------------------- one call
def evaluate_folder(folder: str | Path, tasks: str | list[str] = "auto", *, output: str | Path | None = None,
                    model_card: bool = True, **evaluate_kwargs) -> tuple[dict, Path, Path | None]:
    """What scripts/evaluate.py does: `evaluate(folder, tasks=...)`, the results JSON (default
    folder/eval_results.json) and, with `model_card`, the results in the folder's model card: `card_eval_results`
    handed to hf_xlstm.model_card.write_model_card, which adds them to the card's other results (e.g. the
    pretraining perplexity; the same task and metric: replaced), stores them in folder/model_card.json (so
    scripts/push_to_hub.py keeps them) and writes folder/README.md. Returns (lm-eval results, JSON path, card path
    or None). Tasks an alias left out (see `select_tasks`: the standard ones of "auto" when the Hub is not
    reachable) are in the results and the JSON under "skipped_tasks", {task: reason}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Model folder {str(folder)!r} does not exist; give a folder saved with "
                                "save_pretrained (e.g. the output folder of scripts/pretrain.py).")
    names, skipped = select_tasks(tasks)
    check_task_names(names)
    results = evaluate(str(folder), tasks=names, **evaluate_kwargs)
    results["skipped_tasks"] = skipped
    json_path = Path(output) if output else folder / RESULTS_FILE
    json_path = json_path / RESULTS_FILE if json_path.is_dir() else json_path
    json_path.parent.mkdir(parents=True, exist_ok=True)
    record = {**results_record(results, model_name=folder.name), "skipped_tasks": skipped}
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    card_path = None
    if model_card:
        from .model_card import write_model_card

        write_model_card(folder, eval_results=card_eval_results(results))
        card_path = folder / "README.md"
    return results, json_path, card_path
