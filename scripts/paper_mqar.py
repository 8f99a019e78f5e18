"""The paper's multi-query associative recall experiment (Fig. 5), scaled down to a 2-core CPU: 4 and 8 key-value
pairs in 64 tokens, 16 in 128, a vocabulary of 64, widths 16/32/64; xLSTM[1:1], xLSTM[1:0], Llama and Mamba of 2
layers.

    python scripts/paper_mqar.py                       # the default run (11 min on 2 busy cores)
    python scripts/paper_mqar.py --quick               # seconds: every model, tiny
    python scripts/paper_mqar.py --settings 256:16 --widths 64 128 --lrs 1e-3 3e-3 --seeds 0 1
    python scripts/paper_mqar.py --help

Writes mqar.json (every run), .md (the table) and .png (accuracy vs width) to --output_dir. The library code is
hf_xlstm.experiments.mqar; this file only calls it.
"""

from hf_xlstm.cli import run
from hf_xlstm.experiments.mqar import main

if __name__ == "__main__":
    run(main)
