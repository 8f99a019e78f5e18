"""hf_xlstm in vLLM (hf_xlstm.vllm_plugin): greedy tokens equal hf_xlstm's generate() in both block styles, with
chunked prefill, mixed prefill/decode steps and more requests than max_num_seqs; seeded sampling is reproducible;
transformers' xLSTM folders load; `vllm serve FOLDER` answers /v1/completions.

Runs where vLLM is installed (the CI leg with vllm-cpu; see the notes on serving) and with hf_xlstm's
`vllm.general_plugins` entry point installed, which is what loads the plugin in vLLM's own processes. Engines
are shared per module (each takes 15-35 s to start on CPU).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import entry_points

import pytest
import torch

vllm = pytest.importorskip("vllm")

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM  # noqa: E402

if not any(ep.value == "hf_xlstm.vllm_plugin:register" for ep in entry_points(group="vllm.general_plugins")):
    pytest.fail("vLLM is installed but hf_xlstm's vllm.general_plugins entry point is not: reinstall hf_xlstm "
                "(pip install -e .) in this environment.", pytrace=False)

# Engine settings shared by the tests: a small token budget, so prompts longer than 16 tokens are prefilled in
# chunks and steps mix new prompts with running decodes; fewer sequence slots than requests.
ENGINE = dict(dtype="float32", max_model_len=256, max_num_batched_tokens=16, max_num_seqs=3,
              kv_cache_memory_bytes=64 * 2**20, seed=0)
PROMPT_LENGTHS = (1, 5, 17, 40, 9, 64, 2)
OUTPUT_LENGTHS = (12, 3, 9, 16, 1, 7, 20)


def make_tokenizer():
    """A byte-level BPE of 300 tokens (vLLM needs a tokenizer in the folder; the tests feed token ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>")


def tiny_model(style: str, vocab_size: int, seed: int = 0) -> xLSTMForCausalLM:
    """xLSTM[2:1] (paper, sLSTM block in the middle) or the 7B block shape, 3 blocks. No eos_token_id: generate()
    then runs exactly max_new_tokens, as vLLM does with ignore_eos. Weights perturbed so that every gate matters."""
    kwargs = dict(vocab_size=vocab_size, hidden_size=32, num_blocks=3, num_heads=2, chunk_size=16, backend="auto",
                  pad_token_id=1, bos_token_id=0, eos_token_id=None)
    if style == "paper":
        kwargs.update(slstm_at=[1])
    else:
        # q/k/v widths of 64: what transformers' xLSTM format takes (test_transformers_xlstm_folder)
        kwargs.update(block_style="large", output_logit_soft_cap=30.0, hidden_size=64, qk_dim_factor=1.0)
    torch.manual_seed(seed)
    model = xLSTMForCausalLM(xLSTMConfig(**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def prompts(vocab_size: int, lengths=PROMPT_LENGTHS, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab_size, (n,), generator=g).tolist() for n in lengths]


def greedy_reference(model, prompt_ids, max_new_tokens) -> list[list[int]]:
    """hf_xlstm generate(), one prompt at a time."""
    return [model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False)[0, len(p):].tolist()
            for p, n in zip(prompt_ids, max_new_tokens)]


def run(llm, prompt_ids, params) -> list[list[int]]:
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def greedy(n):
    return vllm.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory):
    """{style: (folder, model)} for both block styles, saved with save_pretrained as users do."""
    out = {}
    for style in ("paper", "large"):
        folder = tmp_path_factory.mktemp(f"vllm-{style}")
        model = tiny_model(style, len(tokenizer))
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[style] = (folder, model)
    return out


@pytest.fixture(scope="module", params=["paper", "large"])
def engine(request, saved):
    """(vLLM engine, hf_xlstm model) per block style, one engine per style for the whole module."""
    folder, model = saved[request.param]
    llm = vllm.LLM(model=str(folder), **ENGINE)
    yield llm, model
    llm.llm_engine.engine_core.shutdown()
    del llm


def test_greedy_equals_generate_chunked_prefill_and_more_requests_than_slots(engine):
    llm, model = engine
    ids = prompts(model.config.vocab_size)
    assert max(PROMPT_LENGTHS) > ENGINE["max_num_batched_tokens"] and len(ids) > ENGINE["max_num_seqs"]
    reference = greedy_reference(model, ids, OUTPUT_LENGTHS)
    got = run(llm, ids, [greedy(n) for n in OUTPUT_LENGTHS])
    assert got == reference


