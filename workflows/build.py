"""Writes the shipped workflows: UI format (``<name>.json``, loads in ComfyUI's editor) and API
format (``api/<name>.json``, for POST /prompt), from the graphs below.

    python workflows/build.py

Core nodes only besides ours. Sample inputs: copy samples/portrait.png, samples/speech.wav,
samples/singing.wav and samples/driving.mp4 into ComfyUI's input folder.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
from nodes.loader import ECHOMIMIC_ACC_CHOICE, HALLO_CHOICE  # noqa: E402

# core nodes: widget order (as the frontend stores widgets_values, extra upload values included),
# outputs (name, type)
CORE = {
    "LoadImage": (["image", "__upload"], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "LoadAudio": (["audio", "__upload", "__upload"], [("AUDIO", "AUDIO")]),
    "LoadVideo": (["file", "__upload"], [("VIDEO", "VIDEO")]),
    "GetVideoComponents": ([], [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT"), ("bit_depth", "INT"),
                                ("color_space", "COMBO")]),
    "TrimAudioDuration": (["start_index", "duration"], [("AUDIO", "AUDIO")]),
    "ImageScale": (["upscale_method", "width", "height", "crop"], [("IMAGE", "IMAGE")]),
    "ImageFlip": (["flip_method"], [("IMAGE", "IMAGE")]),
    "CreateVideo": (["fps", "bit_depth"], [("VIDEO", "VIDEO")]),
    "SaveVideo": (["filename_prefix", "format", "format.codec"], [("video", "VIDEO")]),
    "KSamplerSelect": (["sampler_name"], [("SAMPLER", "SAMPLER")]),
    "RandomNoise": (["noise_seed", "__control"], [("NOISE", "NOISE")]),
    "SamplerCustomAdvanced": ([], [("output", "LATENT"), ("denoised_output", "LATENT")]),
}
UPLOAD_VALUE = {"LoadImage": "image", "LoadVideo": "video"}
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN")

# Layout (the editor's units): a node's "pos" is the top left of its body, its title bar (TITLE
# high) sits above it. Nodes that show a preview get room for it, so that the preview never
# spills over the node below; the others get room for their slots and widgets.
TITLE, GAP_X, GAP_Y, MARGIN = 30, 70, 40, 40
PREVIEW_SIZE = {"LoadImage": (320, 400), "LoadVideo": (320, 400), "SaveVideo": (340, 420), "LoadAudio": (320, 170)}
NODE_WIDTH = 330


def _ours(type_):
    cls = NODE_CLASS_MAPPINGS[type_]
    it = cls.INPUT_TYPES()
    widgets, inputs = [], {}
    for section in ("required", "optional"):
        for name, spec in it.get(section, {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if isinstance(kind, list) or kind in WIDGET_KINDS:
                widgets.append(name)
                if opts.get("control_after_generate") or (kind == "INT" and name in ("seed", "noise_seed")):
                    widgets.append("__control")
                inputs[name] = "COMBO" if isinstance(kind, list) else kind
            else:
                inputs[name] = kind
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    return widgets, list(zip(names, cls.RETURN_TYPES)), inputs


def node_info(type_):
    if type_ in CORE:
        widgets, outs = CORE[type_]
        return widgets, outs, {}
    return _ours(type_)


# --------------------------------------------------------------------------- the graphs
# node: (id, type, {widget: value}, {input: (src_id, out_index)}); positions are laid out by column
def _common(audio_file, size=512, steps=40, cfg=3.5, keep="all", model=HALLO_CHOICE):
    return [
        (1, "EmoModelLoader", {"model": model, "dtype": "auto", "download": True, "reference_rule": "auto"}, {}),
        (2, "LoadImage", {"image": "portrait.png"}, {}),
        (3, "LoadAudio", {"audio": audio_file}, {}),
        (4, "EmoReferenceEncode", {"size": size, "crop": "face", "identity": True, "margin": 0.5, "if_no_face": "error"},
         {"emo_model": (1, 0), "image": (2, 0)}),
        (5, "EmoAudioEncode", {"fps": 25.0}, {"emo_model": (1, 0), "audio": (3, 0)}),
        (6, "EmoFaceMask", {"expand": 1.2, "if_no_face": "error"}, {"image": (4, 1), "emo_model": (1, 0)}),
        (7, "EmoGenerate", {"steps": steps, "cfg": cfg, "seed": 42, "motion_start": "reference", "keep_frames": keep,
                            "preset": "custom"},
         {"emo_model": (1, 0), "reference": (4, 0), "emo_audio": (5, 0), "audio": (3, 0), "face_mask": (6, 0),
          "regions": (6, 1)}),
    ]


# The column of each node in the editor (left to right); nodes of a column are stacked in graph order.
COLUMNS = {
    "emo_basic_talking": {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 2, 7: 3, 8: 4, 9: 4},
    "emo_long_singing": {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 2, 7: 3, 9: 4},
    "emo_driving_video_speed": {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 10: 1, 6: 2, 11: 2, 12: 3, 7: 4, 8: 5, 9: 5},
    "emo_in_larger_graph": {1: 0, 2: 0, 3: 0, 13: 1, 14: 1, 15: 1, 4: 2, 5: 2, 6: 3, 7: 4, 8: 5, 9: 5},
    "echomimic_accelerated": {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 2, 7: 3, 8: 4, 9: 4},
    "emo_custom_sampling": {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 15: 1, 6: 2, 10: 2, 11: 2, 12: 2, 7: 3, 13: 4, 14: 4,
                            8: 5, 9: 5},
}


def basic():
    return _common("speech.wav") + [
        (8, "CreateVideo", {"fps": 25.0, "bit_depth": 8}, {"images": (7, 0), "audio": (7, 1), "fps": (7, 3)}),
        (9, "SaveVideo", {"filename_prefix": "emo/talking", "format": "auto", "format.codec": "auto"}, {"video": (8, 0)}),
    ]


def long_singing():
    return _common("singing.wav", keep="last") + [
        (9, "SaveVideo", {"filename_prefix": "emo/singing", "format": "auto", "format.codec": "auto"}, {"video": (7, 2)}),
    ]


def driving_speed():
    graph = _common("speech.wav")
    graph += [
        (10, "LoadVideo", {"file": "driving.mp4"}, {}),
        (11, "GetVideoComponents", {}, {"video": (10, 0)}),
        (12, "EmoSpeed", {"target_speed": 1.0, "fps": 25.0, "driving_fps": 25.0, "smooth": 5},
         {"driving_images": (11, 0), "driving_fps": (11, 2), "emo_model": (1, 0)}),
        (8, "CreateVideo", {"fps": 25.0, "bit_depth": 8}, {"images": (7, 0), "audio": (7, 1), "fps": (7, 3)}),
        (9, "SaveVideo", {"filename_prefix": "emo/driven", "format": "auto", "format.codec": "auto"}, {"video": (8, 0)}),
    ]
    graph[6][3]["speed"] = (12, 0)
    return graph


def larger_graph():
    graph = _common("speech.wav")
    graph += [
        (13, "ImageScale", {"upscale_method": "lanczos", "width": 640, "height": 640, "crop": "center"}, {"image": (2, 0)}),
        (14, "ImageFlip", {"flip_method": "y-axis: horizontally"}, {"image": (13, 0)}),
        (15, "TrimAudioDuration", {"start_index": 0.0, "duration": 2.5}, {"audio": (3, 0)}),
        (8, "CreateVideo", {"fps": 25.0, "bit_depth": 8}, {"images": (7, 0), "audio": (7, 1), "fps": (7, 3)}),
        (9, "SaveVideo", {"filename_prefix": "emo/edited", "format": "auto", "format.codec": "auto"}, {"video": (8, 0)}),
    ]
    graph[3][3]["image"] = (14, 0)   # the reference is the scaled + mirrored portrait
    graph[4][3]["audio"] = (15, 0)   # only the first 2.5 s of the speech
    graph[6][3]["audio"] = (15, 0)
    return graph


def echomimic_accelerated():
    """EchoMimic's accelerated weights: whisper audio, 1-channel face box, the whole video as one
    latent sequence in context windows, 6 steps without guidance, at EchoMimic's 24 fps."""
    return [
        (1, "EmoModelLoader", {"model": ECHOMIMIC_ACC_CHOICE, "dtype": "auto", "download": True, "reference_rule": "auto"}, {}),
        (2, "LoadImage", {"image": "portrait.png"}, {}),
        (3, "LoadAudio", {"audio": "speech.wav"}, {}),
        (4, "EmoReferenceEncode", {"size": 512, "crop": "face", "identity": False, "margin": 0.5, "if_no_face": "error"},
         {"emo_model": (1, 0), "image": (2, 0)}),
        (5, "EmoAudioEncode", {"fps": 24.0}, {"emo_model": (1, 0), "audio": (3, 0)}),
        (6, "EmoFaceMask", {"expand": 1.2, "if_no_face": "error"}, {"image": (4, 1), "emo_model": (1, 0)}),
        (7, "EmoGenerate", {"steps": 6, "cfg": 1.0, "seed": 42, "motion_start": "reference", "keep_frames": "all",
                            "preset": "custom"},
         {"emo_model": (1, 0), "reference": (4, 0), "emo_audio": (5, 0), "audio": (3, 0), "face_mask": (6, 0)}),
        (8, "CreateVideo", {"fps": 24.0, "bit_depth": 8}, {"images": (7, 0), "audio": (7, 1), "fps": (7, 3)}),
        (9, "SaveVideo", {"filename_prefix": "emo/echomimic", "format": "auto", "format.codec": "auto"}, {"video": (8, 0)}),
    ]


