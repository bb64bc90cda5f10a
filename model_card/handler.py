"""The Inference Endpoints handler of an ExpLLM model repo (copied to the repo's root as `handler.py`).

The toolkit puts the repo folder on `sys.path`, builds `EndpointHandler(path)` once, and calls it with each request's
JSON body, `{"inputs": ..., "parameters": {...}}`; for an image content type it passes the decoded picture (or its
bytes) as `inputs`. The answer is one dict per face:

    {"face_index": 0, "box": [left, top, right, bottom], "detected": true, "label": "Happiness",
     "probabilities": {"Surprise": 0.01, ...}, "au": {"Inner Brow Raiser": 0.02, ...}, "cot": "..." or null}

Parameters: `labels` (the label set scored, default all eight), `cot` (also write each face's chain of thought,
default false), `max_new_tokens` (its limit, default 256), `max_faces` (default 16). A request that cannot be
answered (no image, an unreadable one, a bad parameter) gets `[{"error": "..."}]`, never an exception, so the endpoint
keeps serving. When no face is found the whole picture is read as one face (`"detected": false`, `"box": null`): a
picture that is already a face crop works as well.

The face finding and alignment are the release's `expllm_analysis` (MediaPipe's detector and landmarker from the
`face_landmarker.task` shipped beside this file), copied here as the flat `expllm_*.py` modules by
`python -m model_card.publish`.
"""

import base64
import binascii
import io
import os

# Flat copies of the release's analyser and label table, written beside this file by `python -m model_card.publish`.
from expllm_photos import FaceAnalyzer
from expllm_vocabulary import AU_NAMES

DEFAULT_MAX_NEW_TOKENS = 256
LANDMARKER_FILE = "face_landmarker.task"


class EndpointHandler:
    def __init__(self, path=""):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = path or os.path.dirname(os.path.abspath(__file__))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, dtype=dtype).to(device)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        landmarker = os.path.join(path, LANDMARKER_FILE)
        self.analyzer = FaceAnalyzer(model, processor, model_path=landmarker if os.path.isfile(landmarker) else None)
        self.all_labels = list(self.analyzer.labels)

    def __call__(self, data):
        try:
            picture = read_picture(data.get("inputs") if isinstance(data, dict) else data)
            settings = self.read_parameters((data.get("parameters") if isinstance(data, dict) else None) or {})
        except ValueError as error:
            return [{"error": str(error)}]
        # One request at a time (the toolkit's default): the shared analyser takes this request's settings.
        analyzer = self.analyzer
        analyzer.labels, analyzer.cot = settings["labels"], settings["cot"]
        analyzer.max_new_tokens, analyzer.finder.max_faces = settings["max_new_tokens"], settings["max_faces"]
        result = analyzer.explain_picture(picture, "inputs")
        if result.status == "unreadable":
            return [{"error": f"inputs: {result.message}"}]
        answer = []
        for index, face in enumerate(result.faces):
            probabilities = {label: round(float(p), 5) for label, p in face["probabilities"].items()}
            answer.append(
                {
                    "face_index": index,
                    "box": face["box"],
                    "detected": face["box"] is not None,
                    "label": max(probabilities, key=probabilities.get),
                    "probabilities": probabilities,
                    "au": dict(zip(AU_NAMES, face["au"])) if face["au"] is not None else None,
                    "cot": face["cot"],
                }
            )
        return answer

    def read_parameters(self, parameters):
        if not isinstance(parameters, dict):
            raise ValueError(f"parameters must be an object, got {type(parameters).__name__}")
        unknown = sorted(set(parameters) - {"labels", "cot", "max_new_tokens", "max_faces"})
        if unknown:
            raise ValueError(f"parameters: unknown {unknown}; known: labels, cot, max_new_tokens, max_faces")
        labels = parameters.get("labels", self.all_labels)
        if isinstance(labels, int) and not isinstance(labels, bool):
            if labels not in (7, 8):
                raise ValueError(f"parameters.labels: 7 or 8 (the label sets), or a list of labels; got {labels}")
            labels = self.all_labels[:labels]  # the seven basic expressions come first, Contempt last
        if not isinstance(labels, list) or not labels or any(label not in self.all_labels for label in labels):
            raise ValueError(f"parameters.labels: a non-empty list of {self.all_labels}, or 7 or 8; got {labels!r}")
        cot = parameters.get("cot", False)
        if not isinstance(cot, bool):
            raise ValueError(f"parameters.cot: true or false, got {cot!r}")
        settings = {"labels": labels, "cot": cot}
        for name, default, largest in (("max_new_tokens", DEFAULT_MAX_NEW_TOKENS, 2048), ("max_faces", 16, 64)):
            value = parameters.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
                raise ValueError(f"parameters.{name}: a whole number from 1 to {largest}, got {value!r}")
            settings[name] = value
        return settings


def read_picture(inputs):
    """A PIL image, raw bytes, or a base64 string (plain or a data URL) as a PIL image; ValueError naming the field."""
    from PIL import Image, UnidentifiedImageError

    if inputs is None:
        raise ValueError("inputs: missing (send the picture as the body, or base64 in {'inputs': ...})")
    if isinstance(inputs, Image.Image):
        return inputs
    if isinstance(inputs, str):
        text = inputs.split(",", 1)[1] if inputs.startswith("data:") else inputs
        try:
            inputs = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("inputs: a string must be a base64-encoded image (or a data URL)") from None
    if not isinstance(inputs, (bytes, bytearray)):
        raise ValueError(f"inputs: an image, its bytes or base64 text, got {type(inputs).__name__}")
    try:
        picture = Image.open(io.BytesIO(inputs))
        picture.load()
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"inputs: not a readable image ({len(inputs)} bytes: {error})") from None
    return picture
