"""A small executor with ComfyUI's semantics, for running the shipped workflows in tests.

* API format: {"id": {"class_type": ..., "inputs": {name: value | [src_id, out_index]}}}.
* Validation as ComfyUI's ``validate_prompt``: known class types, every required input
  present, links pointing at an existing node and output whose type matches the input's
  type, widget values checked against INPUT_TYPES (INT/FLOAT ranges, COMBO options,
  BOOLEAN, STRING). Errors are collected per node.
* Execution: only what the output nodes (OUTPUT_NODE) need, each node once, in dependency
  order; FUNCTION is called with keyword arguments; a result is a tuple or {"ui", "result"}.
* ``ui_to_api``: a UI-format workflow (nodes + links + widgets_values) to API format the
  way the frontend does it (widgets_values follow the order of the widget inputs in
  INPUT_TYPES, required then optional; "control_after_generate" adds one value after a
  seed; extra upload widgets are ignored).

Core nodes used by the workflows (LoadImage, LoadAudio, LoadVideo, GetVideoComponents,
CreateVideo, SaveVideo, ImageScale, ImageFlip, TrimAudioDuration, and custom sampling's
KSamplerSelect, RandomNoise, SamplerCustomAdvanced) are stood in for by the small classes below,
with the same inputs and outputs as ComfyUI's. The SAMPLER stand-in is core's ``KSAMPLER.sample``
(noise scaling, ``model_wrap(x, sigma * s_in, **extra_args)``, callback) with k-diffusion's
``sample_euler`` / ``sample_dpmpp_2m`` written out.
"""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


class ValidationError(ValueError):
    def __init__(self, errors: dict):
        self.errors = errors
        super().__init__("; ".join(f"node {k}: {', '.join(v)}" for k, v in errors.items()))


# ---------------------------------------------------------------------------- core stand-ins
class _Dirs:
    input_dir: Path = Path(".")
    output_dir: Path = Path(".")


def _files(ext):
    d = _Dirs.input_dir
    return sorted(p.name for p in d.iterdir() if p.suffix.lower() in ext) if d.is_dir() else []


class LoadImage:
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (_files({".png", ".jpg", ".jpeg", ".webp"}), {"image_upload": True})}}

    def load_image(self, image):
        from PIL import Image

        im = Image.open(_Dirs.input_dir / image)
        rgb = torch.from_numpy(np.asarray(im.convert("RGB"), np.float32) / 255.0)[None]
        mask = torch.zeros(1, rgb.shape[1], rgb.shape[2])
        return (rgb, mask)


class LoadAudio:
    RETURN_TYPES = ("AUDIO",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": (_files({".wav", ".mp3", ".flac", ".ogg", ".m4a"}),)}}

    def execute(self, audio):
        import soundfile as sf

        data, sr = sf.read(str(_Dirs.input_dir / audio), dtype="float32", always_2d=True)
        return ({"waveform": torch.from_numpy(data.T.copy())[None], "sample_rate": int(sr)},)


class TrimAudioDuration:
    RETURN_TYPES = ("AUDIO",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": ("AUDIO",),
                             "start_index": ("FLOAT", {"default": 0.0, "min": -1e19, "max": 1e19, "step": 0.01}),
                             "duration": ("FLOAT", {"default": 60.0, "min": 0.0, "step": 0.01})}}

    def execute(self, audio, start_index, duration):
        w, sr = audio["waveform"], audio["sample_rate"]
        n = w.shape[-1]
        start = n + int(round(start_index * sr)) if start_index < 0 else int(round(start_index * sr))
        start = max(0, min(start, n))
        end = max(0, min(start + int(round(duration * sr)), n))
        return ({"waveform": w[..., start:end], "sample_rate": sr},)


class ImageScale:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",),
                             "upscale_method": (["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],),
                             "width": ("INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                             "height": ("INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                             "crop": (["disabled", "center"],)}}

    def upscale(self, image, upscale_method, width, height, crop):
        import torch.nn.functional as F

        x = image.movedim(-1, 1)
        if crop == "center":
            h, w = x.shape[-2:]
            target = width / height
            if w / h > target:
                nw = int(round(h * target))
                x = x[..., :, (w - nw) // 2:(w - nw) // 2 + nw]
            else:
                nh = int(round(w / target))
                x = x[..., (h - nh) // 2:(h - nh) // 2 + nh, :]
        mode = {"nearest-exact": "nearest-exact", "lanczos": "bicubic"}.get(upscale_method, upscale_method)
        kw = {} if mode in ("nearest-exact", "area") else {"align_corners": False}
        return (F.interpolate(x, size=(height, width), mode=mode, **kw).clamp(0, 1).movedim(1, -1),)


class ImageFlip:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "flip_method": (["x-axis: vertically", "y-axis: horizontally"],)}}

    def execute(self, image, flip_method):
        return (torch.flip(image, dims=[1] if flip_method.startswith("x") else [2]),)


class ComponentsVideo:
    """Stand-in for ComfyUI's VideoFromComponents."""

    def __init__(self, images, audio, frame_rate):
        self.images, self.audio, self.frame_rate = images, audio, frame_rate

    def get_components(self):
        return {"images": self.images, "audio": self.audio, "frame_rate": self.frame_rate}

    def get_dimensions(self):
        return self.images.shape[2], self.images.shape[1]

    def save_to(self, path, **kwargs):
        from emo_core.video_out import Mp4Writer

        audio = self.audio
        with Mp4Writer(path, float(self.frame_rate),
                       audio=None if audio is None else audio["waveform"][0],
                       sample_rate=None if audio is None else audio["sample_rate"]) as w:
            w.write(self.images)


class CreateVideo:
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0})},
                "optional": {"audio": ("AUDIO",), "bit_depth": ("INT", {"default": 8, "min": 8, "max": 10, "step": 2})}}

    def execute(self, images, fps, audio=None, bit_depth=8):
        return (ComponentsVideo(images, audio, Fraction(fps)),)


