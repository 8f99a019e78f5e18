"""The Hub side of a pretraining run: the folder loads in a fresh process with only transformers
(trust_remote_code) and generates; the model card's metadata is what the Hub accepts; push_to_hub --dry-run
stages exactly the files to upload, with a card that holds every result (pretraining and lm-eval)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import WITHOUT_HF_XLSTM
from huggingface_hub import ModelCard
from transformers import AutoTokenizer

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM
from hf_xlstm.hub import push
from hf_xlstm.model_card import validate_model_card, write_model_card
from pretrain_run import short_run

ROOT = Path(__file__).parents[1]
PROMPT = "def run(self"

FRESH_PROCESS = WITHOUT_HF_XLSTM + textwrap.dedent(
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, prompt = sys.argv[1], sys.argv[2]
    # AutoTokenizer reads config.json too, so it also needs trust_remote_code for a custom model type
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    inputs = tokenizer([prompt], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    print(json.dumps({"ids": out[0].tolist(), "text": tokenizer.decode(out[0])}))
    """
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return short_run(tmp_path_factory.getbasetemp())


def test_fresh_process_loads_with_transformers_only_and_generates(run, tmp_path):
    folder, _ = run
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder), PROMPT], capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    # the same greedy tokens as the model loaded here through hf_xlstm
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = xLSTMForCausalLM.from_pretrained(folder).eval()
    inputs = tokenizer([PROMPT], return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0].tolist()
    assert fresh["ids"] == expected
    assert len(fresh["ids"]) == inputs["input_ids"].shape[1] + 12 and fresh["text"].startswith(PROMPT)


def test_model_card_metadata_of_the_run(run):
    folder, results = run
    card = validate_model_card(folder)  # strict parse: metadata, model-index
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.license == "apache-2.0" and "xlstm" in data.tags and "custom_code" in data.tags
    (result,) = data.eval_results
    assert result.metric_type == "perplexity" and result.dataset_split == "validation"
    assert result.metric_value == pytest.approx(results["perplexity"], abs=1e-4)
    assert result.dataset_name == "python-stdlib" and data.model_name == folder.name
    text = card.text
    assert f"{results['unigram_perplexity']:.2f}" in text  # the baseline, in the training table
    assert "xLSTM[1:1]" in text and "trust_remote_code=True" in text
    assert json.loads((folder / "model_card.json").read_text())["eval_results"][0]["metric_type"] == "perplexity"


def test_model_card_from_evaluation_and_conversion(tmp_path):
    config = xLSTMConfig(vocab_size=64, hidden_size=32, num_blocks=2, num_heads=2, block_style="large")
    torch.manual_seed(0)
    xLSTMForCausalLM(config).save_pretrained(tmp_path)
    write_model_card(tmp_path, training={"steps": 5}, eval_results=[
        {"task_type": "text-generation", "dataset_type": "wikitext", "dataset_name": "WikiText", "metric_type":
         "perplexity", "metric_value": 30.5}])
    # a later call (e.g. lm-eval results) adds results and keeps the rest; the same key replaces a value
    card = write_model_card(tmp_path, source="NX-AI/xLSTM-7b", repo_id="me/x", eval_results=[
        {"task_type": "text-generation", "dataset_type": "wikitext", "dataset_name": "WikiText", "metric_type":
         "perplexity", "metric_value": 29.0},
        {"task_type": "multiple-choice", "task_name": "arc_easy", "dataset_type": "allenai/ai2_arc",
         "dataset_name": "ARC-Easy", "dataset_config": "ARC-Easy", "dataset_split": "test", "metric_type": "acc",
         "metric_value": 0.42, "source_name": "lm-evaluation-harness",
         "source_url": "https://github.com/EleutherAI/lm-evaluation-harness"}])
    parsed = ModelCard.load(tmp_path / "README.md", ignore_metadata_errors=False)
    assert parsed.data.base_model == "NX-AI/xLSTM-7b" and parsed.data.model_name == "x"
    assert {(r.metric_type, r.metric_value) for r in parsed.data.eval_results} == {("perplexity", 29.0),
                                                                                ("acc", 0.42)}
    assert "| steps | 5 |" in card.text and 'from_pretrained("me/x"' in card.text
    assert "xLSTM-7B (mLSTM blocks with SwiGLU feed-forward)" in card.text
    n = sum(p.numel() for p in xLSTMForCausalLM(config).parameters())
    assert f"({n:,})" in card.text  # counted from the safetensors headers
    with pytest.raises(ValueError, match="lacks \\['metric_value'\\]"):
        write_model_card(tmp_path, eval_results=[{"task_type": "t", "dataset_type": "d", "dataset_name": "d",
                                                  "metric_type": "acc"}])
    with pytest.raises(ValueError, match="finite number"):
        write_model_card(tmp_path, eval_results=[{"task_type": "t", "dataset_type": "d", "dataset_name": "d",
                                                  "metric_type": "acc", "metric_value": float("nan")}])


def test_model_card_names_the_source_the_config_records(tmp_path):
    config = xLSTMConfig(vocab_size=64, hidden_size=32, num_blocks=2, num_heads=2, block_style="large",
                         converted_from="transformers xLSTMForCausalLM: some/xlstm")
    xLSTMForCausalLM(config).save_pretrained(tmp_path)
    card = write_model_card(tmp_path, training={"steps": 1})
    assert "Converted from transformers xLSTMForCausalLM: some/xlstm to the hf_xlstm format." in card.text


