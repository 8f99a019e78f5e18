"""The xLSTM paper's three claims, reproduced at laptop scale (scripts/paper_*.py are the command lines):

    formal_languages   state tracking (Fig. 4): parity, cycle navigation, modular arithmetic; trained on lengths
                       3-40, scored on 40-256 with the paper's scaled accuracy
    mqar               multi-query associative recall (Fig. 5): accuracy against model width
    extrapolation      length extrapolation (Fig. 6): held-out perplexity at 1x-16x the training context

on shared parts: tasks (the generators and the metric), models (xLSTM[a:b], transformers' Llama and Mamba at one
width), training (the loop), runner (runs side by side on the CPU cores, the output files) and plots (matplotlib,
the optional extra `plots`).
"""
