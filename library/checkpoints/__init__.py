"""Single-file (LDM/SGM) and diffusers-folder checkpoint read/write, and model version detection."""
