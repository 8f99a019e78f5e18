"""lm-eval-harness on saved tiny models with the local tasks: the CLI as users type it, the Python API with a
model object, scripts/evaluate.py (results JSON and model card), and batch-size invariance of loglikelihoods."""

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a one two old new small large red green blue cold warm quiet loud river stone bread water tree house "
         "light night day bird fish road hill field garden window door table letter train street morning evening "
         "reads writes finds keeps opens closes walks runs sees hears holds carries slowly quickly again always "
         "model memory state gate cell token").split()


def corpus(sentences: int = 400, seed: int = 0) -> list[str]:
    """Deterministic English-like sentences over WORDS (about 20 KB)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))).capitalize() + "."
            for _ in range(sentences)]


def make_tokenizer(vocab_size: int = 512):
    """A byte-level BPE trained on `corpus()`, with <|endoftext|> as bos/eos and a pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>")


def save_tiny_model(folder: Path, style: str, tokenizer, seed: int = 0) -> Path:
    model = tiny_model(style, seed=seed, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def folders(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_models")
    return {style: save_tiny_model(root / style, style, tokenizer) for style in ("paper", "large")}


@pytest.fixture(scope="module")
def heldout_file(tmp_path_factory):
    """Short held-out documents in the tokenizer's own language (few tokens each: the tests stay fast)."""
    sentences = corpus(24, seed=1)
    path = tmp_path_factory.mktemp("heldout") / "heldout.jsonl"  # a document per line
    path.write_text("".join(json.dumps({"text": " ".join(sentences[i: i + 3])}) + "\n" for i in range(0, 24, 3)))
    return path


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(results: dict) -> dict:
    return {(task, key): value for task, row in results.items() for key, value in row.items()
            if isinstance(value, float) and "stderr" not in key}


# ---------------------------------------------------------------------------------------------------- local task data
def test_local_task_data(tokenizer, tmp_path):
    from hf_xlstm.evaluation import (HUB_UNREACHABLE, LOCAL_TASKS, STANDARD_TASKS, assoc_recall_dataset,
                                     heldout_dataset, hub_reachable, last_word_dataset, resolve_tasks, select_tasks,
                                     vocabulary_words)

    words = vocabulary_words(tokenizer)
    assert len(words) >= 16 and {"the", "river", "memory"} <= set(words)
    assert all(len(tokenizer(" " + w, add_special_tokens=False).input_ids) == 1 for w in words)

    data = assoc_recall_dataset(tokenizer=tokenizer, recall_examples=30, recall_pairs=6, recall_choices=3)["test"]
    again = assoc_recall_dataset(tokenizer=tokenizer, recall_examples=30, recall_pairs=6, recall_choices=3)["test"]
    assert data.to_list() == again.to_list() and len(data) == 30
    labels = set()
    for row in data:
        listing, query = row["context"][:-1].rsplit(". ", 1)
        pairs = dict(p.split(": ") for p in listing.split(", "))
        assert len(pairs) == 6 and set(pairs) | set(pairs.values()) <= set(words)
        assert len(row["choices"]) == 3 and set(row["choices"]) <= set(pairs.values())
        assert row["choices"][row["label"]] == pairs[query]
        labels.add(row["label"])
    assert labels == {0, 1, 2}  # the answer is not always in the same place
    with pytest.raises(ValueError, match="tokenizer"):
        assoc_recall_dataset()
    with pytest.raises(ValueError, match="single-token words"):
        assoc_recall_dataset(tokenizer=tokenizer, recall_pairs=len(words))

    cloze = last_word_dataset()["test"]
    assert len(cloze) >= 40 and all(" " not in r["target"] and r["target"].isalpha() for r in cloze)
    assert len(heldout_dataset()["test"]) >= 10
    own = tmp_path / "valid.txt"  # a text file is one document, as in pretraining and fine-tuning
    own.write_text("first paragraph\n\nsecond paragraph\n")
    assert heldout_dataset(heldout_file=str(own))["test"]["text"] == ["first paragraph\n\nsecond paragraph\n"]
    rows = tmp_path / "valid.jsonl"
    rows.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert heldout_dataset(heldout_file=str(rows))["test"]["text"] == ["one", "two"]

    assert not hub_reachable()  # the tests run with HF_HUB_OFFLINE=1
    assert resolve_tasks("auto") == ["xlstm_heldout_ppl", "xlstm_last_word", "xlstm_assoc_recall"]
    assert resolve_tasks("local,lambada_openai", hub=False)[-1] == "lambada_openai"
    with pytest.raises(ValueError, match="Hub"):
        resolve_tasks("standard")
    # what "auto" leaves out without the Hub, and why; a standard task named as well is not left out
    names, skipped = select_tasks("auto", hub=False)
    assert names == list(LOCAL_TASKS) and skipped == dict.fromkeys(STANDARD_TASKS, HUB_UNREACHABLE)
    names, skipped = select_tasks("auto,hellaswag", hub=False)
    assert names[-1] == "hellaswag" and "hellaswag" not in skipped and len(skipped) == len(STANDARD_TASKS) - 1
    assert select_tasks("auto", hub=True) == ([*LOCAL_TASKS, *STANDARD_TASKS], {})


# ---------------------------------------------------------------------------------------------------- CLI and script
def test_evaluate_script_and_lm_eval_cli(folders, heldout_file, tmp_path):
    """scripts/evaluate.py writes the results JSON and the model card; the unchanged lm_eval CLI on the same
    folder (remote code, local tasks via --include_path) gives the same numbers."""
    from huggingface_hub import ModelCard

    from hf_xlstm.evaluation import TASKS_DIR
    from hf_xlstm.model_card import write_model_card

    folder = folders["large"]
    pretraining_result = {"task_type": "text-generation", "dataset_type": "corpus", "dataset_name": "corpus",
                          "metric_type": "perplexity", "metric_value": 42.0}
    write_model_card(folder, training={"steps": 3}, eval_results=[pretraining_result])
    _load_script("evaluate").main([str(folder), "--tasks", "local", "--limit", "4", "--batch-size", "4",
                                   "--heldout-file", str(heldout_file)])

    record = json.loads((folder / "eval_results.json").read_text())
    summary = record["summary"]
    assert set(summary) >= {"xlstm_heldout_ppl", "xlstm_last_word", "xlstm_assoc_recall"}
    for task in ("xlstm_heldout_ppl", "xlstm_last_word", "xlstm_assoc_recall"):
        assert record["n-samples"][task]["effective"] == 4
    assert 1 < summary["xlstm_heldout_ppl"]["byte_perplexity"] < 10 * len(WORDS) ** 2
    assert summary["xlstm_heldout_ppl"]["bits_per_byte"] > 0
    assert 0 <= summary["xlstm_last_word"]["acc"] <= 1 and 0 <= summary["xlstm_assoc_recall"]["acc"] <= 1

    card = (folder / "README.md").read_text()
    assert "| steps | 3 |" in card  # the training table survives
    card_results = ModelCard.load(folder / "README.md").data.eval_results
    results = {(r.task_name, r.metric_type): r.metric_value for r in card_results}
    assert results[(None, "perplexity")] == 42.0
    assert results[("xlstm_assoc_recall", "acc")] == summary["xlstm_assoc_recall"]["acc"]
    assert results[("xlstm_heldout_ppl", "bits_per_byte")] == summary["xlstm_heldout_ppl"]["bits_per_byte"]
    assert "## Evaluation" in card and "xlstm_last_word" in card.split("## Evaluation")[1]
    # kept with the folder's card inputs too, so that the card written again for the Hub has them
    stored = json.loads((folder / "model_card.json").read_text())["eval_results"]
    assert {(e.get("task_name"), e["metric_type"]): e["metric_value"] for e in stored} == results

    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
           f"pretrained={folder},trust_remote_code=True", "--device", "cpu", "--include_path", str(TASKS_DIR),
           "--tasks", "xlstm_local", "--limit", "4", "--batch_size", "4", "--output_path", str(out),
           "--metadata", json.dumps({"heldout_file": str(heldout_file)})]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1, proc.stdout[-2000:]
    cli = _metrics(json.loads(files[0].read_text())["results"])
    api = _metrics(record["results"])
    assert set(api) <= set(cli) and len(api) >= 6
    for key in api:
        assert cli[key] == pytest.approx(api[key], rel=1e-6, abs=1e-9), key


def test_evaluate_script_offline_says_which_standard_tasks_it_skipped(folders, tmp_path, capsys):
    """The default task set offline runs the local tasks and names the standard ones it left out, and why: on
    stderr, one line per reason, and in the results JSON."""
    from hf_xlstm.evaluation import HUB_UNREACHABLE, LOCAL_TASKS, STANDARD_TASKS

    out = tmp_path / "results.json"
    results = _load_script("evaluate").main([str(folders["paper"]), "--limit", "2", "--batch-size", "2",
                                             "--no-model-card", "--output", str(out)])
    record = json.loads(out.read_text())
    assert set(record["summary"]) >= set(LOCAL_TASKS) and not set(record["results"]) & set(STANDARD_TASKS)
    assert record["skipped_tasks"] == results["skipped_tasks"] == dict.fromkeys(STANDARD_TASKS, HUB_UNREACHABLE)
    err = capsys.readouterr().err
    assert f"skipped {', '.join(STANDARD_TASKS)}: {HUB_UNREACHABLE}\n" in err
    assert "lambada_openai" in err and "not reachable" in err and "HF_HUB_OFFLINE" in err


# ---------------------------------------------------------------------------------------------------- Python API
@pytest.mark.parametrize("style", ["paper", "large"])
def test_python_api_model_object_batch_size_invariance(style, folders, tokenizer, heldout_file):
    """lm-eval's Python API with a model object: batched, right-padded requests give
    every request the loglikelihood it gets at batch size 1."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    from hf_xlstm.evaluation import evaluate, task_manager

    model = AutoModelForCausalLM.from_pretrained(folders[style], trust_remote_code=True).eval()
    shapes = []
    model.register_forward_hook(lambda m, args, kwargs, out: shapes.append((args or [kwargs["input_ids"]])[0].shape),
                                with_kwargs=True)

    metadata = {"heldout_file": str(heldout_file)}

    def run(batch_size):
        if style == "paper":  # lm-eval's own API, as in the README
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            results = lm_eval.simple_evaluate(model=lm, tasks=["xlstm_local"], limit=6, log_samples=True,
                                              bootstrap_iters=0,
                                              task_manager=task_manager(tokenizer=tokenizer, metadata=metadata))
        else:  # our wrapper of the same
            results = evaluate(model, tokenizer, tasks=["xlstm_local"], batch_size=batch_size, limit=6,
                               log_samples=True, bootstrap_iters=0, metadata=metadata)
        responses = {(task, s["doc_id"]): [r[0] for r in s["resps"]] for task, samples in results["samples"].items()
                     for s in samples}
        return results, responses

    single, single_resps = run(1)
    assert shapes and all(s[0] == 1 for s in shapes)
    shapes.clear()
    batched, batched_resps = run(5)
    assert any(s[0] > 1 for s in shapes)  # really batched (and padded: requests differ in length)
    assert single_resps.keys() == batched_resps.keys() and len(single_resps) == 18
    for key, resps in single_resps.items():
        other = batched_resps[key]
        loglik = torch.tensor([r[0] if isinstance(r, (list, tuple)) else r for r in resps], dtype=torch.float64)
        loglik_b = torch.tensor([r[0] if isinstance(r, (list, tuple)) else r for r in other], dtype=torch.float64)
        torch.testing.assert_close(loglik_b, loglik, rtol=1.3e-6, atol=1e-5, msg=str(key))
        greedy = [r[1] for r in resps if isinstance(r, (list, tuple))]
        assert greedy == [r[1] for r in other if isinstance(r, (list, tuple))], key
    for task in ("xlstm_last_word", "xlstm_assoc_recall"):
        assert batched["results"][task]["acc,none"] == single["results"][task]["acc,none"]
    assert batched["results"]["xlstm_heldout_ppl"]["bits_per_byte,none"] == pytest.approx(
        single["results"]["xlstm_heldout_ppl"]["bits_per_byte,none"], rel=1e-6)
