"""Generate images with an SD1.x / SD2.x / SDXL checkpoint, embeddings and LoRAs (kohya gen_img options)."""
from library.errors import run_cli


def main(argv=None):
    from library.sampling.cli import main as generate

    return generate(argv)


if __name__ == "__main__":
    run_cli(main)
