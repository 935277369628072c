"""stl-tune: hyperparameter search and final training for small image datasets (STL-10 first)."""

__version__ = "0.1.0"
