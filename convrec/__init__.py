"""convrec: LLM-based conversational recommenders, trained the ConvRec-R1 way."""

__version__ = "0.1.0"
