"""pushskip: random 1:1 chat matching where a skipped partner learns it at once."""

__version__ = "0.1.0"
