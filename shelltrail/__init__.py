"""shelltrail: run stored bash scripts on demand and keep an auditable record of every run."""

__version__ = "0.1.0"