def custom_sampling():
    """One clip through core's custom sampling: EMO Guider (the clip's conditioning) + core's
    SamplerCustomAdvanced, KSamplerSelect (dpmpp_2m) and RandomNoise + EMO Scheduler's SIGMAS
    (the model's own timesteps), decoded by EMO Decode Clip; the audio trimmed to the clip."""
    graph = _common("speech.wav")[:6]
    return graph + [
        (7, "EmoGuider", {"clip_index": 0, "cfg": 3.5, "guidance_start": 0.0, "guidance_end": 1.0},
         {"emo_model": (1, 0), "reference": (4, 0), "emo_audio": (5, 0), "face_mask": (6, 0), "regions": (6, 1)}),
        (10, "EmoScheduler", {"scheduler": "emo", "steps": 20, "denoise": 1.0}, {"emo_model": (1, 0)}),
        (11, "KSamplerSelect", {"sampler_name": "dpmpp_2m"}, {}),
        (12, "RandomNoise", {"noise_seed": 42}, {}),
        (13, "SamplerCustomAdvanced", {}, {"noise": (12, 0), "guider": (7, 0), "sampler": (11, 0), "sigmas": (10, 0),
                                           "latent_image": (7, 1)}),
        (14, "EmoDecodeClip", {}, {"emo_model": (1, 0), "latent": (13, 0)}),
        (15, "TrimAudioDuration", {"start_index": 0.0, "duration": 0.64}, {"audio": (3, 0)}),
        (8, "CreateVideo", {"fps": 25.0, "bit_depth": 8}, {"images": (14, 0), "audio": (15, 0)}),
        (9, "SaveVideo", {"filename_prefix": "emo/custom_sampling", "format": "auto", "format.codec": "auto"},
         {"video": (8, 0)}),
    ]


