"""MindSpore personalization trainer for Stable Diffusion (kohya sd-scripts workflow and file formats)."""
import os

# MindSpore's C++ log prints backend-probing noise (e.g. missing Ascend libraries on a CPU machine) at
# import; keep it to errors unless the user asks for more.
os.environ.setdefault("GLOG_v", "3")
