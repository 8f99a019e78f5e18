"""The paper experiments (hf_xlstm.experiments, scripts/paper_*.py): the task generators and the metric on cases
worked out by hand, the Mamba scan against transformers' own, and each script's --quick run end to end (files
written, JSON shaped as documented; not accuracy)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_xlstm.cli import run
from hf_xlstm.experiments import formal_languages, mqar as mqar_experiment
from hf_xlstm.experiments.models import build_model, count_parameters, selective_scan_linear_time, xlstm_slstm_at
from hf_xlstm.experiments.runner import require_matplotlib
from hf_xlstm.experiments.training import final_loss
from hf_xlstm.experiments.tasks import (
    FORMAL_TASKS, IGNORE, MINUS, PLUS, TIMES, cycle_navigation, final_only, final_positions, modular_arithmetic, mqar,
    mqar_vocabulary, parity, scaled_accuracy,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------- generators
def test_parity_labels_are_the_running_parity():
    bits, labels = parity(200, 37, torch.Generator().manual_seed(0))
    assert bits.shape == labels.shape == (200, 37) and set(bits.unique().tolist()) == {0, 1}
    for row, label in zip(bits.tolist(), labels.tolist()):
        assert label == [sum(row[: t + 1]) % 2 for t in range(37)]


def test_cycle_navigation_labels_follow_the_moves():
    moves, labels = cycle_navigation(100, 30, torch.Generator().manual_seed(1))
    for row, label in zip(moves.tolist(), labels.tolist()):
        position, expected = 0, []
        for move in row:  # 0 stays, 1 steps forward, 2 steps back on a cycle of 5
            position = (position + {0: 0, 1: 1, 2: -1}[move]) % 5
            expected.append(position)
        assert label == expected


def test_modular_arithmetic_labels_are_the_value_with_precedence():
    ids, labels = modular_arithmetic(300, 21, torch.Generator().manual_seed(2))
    symbols = {PLUS: "+", MINUS: "-", TIMES: "*"}
    for row, label in zip(ids.tolist(), labels.tolist()):
        text = "".join(symbols.get(token, str(token)) for token in row)
        for t in range(21):
            if t % 2:
                assert row[t] in symbols and label[t] == IGNORE
            else:
                assert 0 <= row[t] < 5 and label[t] == eval(text[: t + 1]) % 5  # Python: * before + and -
    # Worked by hand: 2 + 3 * 4 - 1 = 13 = 3 (mod 5), not ((2 + 3) * 4 - 1) = 19 = 4.
    assert (eval("2+3*4-1") % 5, eval("(2+3)*4-1") % 5) == (3, 4)


def test_every_generator_is_reproducible_and_in_range():
    for task in FORMAL_TASKS.values():
        a = task.generate(8, 40, torch.Generator().manual_seed(3))
        b = task.generate(8, 40, torch.Generator().manual_seed(3))
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        ids, labels = a
        assert 0 <= ids.min() and ids.max() < task.num_symbols
        scored = labels[labels != IGNORE]
        assert 0 <= scored.min() and scored.max() < task.num_classes


def test_final_positions_and_final_only():
    labels = torch.tensor([[1, IGNORE, 0, IGNORE], [0, 1, 1, 0]])
    assert final_positions(labels).tolist() == [2, 3]
    assert final_only(labels).tolist() == [[IGNORE, IGNORE, 0, IGNORE], [IGNORE, IGNORE, IGNORE, 0]]
    with pytest.raises(ValueError, match="at least one labelled"):
        final_positions(torch.full((1, 3), IGNORE))


def test_mqar_answers_are_the_values_of_the_context_and_keys_are_not_reused():
    seq_len, pairs, vocab = 64, 8, 40
    ids, labels = mqar(50, seq_len, pairs, vocab, torch.Generator().manual_seed(4))
    keys, values = mqar_vocabulary(vocab)
    assert ids.shape == labels.shape == (50, seq_len)
    for row, label in zip(ids.tolist(), labels.tolist()):
        context = dict(zip(row[0: 2 * pairs: 2], row[1: 2 * pairs: 2]))
        assert len(context) == pairs  # distinct keys: no key is reused within a sequence
        assert all(k in keys for k in context) and all(v in values for v in context.values())
        queries = [t for t, y in enumerate(label) if y != IGNORE]
        assert sorted(row[t] for t in queries) == sorted(context)  # every key queried exactly once
        for t in queries:
            assert t >= 2 * pairs and label[t] == context[row[t]] and row[t + 1] == label[t]
        answered = set(queries) | {t + 1 for t in queries}
        assert all(row[t] == 0 for t in range(2 * pairs, seq_len) if t not in answered)  # the rest is filler


def test_mqar_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="needs at least 64"):
        mqar(1, 63, 16, 256, torch.Generator())
    with pytest.raises(ValueError, match="num_pairs must be in"):
        mqar(1, 400, 5, 10, torch.Generator())  # a vocabulary of 10 has 4 keys


# ---------------------------------------------------------------------------------------------------- metric
def test_scaled_accuracy_on_known_predictions():
    targets = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])
    assert scaled_accuracy(targets, targets, 2) == 1.0
    assert scaled_accuracy(1 - targets, targets, 2) == -1.0
    assert scaled_accuracy(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), targets, 2) == 0.0  # half right: chance
    five = torch.arange(10) % 5
    assert scaled_accuracy(five, five, 5) == 1.0
    assert scaled_accuracy(torch.where(torch.arange(10) < 6, five, (five + 1) % 5), five, 5) == pytest.approx(0.5)
    assert scaled_accuracy((five + 1) % 5, five, 5) == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="same, non-empty shape"):
        scaled_accuracy(targets[:3], targets, 2)


def test_a_diverged_run_records_no_loss():
    assert final_loss([2.0] * 9 + [1.0]) == 1.0  # the mean of the last tenth
    assert final_loss([1.0, float("nan")]) is None  # null in the JSON, which has no NaN


# ---------------------------------------------------------------------------------------------------- models
def test_xlstm_stack_notation():
    assert xlstm_slstm_at("xlstm[0:1]", 2) == [0, 1]
    assert xlstm_slstm_at("xlstm[1:1]", 2) == [1]
    assert xlstm_slstm_at("xlstm[1:0]", 2) == []
    assert xlstm_slstm_at("xlstm[7:1]", 16) == [7, 15]
    with pytest.raises(ValueError, match="Unknown model 'gpt2'"):
        xlstm_slstm_at("gpt2", 2)


def test_every_family_builds_and_runs_at_comparable_size():
    counts = {}
    for name in formal_languages.MODELS:
        model = build_model(name, vocab_size=10, width=64, num_layers=2, max_length=64)
        assert model(input_ids=torch.randint(0, 10, (2, 9)), use_cache=False).logits.shape == (2, 9, 10)
        counts[name] = count_parameters(model)
    # The baselines sit between the smallest (mLSTM only) and the largest (sLSTM only) xLSTM.
    assert counts["xlstm[1:0]"] < min(counts["llama"], counts["mamba"])
    assert max(counts["llama"], counts["mamba"]) < counts["xlstm[0:1]"]


def test_mamba_scan_matches_transformers():
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan

    g = torch.Generator().manual_seed(5)
    B, I, T, N = 2, 6, 13, 4
    inputs = [torch.randn(B, I, T, generator=g), torch.randn(B, I, T, generator=g), -torch.rand(I, N, generator=g),
              torch.randn(B, N, T, generator=g), torch.randn(B, N, T, generator=g), torch.randn(I, generator=g),
              torch.randn(B, I, T, generator=g), torch.randn(I, generator=g)]
    weights = torch.randn(B, I, T, generator=g)
    results = []
    for scan in (mamba_selective_scan, selective_scan_linear_time):
        leaves = [x.clone().requires_grad_() for x in inputs]
        x, dt, A, Bm, C, D, z, bias = leaves
        out, state = scan(x, dt, A, Bm, C, D=D, z=z, delta_bias=bias, delta_softplus=True, return_last_state=True)
        grads = torch.autograd.grad((out * weights).sum() + state.sum(), leaves)
        results.append((out, state, grads))
    (out_a, state_a, grads_a), (out_b, state_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(state_b, state_a)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a)


def test_a_run_with_the_papers_supervision():
    """--supervision final: only each sequence's last answer is scored in training (the path the quick runs skip)."""
    job = dict(task="modular_arithmetic", model="xlstm[1:1]", lr=3e-3, seed=0, width=16, layers=2, xlstm_heads=1,
               steps=3, batch_size=4, weight_decay=0.1, supervision="final", train_min_length=3, train_max_length=8,
               eval_max_length=12, eval_lengths=[9, 12], eval_sequences=4)
    steps, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # as the scripts run: two threads on a model this small wait on each other at every op
    try:
        run = formal_languages.run_one(job, steps.append)
    finally:
        torch.set_num_threads(threads)
    assert sum(steps) == 3 and set(run["scaled_accuracy_per_length"]) == {"9", "12"}
    assert -0.25 <= run["scaled_accuracy"] <= 1 and run["parameters"] > 0


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'hf-xlstm\[plots\]'"):
        require_matplotlib()