def test_greedy_equals_generate_many_prefills_per_step(saved):
    """A larger token budget: each step prefills many prompts of mixed lengths, in padded batches of similar
    lengths (hf_xlstm.vllm_plugin.prefill_groups), beside chunked ones and running decodes. The paper style: its
    convs and sLSTM see the padding masks too."""
    folder, model = saved["paper"]
    llm = vllm.LLM(model=str(folder), **{**ENGINE, "max_num_batched_tokens": 256, "max_num_seqs": 12})
    try:
        g = torch.Generator().manual_seed(6)
        lengths = torch.randint(1, 80, (16,), generator=g).tolist()
        outputs = torch.randint(1, 14, (16,), generator=g).tolist()
        ids = prompts(model.config.vocab_size, lengths=lengths, seed=6)
        assert run(llm, ids, [greedy(n) for n in outputs]) == greedy_reference(model, ids, outputs)
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm


def test_compiled_and_eager_engines_agree_with_generate(saved, monkeypatch):
    """vLLM's default compiles the model (torch.compile of everything but the mixers, which run behind the custom op
    vllm::hf_xlstm_mixer); --enforce-eager runs it as it is. Both give generate()'s greedy tokens. The engine runs in
    this process here, so that vLLM's compilation counter shows the model was compiled, not skipped."""
    from vllm.compilation.counter import compilation_counter

    from hf_xlstm.vllm_plugin import MIXER_OP

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    folder, model = saved["large"]
    ids = prompts(model.config.vocab_size, lengths=(23, 4, 9), seed=7)
    reference = greedy_reference(model, ids, [10, 10, 10])
    for enforce_eager in (False, True):
        seen = compilation_counter.num_models_seen
        compiled = compilation_counter.num_aot_compiles + compilation_counter.num_aot_artifacts_loaded
        llm = vllm.LLM(model=str(folder), enforce_eager=enforce_eager, **ENGINE)
        try:
            config = llm.llm_engine.vllm_config.compilation_config
            if enforce_eager:
                assert compilation_counter.num_models_seen == seen
            else:
                assert compilation_counter.num_models_seen == seen + 1  # the model took vLLM's compilation
                # compiled now, or loaded from vLLM's compile cache
                assert compilation_counter.num_aot_compiles + compilation_counter.num_aot_artifacts_loaded > compiled
                assert config.splitting_ops == [MIXER_OP]
            assert run(llm, ids, greedy(10)) == reference
        finally:
            llm.llm_engine.engine_core.shutdown()
            del llm


def test_prefix_caching_is_refused(saved):
    folder, _ = saved["large"]
    with pytest.raises(ValueError, match="hf_xlstm models in vLLM do not support prefix caching"):
        vllm.LLM(model=str(folder), enable_prefix_caching=True, **ENGINE)


def test_prefill_groups():
    from hf_xlstm.vllm_plugin import prefill_groups

    lengths = [3, 200, 150, 5, 190, 100, 17, 1]
    groups = prefill_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # each prefill once
    assert groups == [[1, 4], [2], [5], [6, 3, 0, 7]]  # longest first; within 80 % or 16 tokens of the group's longest
    assert prefill_groups([7]) == [[0]] and prefill_groups([]) == []


def test_step_layout():
    """One step's flat batch (2 decodes, then prefills of 5, 2 and 20 tokens) as the batches the mixers take: every
    token once, in its row and step; who starts from zero (a sequence whose length is this step's query: new, or
    recomputed after preemption) and who continues from its slot (decodes, a later chunk of a prompt)."""
    from types import SimpleNamespace

    from hf_xlstm.vllm_plugin import StepLayout

    lengths = [1, 1, 5, 2, 20]
    starts = torch.tensor([0, 1, 2, 7, 9, 29])
    metadata = SimpleNamespace(num_decodes=2, num_prefills=3, query_start_loc=starts,
                               seq_lens=torch.tensor([10, 5, 5, 30, 20]))  # the 2-token prefill is a later chunk
    layout = StepLayout().of(metadata, torch.device("cpu"))
    assert layout.num_requests == 5
    assert [g.rows.tolist() for g in layout.groups] == [[0, 1], [4, 2], [3]]  # decodes; prefills longest first
    assert [g.carry if not isinstance(g.carry, torch.Tensor) else g.carry.tolist() for g in layout.groups] == \
        [True, None, True]
    seen = []
    for g in layout.groups:
        for r, row in enumerate(g.rows.tolist()):
            real = lengths[row]
            assert g.index.shape[1] >= real
            assert g.index[r, :real].tolist() == list(range(starts[row], starts[row] + real))  # the row's tokens
            if g.mask is not None:
                assert g.mask[r].tolist() == [True] * real + [False] * (g.index.shape[1] - real)
        real_positions = g.index.reshape(-1) if g.mask is None else g.index[g.mask]
        assert g.destination.tolist() == real_positions.tolist()
        seen += g.destination.tolist()
    assert sorted(seen) == list(range(29))  # every token of the step once
    groups = layout.groups
    assert layout.of(metadata, torch.device("cpu")).groups is groups  # the other blocks of the step reuse it
    next_step = SimpleNamespace(**{**vars(metadata), "seq_lens": torch.tensor([11, 6, 5, 30, 20])})
    assert layout.of(next_step, torch.device("cpu")).groups is not groups


