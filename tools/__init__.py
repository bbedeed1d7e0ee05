"""Scripts to run after training (kohya's names and options): resize / merge / extract LoRAs, inspect files,
convert and inspect embeddings. Each is `python tools/<name>.py --help`."""