WORKFLOWS = {
    "emo_basic_talking": (basic, "A portrait and a speech clip -> talking video (Create Video + Save Video)."),
    "emo_long_singing": (long_singing, "A whole song, clip after clip; frames are streamed to disk (VIDEO -> Save Video)."),
    "emo_driving_video_speed": (driving_speed, "Head-motion speed measured on a driving video (EMO speed layers)."),
    "emo_in_larger_graph": (larger_graph, "The portrait is scaled and mirrored, the audio trimmed, by core nodes first."),
    "echomimic_accelerated": (echomimic_accelerated, "EchoMimic's accelerated model: whisper audio, context windows, "
                                                     "6 steps without guidance (cfg 1)."),
    "emo_custom_sampling": (custom_sampling, "One clip (16 frames) sampled by core's SamplerCustomAdvanced with the "
                                             "EMO Guider, dpmpp_2m and EMO Scheduler's sigmas (20 steps)."),
}


# --------------------------------------------------------------------------- writers
def to_api(graph) -> dict:
    api = {}
    for nid, type_, widgets, links in graph:
        inputs = {k: v for k, v in widgets.items()}
        for name, (src, slot) in links.items():
            inputs[name] = [str(src), slot]
        api[str(nid)] = {"class_type": type_, "inputs": inputs}
    return dict(sorted(api.items(), key=lambda kv: int(kv[0])))


def node_size(type_, n_slots: int, n_widgets: int) -> list:
    """Room for the title-less body: slots (22 each), widgets (28 each), or a preview."""
    if type_ in PREVIEW_SIZE:
        return list(PREVIEW_SIZE[type_])
    return [NODE_WIDTH, 20 + 22 * n_slots + 28 * n_widgets]


