"""Image generation: text-to-image pipeline, embeddings/LoRAs at inference, PNG output, gen_img CLI."""
