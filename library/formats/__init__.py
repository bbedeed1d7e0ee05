"""File formats: safetensors I/O, textual-inversion embeddings (A1111/kohya/diffusers), LoRA files."""
