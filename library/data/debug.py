"""`--debug_dataset`: show what training would see, without any model.

Prints the steps per epoch, the bucket table (kohya's `bucket i: resolution (w, h), count: n` and the mean
aspect-ratio error), then per batch the image keys, sizes, bucket, loss weight, flip, final caption and the
input ids (so a textual-inversion user sees ids >= 49408 where the token string stands). When stdin is not a
terminal it prints `max_batches` batches (default 8) and returns; in a terminal, Enter/S = next batch,
E = next epoch, Q/Esc = quit."""
import sys

import numpy as np

NEW_TOKEN_ID_START = 49408
DEFAULT_NON_INTERACTIVE_BATCHES = 8


def _datasets(dataset):
    return getattr(dataset, "datasets", [dataset])


def print_bucket_tables(dataset, out):
    for d_index, part in enumerate(_datasets(dataset)):
        params = part.params
        print(f"[dataset {d_index}] {params.source}: batch size {params.batch_size}, "
              f"{part.num_train_images} train images, {part.num_reg_images} reg images (with repeats)", file=out)
        for i, (reso, count) in enumerate(part.bucket_table()):
            print(f"bucket {i}: resolution {tuple(reso)}, count: {count}", file=out)
        print(f"mean ar error (without repeats): {part.mean_ar_error}", file=out)


def _describe_ids(ids, decode):
    row = np.asarray(ids).tolist()
    # trim the padding after the first end-of-text token for readability
    if 49407 in row:
        row = row[:row.index(49407) + 1]
    text = f"input ids: {row}"
    new = [t for t in row if t >= NEW_TOKEN_ID_START]
    if new:
        text += f"  (new token ids: {sorted(set(new))})"
    if decode is not None:
        text += f"\n      decoded: {decode(row)!r}"
    return text


def print_batch(batch, step, total, out, tokenizer_decode=None):
    print(f"steps: {step + 1} ({step + 1}/{total})", file=out)
    data = batch["latents"] if "latents" in batch else batch["images"]
    kind = "latents" if "latents" in batch else "images"
    target_hw = batch["target_sizes_hw"][0]
    print(f"  bucket (w, h): ({int(target_hw[1])}, {int(target_hw[0])}), {kind}: {tuple(data.shape)}", file=out)
    for j, key in enumerate(batch["image_keys"]):
        oh, ow = (int(v) for v in batch["original_sizes_hw"][j])
        ct, cl = (int(v) for v in batch["crop_top_lefts"][j])
        print(f"  {key}, size: ({ow}, {oh}), loss weight: {float(batch['loss_weights'][j])}, "
              f"flipped: {bool(batch['flipped'][j])}, crop top left: ({ct}, {cl}), "
              f"network multiplier: {float(batch['network_multipliers'][j])}", file=out)
        print(f"    caption: \"{batch['captions'][j]}\"", file=out)
        for t, ids in enumerate(batch.get("input_ids") or []):
            label = f"[tokenizer {t + 1}] " if len(batch["input_ids"]) > 1 else ""
            print(f"    {label}{_describe_ids(ids[j], tokenizer_decode)}", file=out)


def _interactive(stdin):
    try:
        return stdin.isatty()
    except (AttributeError, ValueError):
        return False


def print_debug_dataset(dataset, tokenizer_decode=None, max_batches=None, out=None, stdin=None,
                        epochs=1):
    """Print the dataset's batches. `dataset`: an ImageDataset or DatasetGroup (set up as training would)."""
    stdin = sys.stdin if stdin is None else stdin
    out = sys.stdout if out is None else out  # looked up per call: sys.stdout may be replaced after import
    interactive = _interactive(stdin)
    if max_batches is None and not interactive:
        max_batches = DEFAULT_NON_INTERACTIVE_BATCHES
    total = len(dataset)
    print(f"Total dataset length (steps): {total}", file=out)
    print_bucket_tables(dataset, out)
    if interactive:
        print("keys: Enter/S next step, E next epoch, Q or Esc quit", file=out)
    shown = 0
    for epoch in range(epochs if not interactive else 1 << 30):
        dataset.set_epoch(epoch)
        print(f"epoch: {epoch + 1}", file=out)
        for step in range(len(dataset)):
            if max_batches is not None and shown >= max_batches:
                return shown
            dataset.set_step(shown)
            print_batch(dataset[step], step, total, out, tokenizer_decode)
            shown += 1
            if interactive:
                key = stdin.readline().strip().lower()
                if key in ("q", "\x1b", "esc"):
                    return shown
                if key == "e":
                    break
    return shown
