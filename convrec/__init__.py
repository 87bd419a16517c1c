"""convrec: LLM-based conversational recommenders, trained the ConvRec-R1 way."""

__version__ = "0.1.0"

# `python -m CLI_MODULE WORDS` runs `convrec WORDS` in a child process (side-by-side runs, torchrun workers)
CLI_MODULE = "convrec.cli.main"