class SaveVideo:
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "execute"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                             "format": (["auto", "mp4", "mkv", "webm"],)},
                "optional": {"format.codec": (["auto", "h264", "av1"],)}}

    def execute(self, video, filename_prefix, format, **codec):
        folder = _Dirs.output_dir / os.path.dirname(filename_prefix)
        folder.mkdir(parents=True, exist_ok=True)
        base = os.path.basename(filename_prefix)
        counter = len(list(folder.glob(f"{base}_*"))) + 1
        path = folder / f"{base}_{counter:05}_.mp4"
        video.save_to(str(path), format=format, codec=codec.get("format.codec", "auto"))
        return {"ui": {"videos": [str(path)]}, "result": (video,)}


class LoadVideo:
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"file": (_files({".mp4", ".webm", ".mkv", ".mov"}),)}}

    def execute(self, file):
        from nodes.video import FileVideo

        return (FileVideo(str(_Dirs.input_dir / file)),)


class GetVideoComponents:
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT", "INT", "COMBO")
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",)}}

    def execute(self, video):
        c = video.get_components()
        return (c["images"], c["audio"], float(c["frame_rate"]), 8, "sRGB")


# custom sampling (comfy_extras/nodes_custom_sampler.py, comfy/samplers.py KSAMPLER, k_diffusion)
class _KSampler:
    def __init__(self, name):
        self.name = name

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        import math

        ms = model_wrap.inner_model.model_sampling
        max_sigma, sigma = float(ms.sigma_max), float(sigmas[0])
        max_denoise = math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma
        x = ms.noise_scaling(sigmas[0], noise, latent_image, max_denoise)
        s_in = x.new_ones([x.shape[0]])
        old = None
        for i in range(len(sigmas) - 1):
            denoised = model_wrap(x, sigmas[i] * s_in, **extra_args)
            if callback is not None:
                callback(i, denoised, x, len(sigmas) - 1)
            if self.name == "euler":
                x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
                continue
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            d = denoised
            if old is not None and sigmas[i + 1] != 0:
                r = (t - (-sigmas[i - 1].log())) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * d
            old = denoised
        return ms.inverse_noise_scaling(sigmas[-1], x)


class KSamplerSelect:
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sampler_name": (["euler", "dpmpp_2m"],)}}

    def execute(self, sampler_name):
        return (_KSampler(sampler_name),)


class _RandomNoise:
    def __init__(self, seed):
        self.seed = seed

    def generate_noise(self, latent):
        g = torch.Generator().manual_seed(self.seed)  # core: torch.manual_seed (the global generator)
        return torch.randn(latent["samples"].size(), dtype=torch.float32, generator=g)


class RandomNoise:
    RETURN_TYPES = ("NOISE",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"noise_seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                                                    "control_after_generate": True})}}

    def execute(self, noise_seed):
        return (_RandomNoise(noise_seed),)


class SamplerCustomAdvanced:
    RETURN_TYPES = ("LATENT", "LATENT")
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"noise": ("NOISE",), "guider": ("GUIDER",), "sampler": ("SAMPLER",),
                             "sigmas": ("SIGMAS",), "latent_image": ("LATENT",)}}

    def execute(self, noise, guider, sampler, sigmas, latent_image):
        latent = latent_image.copy()
        x0 = {}

        def callback(step, denoised, x, total):
            x0["x0"] = denoised

        samples = guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas,
                                denoise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=True,
                                seed=noise.seed)
        out = dict(latent, samples=samples)
        den = dict(latent, samples=guider.model_patcher.model.process_latent_out(x0["x0"].cpu())) if x0 else out
        return (out, den)


CORE_NODES = {c.__name__: c for c in (LoadImage, LoadAudio, TrimAudioDuration, ImageScale, ImageFlip, CreateVideo,
                                       SaveVideo, LoadVideo, GetVideoComponents, KSamplerSelect, RandomNoise,
                                       SamplerCustomAdvanced)}


