"""compalign: run frozen dual encoders once, cache patch/token embeddings, train and score alignment heads."""

__version__ = "0.1.0"
