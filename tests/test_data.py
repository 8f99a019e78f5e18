"""Loading the tokenizer that belongs to a saved model: a folder without one is a clear error everywhere, and a
saved tokenizer loads without questions, with hf_xlstm and with transformers alone."""

import subprocess
import sys
import textwrap

import pytest

from conftest import WITHOUT_HF_XLSTM, tiny_model
from hf_xlstm.data import load_tokenizer, train_bpe_tokenizer

TEXT = "def main(argv):\n    for name in argv:\n        print(name)\n    return 0\n"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(a saved model with its tokenizer, the same model without one)."""
    root = tmp_path_factory.mktemp("tokenizers")
    tokenizer = train_bpe_tokenizer([TEXT * 20], vocab_size=280)
    model = tiny_model("large", vocab_size=len(tokenizer))
    model.save_pretrained(root / "with")
    tokenizer.save_pretrained(root / "with")
    model.save_pretrained(root / "without")
    return root / "with", root / "without"


def test_a_folder_without_a_tokenizer_says_what_to_do(folders):
    _, without = folders
    with pytest.raises(FileNotFoundError, match=r"holds no tokenizer \(none of tokenizer.json.*save_pretrained"):
        load_tokenizer(without)


def test_fine_tuning_and_the_recall_task_refuse_a_folder_without_a_tokenizer(folders, tmp_path):
    from hf_xlstm.evaluation import assoc_recall_dataset
    from hf_xlstm.finetuning import finetune

    _, without = folders
    with pytest.raises(FileNotFoundError, match="holds no tokenizer.*fine-tuning"):
        finetune(without, tmp_path / "out", train_files=[str(without / "config.json")], max_steps=1)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer.*xlstm_assoc_recall"):
        assoc_recall_dataset(pretrained=str(without))


def test_the_saved_tokenizer_loads_without_a_question(folders):
    with_tokenizer, _ = folders
    reference = load_tokenizer(with_tokenizer)(TEXT)["input_ids"]
    # with hf_xlstm importable: AutoTokenizer as it is; with transformers alone: the tokenizer class itself, or
    # AutoTokenizer with trust_remote_code (it reads the model's config, which is hf_xlstm's own code)
    programs = {
        "with hf_xlstm": "import hf_xlstm\nfrom transformers import AutoTokenizer\n"
                         "tokenizer = AutoTokenizer.from_pretrained(FOLDER)\n",
        "transformers alone": WITHOUT_HF_XLSTM + "from transformers import PreTrainedTokenizerFast\n"
                              "tokenizer = PreTrainedTokenizerFast.from_pretrained(FOLDER)\n",
        "transformers alone, Auto": WITHOUT_HF_XLSTM + "from transformers import AutoTokenizer\n"
                                    "tokenizer = AutoTokenizer.from_pretrained(FOLDER, trust_remote_code=True)\n",
    }
    for name, program in programs.items():
        program = f"FOLDER = {str(with_tokenizer)!r}\n" + program + textwrap.dedent(f"""
            print(tokenizer({TEXT!r})["input_ids"])
        """)
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=300)
        assert done.returncode == 0, (name, done.stderr[-3000:])
        assert "Do you wish to run the custom code" not in done.stdout + done.stderr, name
        assert "model of type" not in done.stderr, name  # no fallback to a config of another type
        assert done.stdout.strip().splitlines()[-1] == str(reference), name