def layout(graph, columns: dict) -> dict:
    """{node id: (pos, size)}: columns side by side (each as wide as its widest node), nodes of a
    column stacked with their title bars, no two overlapping."""
    sizes = {}
    for nid, type_, widgets, links in graph:
        wnames, outs, _in = node_info(type_)
        widgets_shown = [w for w in wnames if w not in links and w != "__upload"]
        slots = max(len(links) + (0 if type_ in CORE else len([1 for n in _in if n not in wnames and n not in links])),
                    len(outs))
        sizes[nid] = node_size(type_, slots, len(widgets_shown) + wnames.count("__upload"))
    out, x = {}, MARGIN
    for col in sorted(set(columns.values())):
        members = [g[0] for g in graph if columns[g[0]] == col]
        y = MARGIN + TITLE
        for nid in members:
            out[nid] = ([x, y], sizes[nid])
            y += sizes[nid][1] + TITLE + GAP_Y
        x += max(sizes[n][0] for n in members) + GAP_X
    return out


def to_ui(graph, title: str, columns: dict) -> dict:
    order = {nid: i for i, (nid, *_rest) in enumerate(_topo(graph))}
    if set(columns) != {g[0] for g in graph}:
        raise ValueError(f"columns {sorted(columns)} do not match the graph's nodes {sorted(g[0] for g in graph)}")
    placed = layout(graph, columns)
    nodes, ui_links = [], []
    link_id = 0
    out_links: dict = {}
    for nid, type_, widgets, links in graph:
        for name, (src, slot) in links.items():
            link_id += 1
            ui_links.append([link_id, src, slot, nid, name])
            out_links.setdefault((src, slot), []).append(link_id)
    link_of = {(l[3], l[4]): l[0] for l in ui_links}
    for nid, type_, widgets, links in graph:
        wnames, outs, in_types = node_info(type_)
        values = []
        for w in wnames:
            if w == "__control":
                values.append("fixed")
            elif w == "__upload":
                values.append(UPLOAD_VALUE.get(type_))
            else:
                values.append(widgets.get(w))
        inputs = []
        for name, (src, slot) in links.items():
            src_type = next(t for n, t, _w, _l in [(g[0], g[1], g[2], g[3]) for g in graph] if n == src)
            typ = node_info(src_type)[1][slot][1]
            entry = {"name": name, "type": typ, "link": link_of[(nid, name)]}
            if name in widgets or name in [w for w in wnames]:
                entry["widget"] = {"name": name}
            inputs.append(entry)
        outputs = [{"name": n, "type": t, "links": out_links.get((nid, i)) or None, "slot_index": i}
                   for i, (n, t) in enumerate(outs)]
        nodes.append({
            "id": nid, "type": type_, "pos": placed[nid][0], "size": placed[nid][1],
            "flags": {}, "order": order[nid], "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": type_},
            "widgets_values": values,
            **({"title": NODE_DISPLAY_NAME_MAPPINGS[type_]} if type_ in NODE_DISPLAY_NAME_MAPPINGS else {}),
        })
    types = {}
    for l in ui_links:
        src_type = next(g[1] for g in graph if g[0] == l[1])
        types[l[0]] = node_info(src_type)[1][l[2]][1]
    links_out = []
    for lid, src, slot, dst, name in ui_links:
        dst_node = next(n for n in nodes if n["id"] == dst)
        dst_slot = next(i for i, e in enumerate(dst_node["inputs"]) if e["name"] == name)
        links_out.append([lid, src, slot, dst, dst_slot, types[lid]])
    right = max(n["pos"][0] + n["size"][0] for n in nodes) + MARGIN
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes) + MARGIN
    scale = max(0.5, min(1.0, int(20 * min(1800 / right, 900 / bottom)) / 20))  # the whole graph on a 1080p screen
    return {
        "id": None, "revision": 0, "last_node_id": max(n["id"] for n in nodes), "last_link_id": link_id,
        "nodes": sorted(nodes, key=lambda n: n["order"]), "links": links_out, "groups": [], "config": {},
        "extra": {"info": {"title": title}, "ds": {"scale": scale, "offset": [0, 0]}}, "version": 0.4,
    }


def _topo(graph):
    done, out = set(), []
    by_id = {g[0]: g for g in graph}

    def visit(nid):
        if nid in done:
            return
        for src, _ in by_id[nid][3].values():
            visit(src)
        done.add(nid)
        out.append(by_id[nid])

    for g in graph:
        visit(g[0])
    return out


def main() -> None:
    (HERE / "api").mkdir(exist_ok=True)
    for name, (make, title) in WORKFLOWS.items():
        graph = make()
        (HERE / f"{name}.json").write_text(json.dumps(to_ui(graph, title, COLUMNS[name]), indent=1) + "\n")
        (HERE / "api" / f"{name}.json").write_text(json.dumps(to_api(graph), indent=1) + "\n")
        print("wrote", name)


if __name__ == "__main__":
    main()
