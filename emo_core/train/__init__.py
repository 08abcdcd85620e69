"""Training EMO: data preparation (``prepare``), shards (``data``), per-stage parameter
rules (``stages``), initialisation (``init``), the accelerate loop (``loop``), and the
procedural talking faces of the learning test (``synthetic``). Never imports ComfyUI."""