# ---------------------------------------------------------------------------------------------------- scripts
@pytest.mark.parametrize("main, argv, needle", [
    (formal_languages.main, ["--tasks", "parity", "--models", "xlstm[2]"], "Unknown model 'xlstm[2]'"),
    (formal_languages.main, ["--width", "40"], "--width must be a positive multiple of 16"),
    (formal_languages.main, ["--train_min_length", "50"], "--train_min_length 50 exceeds --train_max_length 40"),
    (formal_languages.main, ["--tasks", "dyck"], "argument --tasks: invalid choice: 'dyck'"),
    (mqar_experiment.main, ["--settings", "64:20"], "cannot hold 20 pairs"),
    (mqar_experiment.main, ["--settings", "256:40"], "num_pairs must be in [1, 31]"),
    (mqar_experiment.main, ["--settings", "64x4"], "CONTEXT:PAIRS"),
])
def test_a_bad_flag_is_one_clear_line(main, argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(main, argv)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1 and needle in error, error


@pytest.mark.parametrize("script, name, check", [
    ("paper_formal_languages.py", "formal_languages",
     lambda r: {(x["task"], x["model"]) for x in r["best"]} == {(t, m) for t in FORMAL_TASKS
                                                               for m in formal_languages.MODELS}),
    ("paper_mqar.py", "mqar", lambda r: {x["model"] for x in r["runs"]} == set(mqar_experiment.MODELS)
     and all(0 <= x["accuracy"] <= 1 for x in r["runs"])),
    ("paper_length_extrapolation.py", "length_extrapolation",
     lambda r: [x["model"] for x in r["runs"]] == ["xlstm[1:0]", "llama"]
     and all(set(x["perplexity"]) == {"16", "32", "64"} for x in r["runs"])),
])
def test_quick_run_writes_json_table_and_plot(script, name, check, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--quick", "--output_dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["experiment"] == name and record["runs"] and record["machine"]["cores"] >= 1
    assert check(record), record
    assert (tmp_path / f"{name}.md").read_text().startswith("# ")
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
