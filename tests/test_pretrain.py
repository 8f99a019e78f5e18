"""Pretraining (hf_xlstm.pretraining, scripts/pretrain.py): presets, the embedded corpus, the tokenizer, packing,
the unigram baseline, a short Trainer run that leaves a Hub-ready folder, and resuming from a checkpoint."""

import json
import math
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_xlstm import xLSTMForCausalLM
from hf_xlstm.presets import PRESETS, preset_config
from hf_xlstm.data import pack_documents, stdlib_corpus, train_bpe_tokenizer
from hf_xlstm.pretraining import ModelArguments, config_overrides, parse_args, run_pretraining, unigram_perplexity
from pretrain_run import SHORT_RUN, short_run

CODE_FILES = ("configuration_xlstm.py", "modeling_xlstm.py", "cache_xlstm.py", "xlstm_remote_code.py", "xlstm_ops.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return short_run(tmp_path_factory.getbasetemp())


# ---------------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name, low, high", [
    # the paper's counts (untied embeddings): 163.8M, 406.6M, 840.4M, 1422.6M; xLSTM-7B: 6.9B
    ("xlstm[1:0]-125m", 160e6, 168e6), ("xlstm[7:1]-125m", 160e6, 168e6), ("xlstm[1:0]-350m", 400e6, 415e6),
    ("xlstm[7:1]-760m", 830e6, 850e6), ("xlstm[1:0]-1.3b", 1.40e9, 1.45e9), ("xlstm-7b", 6.8e9, 7.0e9),
])
def test_preset_sizes(name, low, high):
    config = preset_config(name)
    with torch.device("meta"):  # shapes only, no memory
        model = xLSTMForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert low <= n <= high, f"{name}: {n / 1e6:.0f}M parameters"
    if "[7:1]" in name:
        assert len(config.slstm_at) * 8 == config.num_blocks and config.slstm_at[0] == 3
    if "[1:0]" in name:
        assert config.slstm_at == []


def test_every_preset_builds_and_bad_names_say_which_exist():
    assert {"xlstm[1:0]-125m", "xlstm[7:1]-1.3b", "xlstm-7b", "tiny", "micro"} <= set(PRESETS)
    for name in PRESETS:
        preset_config(name, vocab_size=128)
    assert preset_config("xlstm-7b").block_style == "large"
    with pytest.raises(ValueError, match="Known presets: .*xlstm-7b"):
        preset_config("xlstm-3b")


def test_config_flags_and_overrides():
    args = ModelArguments(hidden_size=64, slstm_at="none", config_overrides="num_blocks=3,slstm_at=[0;2],chunk_size=8")
    assert config_overrides(args) == {"hidden_size": 64, "num_blocks": 3, "slstm_at": [], "chunk_size": 8}
    assert config_overrides(ModelArguments(config_overrides="slstm_at=[0;2]")) == {"slstm_at": [0, 2]}
    with pytest.raises(ValueError, match="Unknown config fields"):
        config_overrides(ModelArguments(config_overrides="hiden_size=3"))
    with pytest.raises(ValueError, match="field=value"):
        config_overrides(ModelArguments(config_overrides="hidden_size"))


def test_default_arguments_are_the_cpu_run():
    model_args, data_args, training_args = parse_args([])
    assert model_args.preset == "tiny" and data_args.dataset_name is None and not data_args.train_files
    # the values the README describes for the main job
    assert training_args.output_dir == "outputs/xlstm-tiny-stdlib" and training_args.max_steps == 700
    assert training_args.per_device_train_batch_size == 16 and data_args.block_size == 128
    assert model_args.tokenizer_vocab_size == 4096 and data_args.max_corpus_chars == 3_000_000
    assert training_args.cpu_time_limit_minutes == 8 and PRESETS["tiny"]["slstm_at"] == [1]
    assert training_args.bf16 == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


# ---------------------------------------------------------------------------------------------------- data
def test_stdlib_corpus_is_deterministic_library_code():
    docs = stdlib_corpus(max_chars=200_000)
    assert docs == stdlib_corpus(max_chars=200_000)
    assert 200_000 <= sum(len(d["text"]) for d in docs) < 200_000 + 60_000
    root = Path(sysconfig.get_paths()["stdlib"])
    for doc in docs:
        path = root / doc["path"]
        assert path.read_text(encoding="utf-8") == doc["text"]
        assert "test" not in Path(doc["path"]).parts[:-1] and not Path(doc["path"]).name.startswith("test_")
    # a mix of packages, not the alphabetically first files
    assert len({Path(d["path"]).parts[0] for d in docs}) > 3


