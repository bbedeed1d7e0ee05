#!/usr/bin/env bash
# Quick start on the CPU: a real textual-inversion run on the bundled example with a tiny SD1.5-shaped model
# (random weights, created as a single-file checkpoint under models/ on first use), then an image with it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-output/quickstart}

python train_textual_inversion.py \
  --pretrained_model_name_or_path tiny-sd15 \
  --dataset_config examples/dataset_ti.toml \
  --token_string mytoy --init_word toy --num_vectors_per_token 2 \
  --learning_rate 5e-3 --max_train_steps 60 --cache_latents --seed 42 \
  --sample_prompts examples/sample_prompts.txt --sample_every_n_steps 60 \
  --output_dir "$OUT"

python gen_img.py --ckpt models/tiny-sd15.safetensors \
  --textual_inversion_embeddings "$OUT/mytoy.safetensors" \
  --prompt "a photo of mytoy on a table --n blurry" --steps 20 --sampler euler_a --seed 1 \
  --outdir "$OUT/images"

echo
echo "embedding:          $OUT/mytoy.safetensors   (A1111: copy into stable-diffusion-webui/embeddings/)"
echo "samples (training): $OUT/sample/"
echo "generated image:    $OUT/images/ (PNG with A1111 'parameters' text)"
