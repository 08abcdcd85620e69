"""ComfyUI entry point of the EMO node pack. Importing this is cheap: no models are
loaded and nothing is downloaded until a node runs."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # so the nodes can import the bundled emo_core library
    sys.path.insert(0, _HERE)

if __package__:  # loaded by ComfyUI as a package: a broken import must show, not hide the nodes
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported outside a package (e.g. by pytest's rootdir conftest)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
