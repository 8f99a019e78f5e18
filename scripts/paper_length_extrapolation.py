"""The paper's length-extrapolation experiment (Fig. 6), scaled down to a 2-core CPU: an xLSTM and a Llama of
about the same size trained identically at one context length on the embedded standard-library corpus, held-out
perplexity at 1x-16x that length.

    python scripts/paper_length_extrapolation.py                  # the default run (6 min on 2 busy cores)
    python scripts/paper_length_extrapolation.py --quick          # seconds, tiny
    python scripts/paper_length_extrapolation.py --models "xlstm[1:0]" "xlstm[3:1]" llama mamba --context 128
    python scripts/paper_length_extrapolation.py --help

Writes length_extrapolation.json (every run), .md (the table) and .png (perplexity vs length) to --output_dir.
The library code is hf_xlstm.experiments.extrapolation; this file only calls it.
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hf_xlstm.cli import run  # noqa: E402
from hf_xlstm.experiments.extrapolation import main  # noqa: E402

if __name__ == "__main__":
    run(main)
