"""ComfyUI nodes: thin adapters over emo_core, one file per stage."""
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