def test_state_slots_are_reused_cleanly(engine):
    """A second batch runs in slots the first one left dirty; the same prompt alone and inside a batch agree."""
    llm, model = engine
    ids = prompts(model.config.vocab_size, lengths=(30, 3, 18, 6), seed=2)
    first = run(llm, ids, greedy(8))
    again = run(llm, ids[::-1], greedy(8))[::-1]
    alone = run(llm, ids[:1], greedy(8))
    assert first == again
    assert alone[0] == first[0]
    assert first == greedy_reference(model, ids, [8] * len(ids))


def test_seeded_sampling_is_reproducible(engine):
    # Prompts that fit one step's token budget together: vLLM 0.32 on CPU cannot run a seeded request whose prompt
    # is prefilled in chunks (it rewinds the request's generator, and a CPU generator has no offset: the engine
    # dies with "CPU Generator does not use offset"), whatever the model.
    llm, model = engine
    ids = prompts(model.config.vocab_size, lengths=(7, 5, 2), seed=3)
    params = [vllm.SamplingParams(max_tokens=10, temperature=1.0, top_k=50, seed=s, ignore_eos=True)
              for s in (11, 12, 13)]
    first = run(llm, ids, params)
    second = run(llm, ids[::-1], params[::-1])[::-1]  # another batch order: per-request seeds decide
    assert first == second
    assert run(llm, ids[1:2], params[1:2])[0] == first[1]
    other_seed = vllm.SamplingParams(max_tokens=10, temperature=1.0, top_k=50, seed=99, ignore_eos=True)
    assert run(llm, ids[1:2], other_seed)[0] != first[1]


def test_transformers_xlstm_folder(saved, tmp_path):
    """A folder in transformers' own xLSTM format (model_type "xlstm") loads through hf_xlstm's conversion."""
    from hf_xlstm.conversion import save_as_transformers

    folder, model = saved["large"]
    converted = save_as_transformers(model, tmp_path / "transformers-format")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (converted / name).write_bytes((folder / name).read_bytes())
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "xlstm" and config["architectures"] == ["xLSTMForCausalLM"]
    llm = vllm.LLM(model=str(converted), **ENGINE)
    try:
        ids = prompts(model.config.vocab_size, lengths=(4, 21), seed=4)
        assert run(llm, ids, greedy(6)) == greedy_reference(model, ids, [6, 6])
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


# `vllm serve ...` as the `vllm` command runs it. The command reads the version of the distribution "vllm" as it
# starts; vllm-cpu (0.32.0) ships the package as "vllm-cpu", so there the bare command stops with
# PackageNotFoundError: the version is looked up under that name instead, with the "+cpu" that vllm-cpu's own
# platform detection adds (vllm/platforms/__init__.py); nothing else changes.
VLLM_COMMAND = """
import importlib.metadata as metadata, sys
version = metadata.version
def version_of(name):
    try:
        return version(name)
    except metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return version("vllm-cpu") + "+cpu"
metadata.version = version_of
from vllm.entrypoints.cli.main import main
sys.argv[0] = "vllm"
sys.exit(main())
"""


def test_vllm_serve_answers_completions(saved, tokenizer, tmp_path):
    folder, model = saved["paper"]
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-c", VLLM_COMMAND, "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
         "--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "4",
         "--kv-cache-memory-bytes", str(64 * 2**20)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"vllm serve exited:\n{(tmp_path / 'serve.log').read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"vllm serve not up:\n{(tmp_path / 'serve.log').read_text()[-4000:]}"
            time.sleep(1)
        ids = prompts(model.config.vocab_size, lengths=(12,), seed=5)[0]
        answer = _post(f"{base}/v1/completions", dict(model=str(folder), prompt=ids, max_tokens=6, temperature=0,
                                                       ignore_eos=True))
        assert answer["usage"]["completion_tokens"] == 6
        reference = greedy_reference(model, [ids], [6])[0]
        assert answer["choices"][0]["text"] == tokenizer.decode(reference)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and the engine processes it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


# vllm-cpu requires CUDA builds of these, which the CPU install removes (they break `import transformers` beside the
# CPU torch, and PyPI has no CPU builds of them for its torch): the only complaints `pip check` may have.
VLLM_CPU_MEDIA_PACKAGES = ("torchvision", "torchaudio", "torchcodec")


def test_pip_check_is_clean_for_hf_xlstm():
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    problems = [line for line in done.stdout.splitlines() + done.stderr.splitlines()
                if line.strip() and line.strip() != "No broken requirements found."
                and not (line.startswith("vllm-cpu ") and line.endswith("which is not installed.")
                         and any(f" requires {name}," in line for name in VLLM_CPU_MEDIA_PACKAGES))]
    assert problems == [], "\n".join(problems)
