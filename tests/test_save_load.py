"""save_pretrained -> from_pretrained, in-process and in a fresh process through trust_remote_code."""

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

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
    for name in ("xlstm_ops.py", "xlstm_mlstm_triton.py", "xlstm_slstm_triton.py"):
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


def test_weights_have_the_mode_of_the_other_files(style, tmp_path):
    # safetensors >= 0.8 writes 0600; the folder's other files get the umask's mode
    model = tiny_model(style)
    old_umask = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "saved")
    finally:
        os.umask(old_umask)
    folder = tmp_path / "saved"
    mode = (folder / "config.json").stat().st_mode & 0o777
    assert mode == 0o644
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == mode
    for code_file in folder.glob("*.py"):
        assert code_file.stat().st_mode & 0o777 == mode, code_file.name


# A folder written by hf_xlstm before its code files got their own names (kernels.py, ops.py, compat.py ...
# beside configuration_xlstm.py): saved with the code of commit 8125b7e, tiny paper xLSTM[1:1] with random weights.
OLD_LAYOUT = Path(__file__).parent / "fixtures" / "old_layout_folder.tar.gz"

OLD_FOLDER_PROCESS = WITHOUT_HF_XLSTM + textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    torch.save(model(ids).logits, folder + "/remote_logits.pt")
    print(json.dumps(model.generate(ids, max_new_tokens=4, do_sample=False).tolist()))
    """
)


def test_folder_saved_by_the_previous_layout_still_loads(tmp_path):
    with tarfile.open(OLD_LAYOUT) as archive:
        archive.extractall(tmp_path, filter="data")
    folder = tmp_path / "old_layout_folder"
    assert (folder / "kernels.py").is_file() and not (folder / "xlstm_ops.py").exists()
    ids = torch.randint(3, 64, (2, 7))
    result = subprocess.run(
        [sys.executable, "-c", OLD_FOLDER_PROCESS, str(folder), json.dumps(ids.tolist())],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules_cache")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # its own (old) code and today's code give the same model
    model = xLSTMForCausalLM.from_pretrained(folder).eval()
    assert torch.allclose(torch.load(folder / "remote_logits.pt"), model(ids).logits, rtol=1e-5, atol=1e-6)
    generated = json.loads(result.stdout.strip().splitlines()[-1])
    assert generated == model.generate(ids, max_new_tokens=4, do_sample=False).tolist()
