"""CLIP tokenizer (bundled vocabulary), textual-inversion token strings and templates, prompt weighting, chunking."""
