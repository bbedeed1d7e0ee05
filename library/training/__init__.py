"""The one training loop both trainers (textual inversion, LoRA) share."""
