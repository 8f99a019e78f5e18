"""save_pretrained -> from_pretrained, in-process and in a fresh process through trust_remote_code."""

import json
import subprocess
import sys
import textwrap

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import VOCAB, WITHOUT_HF_XLSTM, tiny_model
from hf_xlstm import xLSTMForCausalLM


def test_save_and_load_in_process(style, tmp_path):
    model = tiny_model(style)
    ids = torch.randint(3, VOCAB, (2, 13))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    for loaded in (xLSTMForCausalLM.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
        assert isinstance(loaded, xLSTMForCausalLM)
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    loaded_config = AutoConfig.from_pretrained(tmp_path).to_dict()
    expected = model.config.to_dict()
    for d in (loaded_config, expected):
        d.pop("_name_or_path", None)
    assert loaded_config == expected


# Runs in a fresh interpreter in which hf_xlstm cannot be imported at all: the saved folder must be
# self-contained for transformers' remote-code loader.
FRESH_PROCESS = WITHOUT_HF_XLSTM + textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert not any(m == "hf_xlstm" or m.startswith("hf_xlstm.") for m in sys.modules)
    # the Triton kernels travel with the model code, for backend="triton"/"auto" on CUDA
    import os
    module_dir = os.path.dirname(sys.modules[type(model).__module__].__file__)
    for name in ("kernels.py", "ops.py", "mlstm_triton.py", "slstm_triton.py"):
        assert os.path.exists(os.path.join(module_dir, name)), name
    torch.save(model(ids).logits, folder + "/fresh_logits.pt")
    generated = model.generate(ids, max_new_tokens=3, do_sample=False)
    # a model loaded from remote code saves again (e.g. Trainer checkpoints of a Hub model) and reloads the same
    model.save_pretrained(folder + "/resaved")
    again = AutoModelForCausalLM.from_pretrained(folder + "/resaved", trust_remote_code=True)
    assert torch.equal(again(ids).logits, model(ids).logits)
    print(json.dumps(generated.tolist()))
    """
)


def test_fresh_process_trust_remote_code(style, tmp_path):
    model = tiny_model(style)
    ids = torch.randint(3, VOCAB, (2, 9))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path), json.dumps(ids.tolist())],
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "modules_cache")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "fresh_logits.pt"), model(ids).logits)
    generated = json.loads(result.stdout.strip().splitlines()[-1])
    assert generated == model.generate(ids, max_new_tokens=3, do_sample=False).tolist()
