"""Prompt templates for textual inversion without captions (`--use_object_template`, `--use_style_template`,
`--learnable_property object|style|face`).

OBJECT and STYLE are the classic `imagenet_templates_small` (27) and `imagenet_style_templates_small` (19) lists
used by the original textual-inversion code, the diffusers example and kohya; the style list really does contain
two entries twice. FACE is this project's small set for a person's face (mindone offers a "face" property).
`{}` is filled with the token string (expanded to "T T1 ... T{N-1}" for multi-vector embeddings).
"""
from ..errors import UserError

OBJECT = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)

STYLE = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}",
    "a large painting in the style of {}",
)

FACE = (
    "a photo of the face of {}", "a close-up photo of {}", "a portrait of {}", "a headshot of {}",
    "a cropped photo of the face of {}", "a bright portrait photo of {}", "a dark portrait photo of {}",
    "a good photo of the face of {}", "a smiling portrait of {}", "a side view portrait of {}",
    "a photo of {} looking at the camera", "a close-up portrait of {} outdoors",
)

TEMPLATES = {"object": OBJECT, "style": STYLE, "face": FACE}


def get_templates(kind):
    """The template tuple for `--learnable_property` `kind` ("object", "style" or "face")."""
    try:
        return TEMPLATES[kind]
    except KeyError:
        raise UserError(f"--learnable_property must be one of {', '.join(TEMPLATES)}, got {kind!r}") from None
