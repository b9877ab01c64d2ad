"""Model specs (no torch), the shared tokenizer, and building, saving and loading classifiers."""