def test_local_text_files(tmp_path):
    for i in range(6):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}\n" + "alpha beta gamma delta\n" * 40)
    out = tmp_path / "out"
    results = run_pretraining(*parse_args([
        *SHORT_RUN, "--train_files", *[str(p) for p in sorted(tmp_path.glob("*.txt"))], "--validation_fraction",
        "0.2", "--max_steps", "2", "--save_steps", "100", "--output_dir", str(out)]))
    card = (out / "README.md").read_text()
    assert "Local files: doc0.txt" in card and "training documents: 4" in card
    assert math.isfinite(results["perplexity"])


def test_bad_data_arguments_are_named(tmp_path):
    (tmp_path / "a.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="unsupported file type '.xml'"):
        run_pretraining(*parse_args([*SHORT_RUN, "--train_files", str(tmp_path / "a.xml"),
                                     "--output_dir", str(tmp_path / "o")]))
    with pytest.raises(ValueError, match="smaller block size \\(--block_size\\)"):
        run_pretraining(*parse_args([*SHORT_RUN, "--block_size", "100000", "--output_dir", str(tmp_path / "o")]))
    with pytest.raises(ValueError, match="at least 2 documents"):
        run_pretraining(*parse_args([*SHORT_RUN, "--max_corpus_chars", "10", "--output_dir", str(tmp_path / "o")]))


def test_tokenizer_and_packing():
    texts = ["def f(x):\n    return x + 1\n", "import os\nprint(os.sep)\n", "class A:\n    pass\n"] * 20
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    assert len(tokenizer) <= 300 and tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    text = "naïve → ünïcödé bytes\t"  # nothing in training: byte-level, so still lossless
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    docs = Dataset.from_dict({"text": texts[:3]})
    stream = list(np.concatenate([tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts[:3]]))
    n = len(stream) // 8
    plain = pack_documents(docs, tokenizer, block_size=8, boundaries=False)
    assert plain["input_ids"] == [stream[i * 8:(i + 1) * 8] for i in range(n)]
    assert plain["labels"] == plain["input_ids"] and "position_ids" not in plain.column_names
    # with document boundaries (the default): positions restart after every eos and at each block start; the first
    # token of a document is not a target (nothing before it in its document predicts it)
    blocks = pack_documents(docs, tokenizer, block_size=8)
    assert blocks["input_ids"] == plain["input_ids"]
    eos = tokenizer.eos_token_id
    for ids, positions, labels in zip(blocks["input_ids"], blocks["position_ids"], blocks["labels"]):
        expected, p = [], 0
        for token in ids:
            expected.append(p)
            p = 0 if token == eos else p + 1
        assert positions == expected
        assert labels == [-100 if t and p == 0 else token for t, (token, p) in enumerate(zip(ids, positions))]
    assert sum(p == 0 for row in blocks["position_ids"] for p in row[1:]) >= 2  # documents start inside blocks


def test_unigram_perplexity_by_hand():
    train = Dataset.from_dict({"input_ids": [[0, 0, 1, 2]]})
    evaluation = Dataset.from_dict({"input_ids": [[3, 0, 1, 3], [1, 2, 2, 0]], "labels": [[3, 0, 1, -100],
                                                                                        [1, 2, 2, 0]]})
    # add-one counts over a vocabulary of 4: token 0 -> 3, 1 -> 2, 2 -> 2, 3 -> 1 (total 8); the targets are the
    # labels after each block's first position, -100 left out: 0 1 2 2 0
    nll = -(2 * math.log(3 / 8) + math.log(2 / 8) + 2 * math.log(2 / 8)) / 5
    assert unigram_perplexity(train, evaluation, vocab_size=4) == pytest.approx(math.exp(nll), rel=1e-12)


# ---------------------------------------------------------------------------------------------------- the run
def test_short_run_leaves_a_hub_ready_folder(run):
    folder, results = run
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "README.md", "results.json", *CODE_FILES):
        assert (folder / name).is_file(), name
    assert not list(folder.glob("pytorch_model*.bin"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "hf_xlstm" and config["use_cache"] is True
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_xlstm.xLSTMForCausalLM"
    tokenizer_vocab = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    assert config["vocab_size"] == tokenizer_vocab <= 300
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == config["eos_token_id"] and generation["do_sample"] is True
    assert (folder / "checkpoint-3").is_dir() and (folder / "checkpoint-6").is_dir()
    assert results["global_step"] == 6 and [s for s, _ in results["logged_losses"]] == [1, 2, 3, 4, 5, 6]
    assert math.isfinite(results["perplexity"]) and math.isfinite(results["unigram_perplexity"])
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert results["stopped_by_time_limit"] is False
    assert results["samples"][0].startswith("def ") and len(results["samples"]) == 1
    assert results["sampling"] == ("sampled with temperature 0.8, top-k 40, seed 0 + prompt number, 8 new tokens "
                                   "per prompt")
    assert json.loads((folder / "results.json").read_text())["perplexity"] == results["perplexity"]


def test_resume_continues_with_the_same_losses(run, tmp_path):
    folder, results = run
    resumed = run_pretraining(*parse_args([*SHORT_RUN, "--output_dir", str(tmp_path),
                                           "--resume_from_checkpoint", str(folder / "checkpoint-3")]))
    # the log holds the checkpoint's history (steps 1-3) and the steps trained after resuming (4-6)
    assert [s for s, _ in resumed["logged_losses"]] == [1, 2, 3, 4, 5, 6]
    expected = dict(results["logged_losses"])
    for step, loss in resumed["logged_losses"][3:]:
        assert abs(loss - expected[step]) <= 1e-5, (step, loss, expected[step])
    assert abs(resumed["eval_loss"] - results["eval_loss"]) <= 1e-5
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        run_pretraining(*parse_args([*SHORT_RUN, "--output_dir", str(tmp_path / "x"),
                                     "--resume_from_checkpoint", str(tmp_path / "missing")]))


def test_resume_last_finds_the_newest_checkpoint(run, tmp_path):
    folder, results = run
    copy = tmp_path / "interrupted"
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "checkpoint-6")  # as if the run had stopped after the checkpoint at step 3
    resumed = run_pretraining(*parse_args([*SHORT_RUN, "--output_dir", str(copy), "--resume_from_checkpoint", "last"]))
    assert resumed["global_step"] == 6
    for (step, loss), (step_0, loss_0) in zip(resumed["logged_losses"], results["logged_losses"], strict=True):
        assert step == step_0 and abs(loss - loss_0) <= 1e-5
    with pytest.raises(ValueError, match="no checkpoint-\\* folder"):
        run_pretraining(*parse_args([*SHORT_RUN, "--output_dir", str(tmp_path / "empty"),
                                     "--resume_from_checkpoint", "last"]))


def test_script_is_a_thin_wrapper():
    script = (Path(__file__).parents[1] / "scripts" / "pretrain.py").read_text()
    assert "from hf_xlstm.pretraining import main" in script and len(script.splitlines()) < 30
    assert sys.executable  # the script runs in subprocess tests (test_ddp.py)


def test_cpu_time_limit_stops_training_saves_a_checkpoint_and_resumes_exactly(run, tmp_path, capsys):
    _, uninterrupted = run
    results = run_pretraining(*parse_args([*SHORT_RUN, "--cpu_time_limit_minutes", "1e-6", "--save_steps", "100",
                                           "--output_dir", str(tmp_path)]))
    assert results["stopped_by_time_limit"] and results["global_step"] == 1
    out = capsys.readouterr().out
    assert "time limit: training stopped at step 1 of 6" in out and "--resume_from_checkpoint last" in out
    assert "[time limit] step 1/6" in out  # where the run stands against the limit, at every log
    assert "stopped by the CPU time limit" in (tmp_path / "README.md").read_text()
    assert math.isfinite(results["perplexity"])  # evaluated and saved all the same
    assert (tmp_path / "checkpoint-1").is_dir()  # the stop saved a checkpoint (save_steps is 100)
    resumed = run_pretraining(*parse_args([*SHORT_RUN, "--cpu_time_limit_minutes", "0", "--output_dir",
                                           str(tmp_path), "--resume_from_checkpoint", "last"]))
    assert resumed["global_step"] == 6 and not resumed["stopped_by_time_limit"]
    for (step, loss), (step_0, loss_0) in zip(resumed["logged_losses"], uninterrupted["logged_losses"], strict=True):
        assert step == step_0 and abs(loss - loss_0) <= 1e-5


def test_dataset_folder_config_file_and_json_arguments(run, tmp_path):
    folder, _ = run
    data = tmp_path / "data"
    data.mkdir()
    lines = lambda n: "".join(json.dumps({"content": f"def f{i}(x):\n    return x * {i}\n" * 8}) + "\n"  # noqa: E731
                              for i in range(n))
    (data / "train.jsonl").write_text(lines(12))
    (data / "validation.jsonl").write_text(lines(3))
    # a dataset by name (here a local folder with train/validation files), the model from a config file plus a
    # flag, the tokenizer of the short run, all from a JSON arguments file
    from hf_xlstm.pretraining import _parse_value  # the flag-string typing the script itself uses

    arguments = dict(zip(SHORT_RUN[::2], SHORT_RUN[1::2]))
    arguments = {k.lstrip("-"): _parse_value(v) for k, v in arguments.items() if k not in ("--preset", "--sample_prompts")}
    arguments.update(dataset_name=str(data), text_column="content", config=str(folder / "config.json"),
                     num_blocks=1, slstm_at="none", tokenizer_name=str(folder), max_steps=2,
                     output_dir=str(tmp_path / "out"), sample_prompts=["def "])
    (tmp_path / "args.json").write_text(json.dumps(arguments))
    results = run_pretraining(*parse_args([str(tmp_path / "args.json")]))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    source = json.loads((folder / "config.json").read_text())
    assert config["num_blocks"] == 1 and config["slstm_at"] == [] and config["hidden_size"] == source["hidden_size"]
    assert (tmp_path / "out" / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "training documents: 12" in card and "held-out documents: 3" in card
    assert math.isfinite(results["perplexity"])


def test_continue_from_saved_weights(run, tmp_path):
    from safetensors.torch import load_file

    folder, _ = run
    out = tmp_path / "continued"
    # learning rate 0: one step leaves the loaded weights as they were; the tokenizer comes with the model
    run_pretraining(*parse_args([*SHORT_RUN, "--model_name_or_path", str(folder), "--max_steps", "1",
                                 "--learning_rate", "0", "--weight_decay", "0", "--output_dir", str(out)]))
    before, after = load_file(folder / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (out / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()


def test_fsdp_processes_beyond_the_first_build_the_architecture_on_meta(run):
    """What an --fsdp run's processes other than 0 build: the same architecture, nothing in memory (their shards
    are filled from process 0), from a saved folder and from a preset alike."""
    from transformers import AutoTokenizer

    from hf_xlstm.pretraining import build_model

    folder, _ = run
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for model_args in (ModelArguments(model_name_or_path=str(folder)), ModelArguments(preset="tiny")):
        real, meta = (build_model(model_args, tokenizer, on_meta=on_meta) for on_meta in (False, True))
        assert all(p.is_meta for p in meta.parameters()) and not any(p.is_meta for p in real.parameters())
        fields = [{k: v for k, v in m.config.to_dict().items() if k != "_name_or_path"} for m in (meta, real)]
        assert fields[0] == fields[1]
        assert {n: p.shape for n, p in meta.named_parameters()} == {n: p.shape for n, p in real.named_parameters()}


def test_each_prompt_samples_with_its_own_seed(run):
    # the same prompt twice: two different continuations (a shared stream, or a cache that lost its state,
    # gave every sample the same ending)
    from hf_xlstm.data import load_tokenizer
    from hf_xlstm.pretraining import sample_generations

    folder, _ = run
    model = xLSTMForCausalLM.from_pretrained(folder)
    first, second = sample_generations(model, load_tokenizer(folder), ["def ", "def "], max_new_tokens=12)
    assert first != second
    assert sample_generations(model, load_tokenizer(folder), ["def "], max_new_tokens=12) == [first]
