"""The paper's formal-language experiment (Fig. 4), scaled down to a 2-core CPU: parity, cycle navigation and
modular arithmetic; xLSTM[0:1], xLSTM[1:1], xLSTM[1:0], Llama and Mamba; trained on lengths 3-40, evaluated on
40-256.

    python scripts/paper_formal_languages.py                 # the default run (9 min on 2 busy cores)
    python scripts/paper_formal_languages.py --quick         # seconds: every task and model, tiny
    python scripts/paper_formal_languages.py --tasks parity --models "xlstm[0:1]" llama --lrs 1e-3 --seeds 0
    python scripts/paper_formal_languages.py --help

Writes formal_languages.json (every run), .md (the table) and .png (the heatmap) to --output_dir. The library
code is hf_xlstm.experiments.formal_languages; this file only calls it.
"""

from hf_xlstm.cli import run
from hf_xlstm.experiments.formal_languages import main

if __name__ == "__main__":
    run(main)