def test_validation_rejects_broken_metadata(tmp_path):
    good = "---\nlicense: mit\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n# m\n"
    validate_model_card(ModelCard(good))
    broken_index = good.replace("---\n# m", "model-index:\n- name: m\n  results:\n  - task:\n      type: t\n"
                                           "    metrics:\n    - type: acc\n      value: 1\n---\n# m")
    (tmp_path / "broken.md").write_text(broken_index)
    with pytest.raises((ValueError, KeyError)):
        validate_model_card(tmp_path / "broken.md")  # the result names no dataset
    with pytest.raises(ValueError, match="lacks 'pipeline_tag'"):
        validate_model_card(ModelCard(good.replace("pipeline_tag: text-generation\n", "")))
    with pytest.raises(ValueError, match="no YAML metadata"):
        (tmp_path / "README.md").write_text("# no metadata\n")
        validate_model_card(tmp_path)


def test_push_dry_run_stages_exactly_the_upload(run, tmp_path):
    folder, results = run
    stage = tmp_path / "stage"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": ""}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "push_to_hub.py"), str(folder), "--repo-id", "someone/xlstm-micro",
         "--dry-run", "--staging-dir", str(stage)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"staged files kept in {stage}" in result.stdout
    staged = sorted(p.name for p in stage.iterdir())
    expected = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != "training_args.bin")
    assert staged == expected
    assert "model.safetensors" in staged and "modeling_xlstm.py" in staged and "README.md" in staged
    listed = [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == staged
    assert "would upload" in result.stdout and "https://huggingface.co/someone/xlstm-micro" in result.stdout
    card = validate_model_card(stage)
    assert 'from_pretrained("someone/xlstm-micro"' in card.text and card.data.model_name == "xlstm-micro"
    assert card.data.eval_results[0].metric_value == pytest.approx(results["perplexity"], abs=1e-4)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (stage / name).read_bytes() == (folder / name).read_bytes()


def test_push_dry_run_leaves_no_staging_folder_behind(run, tmp_path):
    """Without --staging-dir the files are staged in a temporary folder, removed once they are listed."""
    folder, _ = run
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "", "TMPDIR": str(temp)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "push_to_hub.py"), str(folder), "--repo-id", "someone/x",
         "--dry-run"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "would upload" in result.stdout and "model.safetensors" in result.stdout
    # torch may leave its own caches in TMPDIR; nothing staged may be left there
    staged = {p.name for p in folder.iterdir() if p.is_file()}
    left = [p for p in temp.rglob("*") if p.name.startswith("hf_xlstm_upload_") or p.name in staged]
    assert not left, left


def test_push_refuses_a_folder_that_is_not_a_saved_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="missing config.json"):  # hf_xlstm.cli.run makes it one `error:` line
        push(tmp_path / "empty", "a/b", dry_run=True, staging_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_pretrain_evaluate_push_card_keeps_every_result(run, tmp_path, capsys):
    """pretrain -> evaluate with lm-eval -> push --dry-run: the staged card (README.md and model_card.json) has the
    held-out perplexity of the pretraining run and the lm-eval results, in the metadata and in the table."""
    from hf_xlstm.evaluation import card_eval_results, evaluate_folder

    run_folder, pretrain_results = run
    folder = tmp_path / "xlstm-evaluated"  # a copy: the shared run keeps its own card
    folder.mkdir()
    for path in run_folder.iterdir():
        if path.is_file():
            shutil.copy2(path, folder / path.name)
    # the local tasks but associative recall, which needs more single-token words than this 300-token BPE has
    results, _, card_path = evaluate_folder(folder, tasks="xlstm_heldout_ppl,xlstm_last_word", limit=2,
                                            batch_size=2)
    assert card_path == folder / "README.md"
    lm_eval_results = {(e["task_name"], e["metric_type"]): e["metric_value"] for e in card_eval_results(results)}
    assert {("xlstm_heldout_ppl", "bits_per_byte"), ("xlstm_last_word", "acc")} <= set(lm_eval_results)

    stage = tmp_path / "stage"
    assert push(folder, "someone/xlstm-evaluated", staging_dir=stage, dry_run=True) is None
    assert "would upload" in capsys.readouterr().out

    card = validate_model_card(stage)
    staged = {(r.task_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert staged[("Causal language modeling", "perplexity")] == pytest.approx(pretrain_results["perplexity"],
                                                                                abs=1e-4)
    assert {k: v for k, v in staged.items() if k in lm_eval_results} == lm_eval_results
    assert len(staged) == 1 + len(lm_eval_results)
    table = card.text.split("## Evaluation")[1].split("## Limitations")[0]
    assert "Held-out perplexity" in table and "xlstm_heldout_ppl" in table and "xlstm_last_word" in table
    stored = json.loads((stage / "model_card.json").read_text())
    assert stored["repo_id"] == "someone/xlstm-evaluated"
    assert {(e.get("task_name"), e["metric_type"]) for e in stored["eval_results"]} == set(staged)