# ---------------------------------------------------------------------------- executor
def _spec(cls, name):
    it = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        if name in it.get(section, {}):
            return it[section][name], section
    return None, None


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _check_value(kind, opts, v) -> str | None:
    opts = opts or {}
    if isinstance(kind, list):
        return None if v in kind else f"value {v!r} not in {kind[:8]}{'...' if len(kind) > 8 else ''}"
    if kind == "INT":
        if not isinstance(v, int) or isinstance(v, bool):
            return f"{v!r} is not an INT"
    elif kind == "FLOAT":
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return f"{v!r} is not a FLOAT"
    elif kind == "BOOLEAN":
        return None if isinstance(v, bool) else f"{v!r} is not a BOOLEAN"
    elif kind == "STRING":
        return None if isinstance(v, str) else f"{v!r} is not a STRING"
    else:
        return f"a {kind} input needs a link, got the value {v!r}"
    if "min" in opts and v < opts["min"]:
        return f"{v} is below the minimum {opts['min']}"
    if "max" in opts and v > opts["max"]:
        return f"{v} is above the maximum {opts['max']}"
    return None


class Executor:
    def __init__(self, node_classes: dict, input_dir=".", output_dir="."):
        self.classes = dict(CORE_NODES)
        self.classes.update(node_classes)
        _Dirs.input_dir, _Dirs.output_dir = Path(input_dir), Path(output_dir)

    def validate(self, prompt: dict) -> None:
        errors: dict = {}
        for nid, node in prompt.items():
            errs = []
            cls = self.classes.get(node.get("class_type"))
            if cls is None:
                errors[nid] = [f"unknown node type {node.get('class_type')!r}"]
                continue
            it = cls.INPUT_TYPES()
            inputs = node.get("inputs", {})
            for name in it.get("required", {}):
                if name not in inputs:
                    errs.append(f"required input {name!r} missing")
            for name, v in inputs.items():
                spec, _ = _spec(cls, name)
                if spec is None:
                    errs.append(f"unknown input {name!r}")
                    continue
                kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
                if _is_link(v):
                    src = prompt.get(v[0])
                    if src is None:
                        errs.append(f"input {name!r} links to missing node {v[0]}")
                        continue
                    src_cls = self.classes.get(src["class_type"])
                    if src_cls is None:
                        continue
                    if v[1] >= len(src_cls.RETURN_TYPES):
                        errs.append(f"input {name!r} links to output {v[1]} of {src['class_type']}, which has "
                                    f"{len(src_cls.RETURN_TYPES)}")
                        continue
                    out_type = src_cls.RETURN_TYPES[v[1]]
                    want = "COMBO" if isinstance(kind, list) else kind
                    if out_type != want and "*" not in (out_type, want):
                        errs.append(f"input {name!r} wants {want} but gets {out_type} from {src['class_type']}")
                else:
                    msg = _check_value(kind, opts, v)
                    if msg:
                        errs.append(f"input {name!r}: {msg}")
            if errs:
                errors[nid] = errs
        outputs = [nid for nid, n in prompt.items() if getattr(self.classes.get(n["class_type"]), "OUTPUT_NODE", False)]
        if not outputs and not errors:
            errors["prompt"] = ["the prompt has no output node"]
        if errors:
            raise ValidationError(errors)

    def run(self, prompt: dict) -> dict:
        """Validates, executes, returns {"outputs": {id: tuple}, "ui": {id: ui}, "order": [ids]}."""
        self.validate(prompt)
        results, ui, order = {}, {}, []

        def execute(nid, stack=()):
            if nid in results:
                return results[nid]
            if nid in stack:
                raise ValidationError({nid: ["dependency cycle"]})
            node = prompt[nid]
            kwargs = {}
            for name, v in node["inputs"].items():
                kwargs[name] = execute(v[0], stack + (nid,))[v[1]] if _is_link(v) else v
            cls = self.classes[node["class_type"]]
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
            if isinstance(out, dict):
                ui[nid] = out.get("ui")
                out = out.get("result", ())
            results[nid] = tuple(out)
            order.append(nid)
            return results[nid]

        for nid, node in prompt.items():
            if getattr(self.classes[node["class_type"]], "OUTPUT_NODE", False):
                execute(nid)
        return {"outputs": results, "ui": ui, "order": order}


# ---------------------------------------------------------------------------- UI -> API
def widget_names(cls) -> list[tuple[str, bool]]:
    """(name, has control_after_generate) of the widget inputs, in the frontend's order."""
    it = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in it.get(section, {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                if "." in name:  # a dynamic combo's nested widget follows its parent
                    continue
                out.append((name, bool(opts.get("control_after_generate")) or (kind == "INT" and name in ("seed", "noise_seed"))))
                if name == "format" and "format.codec" in it.get("optional", {}):
                    out.append(("format.codec", False))
    return out


def ui_to_api(workflow: dict, node_classes: dict) -> dict:
    classes = dict(CORE_NODES)
    classes.update(node_classes)
    links = {l[0]: l for l in workflow["links"]}
    api = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        cls = classes[node["type"]]
        inputs = {}
        values = list(node.get("widgets_values") or [])
        i = 0
        for name, control in widget_names(cls):
            if i < len(values):
                inputs[name] = values[i]
            i += 2 if control else 1
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                link = links[inp["link"]]
                inputs[inp["name"]] = [str(link[1]), int(link[2])]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def load_json(path) -> dict:
    return json.loads(Path(path).read_text())
