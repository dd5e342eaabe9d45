"""batchops: declarative Anthropic Message Batches jobs, with plan and apply."""

__version__ = "0.1.0"
