"""Image file extensions that count as training images (compared lower-cased, so `.PNG` counts)."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
