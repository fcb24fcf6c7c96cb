"""Session fixtures for the tiny test model (tiny BERT trained on the fixture offers)."""
