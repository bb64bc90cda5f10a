"""Synthetic faces drawn from the 24 FEAFA action units, so the whole release can run and learn offline.

A face is drawn in "face units": the head is about 2 units wide, centred on the origin, x grows to the image's right
and y grows downwards. The face looks at the viewer, so the subject's LEFT eye, brow and lip corner sit on the image's
RIGHT (+x) half. Every AU moves its own part by an amount proportional to its intensity (0..1), so the drawing changes
smoothly with the vector. An appearance (skin, hair, pose, background, light) is drawn independently of the AUs.

The sampler picks a label, draws AUs around that label's prototype from `modeling_expllm.vocabulary` plus noise and a
few unrelated small activations, and renders the face. The generating AUs ride along in the image metadata
(`image.info["expllm_au"]`, a PNG text chunk once saved), so an oracle AU detector can read the exact ground truth
back.

    python -m dataset_builders.exp_cot.synthetic_faces --contact-sheet out/faces.png [--per-class 6] [--seed 0]
"""

import argparse
import functools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from modeling_expllm.vocabulary import AU_INDEX, AU_NAMES, EXPRESSION_LABELS, NUM_ACTION_UNITS, prototype_vector

# Metadata keys other parts of the release (the oracle AU detector) look for. Do not rename.
AU_INFO_KEY = "expllm_au"
LABEL_INFO_KEY = "expllm_label"

# Shapes are drawn at SUPERSAMPLE times the requested size and shrunk once, which anti-aliases every edge for ~1 ms.
SUPERSAMPLE = 2

# The subject's left side is drawn on the image's right (+x) because the face looks at the viewer.
SIDES = (("Left", 1.0), ("Right", -1.0))

# Furthest the face reaches from its centre, in face units, with every AU at full strength: long hair and puffed
# cheeks sideways, the dropped and thrust chin below (only the neck runs on out of the picture). Upwards the box stops
# just above the hairline: the crown of the hair may leave the picture, as in a tight portrait crop, so that the face
# itself fills more of it. The sampler keeps this box inside the frame.
FACE_REACH_X = 1.22
FACE_REACH_TOP = 1.08
FACE_REACH_BOTTOM = 1.64


# ---------------------------------------------------------------------------------------------------------------------
# Appearance

# Anchor colours; a sampled colour is a random blend between two neighbours, so tones vary continuously.
SKIN_TONES = ((255, 226, 204), (241, 198, 166), (224, 172, 134), (196, 140, 100), (160, 106, 70), (118, 78, 52),
              (86, 56, 38))  # fmt: skip
HAIR_COLOURS = ((28, 24, 22), (64, 42, 28), (112, 74, 44), (196, 160, 98), (150, 68, 36), (150, 150, 150))
IRIS_COLOURS = ((92, 60, 34), (52, 36, 26), (72, 112, 160), (80, 122, 80), (128, 100, 52))
HAIR_STYLES = ("short", "long")


@dataclass
class FaceAppearance:
    """Everything about a face that is not its expression. Colours are RGB triples of ints in 0..255.

    `face_scale` is the pixel length of one face unit as a fraction of the image size (the head is ~2 units wide);
    `offset_x` / `offset_y` move the face centre by a fraction of the image size; `rotation` is in degrees,
    counter-clockwise. Lighting: `brightness` and `contrast` are gains around mid-grey, and a linear shade darkens the
    picture by up to `shade` (0..1) towards the direction `shade_angle` (degrees).
    """

    skin: tuple = (224, 172, 134)
    hair: tuple = (64, 42, 28)
    iris: tuple = (92, 60, 34)
    hair_style: str = "short"
    hairline: float = 0.0  # raises (<0) or lowers (>0) the hairline, face units
    face_scale: float = 0.33
    face_aspect: float = 1.0  # width / height stretch of the whole face
    offset_x: float = 0.0
    offset_y: float = 0.0
    rotation: float = 0.0
    background_from: tuple = (200, 208, 214)
    background_to: tuple = (200, 208, 214)
    background_angle: float = 90.0  # direction of the background gradient, degrees
    brightness: float = 1.0
    contrast: float = 1.0
    shade: float = 0.0
    shade_angle: float = 0.0

    def __post_init__(self):
        if self.hair_style not in HAIR_STYLES:
            raise ValueError(f"FaceAppearance.hair_style must be one of {HAIR_STYLES}, got {self.hair_style!r}")
        if not 0.05 <= self.face_scale <= 0.45:
            raise ValueError(f"FaceAppearance.face_scale must be in [0.05, 0.45] of the image, got {self.face_scale}")
        if not 0.0 <= self.shade <= 1.0:
            raise ValueError(f"FaceAppearance.shade must be in [0, 1], got {self.shade}")


def _blend(colour_a, colour_b, t):
    """The colour a fraction t of the way from colour_a to colour_b."""
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(colour_a, colour_b))


def _pick_between(palette, rng):
    """A random colour on the line through the palette's neighbouring anchors."""
    position = rng.uniform(0, len(palette) - 1)
    low = int(position)
    return _blend(palette[low], palette[min(low + 1, len(palette) - 1)], position - low)


def _reach_in_pixels(look):
    """Half extents (x, y-up, y-down) of the rotated face box as fractions of the image size."""
    corners = np.array([[-FACE_REACH_X, -FACE_REACH_TOP], [FACE_REACH_X, -FACE_REACH_TOP],
                        [-FACE_REACH_X, FACE_REACH_BOTTOM], [FACE_REACH_X, FACE_REACH_BOTTOM]])  # fmt: skip
    pixels = corners @ _pose_matrix(look, look.face_scale).T
    return np.abs(pixels[:, 0]).max(), -pixels[:, 1].min(), pixels[:, 1].max()


# Largest shift of the face centre from its place, as a fraction of the image size (about a pixel at 56 px).
POSITION_JITTER = 0.015

# A background colour is drawn again while it lies closer than this (RGB distance) to the skin, so that the outline
# of the face always stands out.
BACKGROUND_SKIN_DISTANCE = 90.0


def _background_colour(skin, rng, tries=20):
    """A random background colour far enough from the skin tone (the last try is kept if none is)."""
    for _ in range(tries):
        colour = tuple(int(v) for v in rng.integers(40, 235, size=3))
        if math.dist(colour, skin) >= BACKGROUND_SKIN_DISTANCE:
            break
    return colour


def sample_appearance(rng: np.random.Generator) -> FaceAppearance:
    """A random FaceAppearance whose face (chin, cheeks, hair at the sides and hairline included) lies in the frame.

    Pose varies only a little (a pixel or two of shift, a few percent of scale, a few degrees of tilt): a small
    vision transformer trained from scratch learns each feature at the places it has seen it, and tiny position
    shifts already cost it most of its held-out accuracy (a measured ablation: ~0.93 with +-3 px at 56 px, ~0.97
    within 600 steps with the face in place).
    """
    skin = _pick_between(SKIN_TONES, rng)
    look = FaceAppearance(
        skin=skin,
        hair=_blend(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], (128, 128, 128), rng.uniform(0.0, 0.15)),
        iris=IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))],
        hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        hairline=rng.uniform(-0.06, 0.06),
        face_scale=rng.uniform(0.335, 0.345),
        face_aspect=rng.uniform(0.97, 1.03),
        rotation=rng.uniform(-3.0, 3.0),
        background_from=_background_colour(skin, rng),
        background_to=_background_colour(skin, rng),
        background_angle=rng.uniform(0.0, 360.0),
        brightness=rng.uniform(0.9, 1.1),
        contrast=rng.uniform(0.9, 1.1),
        shade=rng.uniform(0.0, 0.2),
        shade_angle=rng.uniform(0.0, 360.0),
    )
    # Shrink a face too big for its rotation, centre the rotated face box, then jitter it by at most POSITION_JITTER
    # as far as the box still fits with a margin on every side.
    margin = 0.015
    reach_x, reach_up, reach_down = _reach_in_pixels(look)
    fit = min(1.0, (1.0 - 2 * margin) / (reach_up + reach_down), (0.5 - margin) / reach_x)
    if fit < 1.0:
        look.face_scale *= fit
        reach_x, reach_up, reach_down = _reach_in_pixels(look)
    room_x = min(POSITION_JITTER, max(0.0, 0.5 - margin - reach_x))
    room_y = min(POSITION_JITTER, max(0.0, (1.0 - 2 * margin - reach_up - reach_down) / 2))
    look.offset_x = rng.uniform(-room_x, room_x)
    look.offset_y = (reach_up - reach_down) / 2 + rng.uniform(-room_y, room_y)
    return look


# ---------------------------------------------------------------------------------------------------------------------
# Input checks


def unit_au_array(au) -> np.ndarray:
    """The AU vector as a float array, or a ValueError saying what is wrong with it."""
    try:
        values = np.asarray(au, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"an AU vector must be {NUM_ACTION_UNITS} numbers, got {au!r}") from error
    if values.ndim != 1 or values.shape[0] != NUM_ACTION_UNITS:
        raise ValueError(f"an AU vector has {NUM_ACTION_UNITS} values in FEAFA order, got shape {values.shape}")
    for index, value in enumerate(values):
        if not 0.0 <= value <= 1.0:  # also catches NaN
            raise ValueError(f"AU {index} ({AU_NAMES[index]}) must be in [0, 1], got {value}")
    return values


# ---------------------------------------------------------------------------------------------------------------------
# Drawing in face units


def _pose_matrix(look, pixels_per_unit):
    """Face units -> pixels: stretch by the aspect, scale, then rotate counter-clockwise on screen."""
    angle = math.radians(look.rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    # Screen y points down, so a counter-clockwise turn on screen uses the transposed rotation.
    rotation = np.array([[cos, sin], [-sin, cos]])
    return rotation @ np.diag([look.face_aspect * pixels_per_unit, pixels_per_unit])


class _FacePen:
    """Draws shapes given in face units onto a canvas, through the appearance's pose."""

    def __init__(self, canvas, look):
        size = canvas.size[0]
        self.draw = ImageDraw.Draw(canvas)
        self.unit = look.face_scale * size
        self.matrix = _pose_matrix(look, self.unit)
        self.origin = np.array([size * (0.5 + look.offset_x), size * (0.5 + look.offset_y)])

    def _pixels(self, points):
        return (np.asarray(points, dtype=np.float64) @ self.matrix.T + self.origin).ravel().tolist()

    def polygon(self, points, fill):
        self.draw.polygon(self._pixels(points), fill=fill)

    def line(self, points, fill, width):
        """A polyline `width` face units thick (at least one pixel)."""
        self.draw.line(self._pixels(points), fill=fill, width=max(1, round(width * self.unit)), joint="curve")

    def ellipse(self, centre, radius_x, radius_y, fill, steps=28):
        self.polygon(np.asarray(centre) + _unit_circle(steps) * (radius_x, radius_y), fill)


def _curve(x, y):
    return np.stack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)], axis=1)


def _band(centre_line, thickness):
    """A filled stroke around a centre line whose thickness may vary along it (an array, one per point)."""
    direction = np.gradient(centre_line, axis=0)
    normal = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    offset = normal * (np.asarray(thickness)[:, None] / 2)
    return np.concatenate([centre_line + offset, (centre_line - offset)[::-1]])


@functools.cache
def _unit_circle(steps):
    """`steps` points around the unit circle (computed once per count: faces draw dozens of ellipses)."""
    angles = np.linspace(0.0, 2 * math.pi, steps, endpoint=False)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


@functools.cache
def _bezier_weights(steps):
    """The weights of start, control and end point at `steps` even parameter values, one row per point."""
    t = np.linspace(0.0, 1.0, steps)
    return np.stack([(1 - t) ** 2, 2 * (1 - t) * t, t**2], axis=1)


def _bezier(start, control, end, steps=12):
    return _bezier_weights(steps) @ np.array([start, control, end], dtype=np.float64)


@dataclass
class _Colours:
    """The colours of one face, derived once from its appearance."""

    skin: tuple
    skin_shadow: tuple  # neck, under the chin
    crease: tuple  # wrinkles, folds, nose lines at full strength
    lips: tuple
    lip_line: tuple
    hair: tuple
    brows: tuple
    lashes: tuple
    iris: tuple
    blush: tuple

    @classmethod
    def of(cls, look):
        skin = look.skin
        return cls(
            skin=skin,
            skin_shadow=_blend(skin, (20, 10, 10), 0.22),
            crease=_blend(skin, (24, 12, 8), 0.7),
            lips=_blend(_blend(skin, (172, 44, 60), 0.7), (0, 0, 0), 0.12),
            lip_line=_blend(skin, (40, 10, 10), 0.75),
            hair=look.hair,
            brows=_blend(look.hair, (24, 16, 12), 0.75),
            lashes=_blend(look.hair, (12, 8, 8), 0.9),
            iris=look.iris,
            blush=_blend(skin, (224, 96, 96), 0.22),
        )


def _au(values, name):
    return float(values[AU_INDEX[name]])


# ---------------------------------------------------------------------------------------------------------------------
# The face, part by part (drawn back to front)


def _draw_hair_back(pen, look, colours):
    pen.ellipse((0.0, -0.3), 1.09, 1.15, colours.hair)
    if look.hair_style == "long":
        pen.polygon([(-1.09, -0.35), (1.09, -0.35), (1.2, 0.95), (0.75, 1.05), (-0.75, 1.05), (-1.2, 0.95)],
                    colours.hair)  # fmt: skip


def _jaw_motion(values):
    """(down, sideways, forward) motion of the jaw in face units: drop lowers it, the slides move it towards the
    subject's own side (left = +x), thrust pushes it forward (drawn as a lower, squarer chin)."""
    down = 0.26 * _au(values, "Jaw Drop")
    sideways = 0.15 * (_au(values, "Jaw Slide Left") - _au(values, "Jaw Slide Right"))
    forward = _au(values, "Jaw Thrust")
    return down, sideways, forward


def _lower_face_weight(y):
    """0 above the mouth, rising to 1 at the chin: how much of the jaw's motion a point of the face follows."""
    t = np.clip((np.asarray(y) - 0.35) / 0.97, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _draw_neck(pen, values, colours):
    down, sideways, forward = _jaw_motion(values)
    pen.polygon([(-0.46, 0.5), (0.46, 0.5), (0.56, 4.0), (-0.56, 4.0)], colours.skin_shadow)
    # The shadow the chin casts on the neck grows as the jaw juts forward.
    shadow = _blend(colours.skin_shadow, (10, 5, 5), 0.15 + 0.3 * forward)
    pen.ellipse(
        (sideways * 0.8, 1.28 + down + 0.02 + 0.06 * forward), 0.36 + 0.1 * forward, 0.09 + 0.03 * forward, shadow
    )


def _head_outline(values):
    """The face outline: an egg whose lower half follows the jaw and bulges at the cheeks when they puff."""
    down, sideways, forward = _jaw_motion(values)
    puff = _au(values, "Cheeks Puff")
    angles = np.linspace(0.0, 2 * math.pi, 72, endpoint=False)
    below = np.maximum(np.sin(angles), 0.0)
    x = np.cos(angles) * (1.0 - 0.2 * below**1.6)
    y = np.where(np.sin(angles) < 0, 1.25, 1.32) * np.sin(angles)
    # Jaw: the lower face follows the jaw; thrust squares and widens the chin.
    weight = _lower_face_weight(y)
    x = x * (1.0 + 0.22 * forward * weight**2) + sideways * weight
    y = y + (down + 0.04 * forward) * weight
    # Cheeks: a smooth bulge between eye level and mouth level.
    bulge = np.sin(np.pi * np.clip((y - 0.02) / 0.95, 0.0, 1.0)) ** 2
    x = x + np.sign(x) * 0.14 * puff * bulge
    return _curve(x, y)


def _draw_head(pen, values, colours):
    for sign in (-1.0, 1.0):
        pen.ellipse((sign * 0.99, -0.04), 0.11, 0.2, colours.skin_shadow)
    pen.polygon(_head_outline(values), colours.skin)
    puff = _au(values, "Cheeks Puff")
    for _, sign in SIDES:
        # Cheeks: a soft blush that swells, brightens and moves outwards as the cheeks puff.
        blush = _blend(colours.blush, (236, 110, 110), 0.35 * puff)
        pen.ellipse((sign * (0.56 + 0.08 * puff), 0.3), 0.17 + 0.1 * puff, 0.12 + 0.08 * puff, blush)


def _eyelid_curve(centre_x, centre_y, half_width, peak, steps=17):
    """Lid edge from the inner to the outer corner; `peak` is its height above the eye centre (below if negative)."""
    u = np.linspace(-1.0, 1.0, steps)
    return _curve(centre_x + half_width * u, centre_y - peak * (1.0 - u**2) ** 0.8)


def _draw_eyes(pen, values, colours):
    # Cartoon-sized eyes (wider and taller than a real eye relative to the head) so that a lid moving a fraction of
    # the opening still moves it by a pixel or more in a 56-pixel picture.
    eye_y, half_width, iris_radius = -0.1, 0.23, 0.092
    for side, sign in SIDES:
        close = _au(values, f"{side} Eye Close")
        widen = _au(values, f"{side} Lid Raise")
        eye_x = sign * 0.4
        # Lower lid rises a little as the eye closes; the upper lid rises with Lid Raise (white shows above the iris)
        # and comes down to meet the lower lid with Eye Close.
        lower_peak = 0.085 - 0.04 * close
        open_peak = 0.08 + 0.15 * widen
        closed_peak = 0.01 - lower_peak  # a hair's breadth from the lower lid; the lash line covers the gap
        upper_peak = open_peak + (closed_peak - open_peak) * close
        upper = _eyelid_curve(eye_x, eye_y, half_width, upper_peak)
        lower = _eyelid_curve(eye_x, eye_y, half_width, -lower_peak)
        pen.polygon(np.concatenate([upper, lower[::-1]]), (248, 247, 244))
        pen.ellipse((eye_x, eye_y + 0.01), iris_radius, iris_radius, colours.iris, steps=20)
        pen.ellipse((eye_x, eye_y + 0.01), 0.045, 0.045, (10, 8, 8), steps=16)
        pen.ellipse((eye_x + 0.03, eye_y - 0.022), 0.018, 0.018, (250, 250, 250), steps=10)
        # Skin lids drawn over the eyeball hide whatever lies outside the opening.
        lid_top, lid_bottom = eye_y - 0.3, eye_y + 0.14
        pen.polygon(np.concatenate([upper, [(upper[-1, 0], lid_top), (upper[0, 0], lid_top)]]), colours.skin)
        pen.polygon(np.concatenate([lower, [(lower[-1, 0], lid_bottom), (lower[0, 0], lid_bottom)]]), colours.skin)
        pen.line(upper, colours.lashes, 0.045 + 0.015 * close)
        pen.line(lower, _blend(colours.skin, colours.crease, 0.7), 0.016)
        crease = _eyelid_curve(eye_x, eye_y - 0.035, half_width * 0.95, 0.15 + 0.06 * widen)
        pen.line(crease[2:-2], _blend(colours.skin, colours.crease, 0.5 + 0.3 * widen), 0.016)
        if close > 0.0:
            # A squeezed eye bunches the skin under it into a fold that darkens as the eye closes.
            fold = _eyelid_curve(eye_x, eye_y + 0.08, half_width * 0.8, -0.05)
            pen.line(fold[2:-2], _blend(colours.skin, colours.crease, 0.8 * close), 0.02)


def _draw_brows(pen, values, colours):
    for side, sign in SIDES:
        lower = _au(values, f"{side} Brow Lower")
        raise_ = _au(values, f"{side} Brow Raise")
        # Lowering pulls the inner end down and towards the nose (brows drawn together); raising lifts the whole brow
        # and the middle most (an arch). Both at once lift the inner end above the outer one: the slanted brow of
        # sadness and fear, where the raising muscle pulls on a brow that is being drawn in.
        slant = min(lower, raise_)
        inner = np.array([sign * (0.13 - 0.07 * lower), -0.37 + 0.2 * lower - 0.18 * raise_ - 0.3 * slant])
        middle = np.array([sign * 0.4, -0.48 + 0.1 * lower - 0.32 * raise_ + 0.05 * slant])
        outer = np.array([sign * 0.66, -0.38 + 0.04 * lower - 0.16 * raise_ + 0.14 * slant])
        line = _bezier(inner, middle, outer, steps=14)
        thickness = np.linspace(0.12, 0.055, len(line))
        pen.polygon(_band(line, thickness), colours.brows)
        # Their skin folds: vertical furrows between the brows and lines across the forehead, on the brow's own side.
        if lower > 0.0:
            furrow = _blend(colours.skin, colours.crease, 0.9 * lower)
            pen.line([(sign * 0.055, -0.42), (sign * 0.07, -0.22)], furrow, 0.028)
        if raise_ > 0.0:
            wrinkle = _blend(colours.skin, colours.crease, 0.8 * raise_)
            for height in (-0.7, -0.82):
                pen.line(
                    _bezier((sign * 0.06, height + 0.01), (sign * 0.3, height - 0.03), (sign * 0.52, height + 0.02)),
                    wrinkle,
                    0.024,
                )


def _draw_nose(pen, values, colours):
    wrinkle = _au(values, "Nose Wrinkle")
    lift = 0.1 * wrinkle  # the wrinkling nose pulls its wings and tip up and flares the nostrils
    line_colour = _blend(colours.skin, colours.crease, 0.6)
    for sign in (-1.0, 1.0):
        wing = (sign * (0.13 + 0.05 * wrinkle), 0.24 - lift)
        pen.line(_bezier((sign * 0.07, -0.02), (sign * 0.08, 0.14), wing), line_colour, 0.02)
        pen.ellipse(
            (sign * 0.08, 0.315 - lift), 0.045 + 0.03 * wrinkle, 0.024 + 0.012 * wrinkle, colours.lip_line, steps=14
        )
    pen.line(_bezier((-0.15, 0.27 - lift), (0.0, 0.39 - lift), (0.15, 0.27 - lift)), line_colour, 0.02)
    if wrinkle > 0.0:
        # Deep creases across the bridge, and slanting ones from its sides towards the inner eye corners.
        fold = _blend(colours.skin, colours.crease, wrinkle)
        for height in (-0.06, 0.03, 0.12):
            pen.line(_bezier((-0.11, height + 0.015), (0.0, height - 0.035), (0.11, height + 0.015), 8), fold, 0.035)
        for sign in (-1.0, 1.0):
            pen.line([(sign * 0.13, 0.12), (sign * 0.21, -0.0)], fold, 0.03)


@dataclass
class _Mouth:
    """The lip edges, each sampled at the same 25 points from the image-left corner to the image-right corner."""

    x: np.ndarray  # of the upper lip's points
    lower_x: np.ndarray  # of the lower lip's points, which the jaw may carry sideways
    upper_outer: np.ndarray  # y of the top edge of the upper lip
    upper_inner: np.ndarray
    upper_teeth: np.ndarray  # y of the lower edge of the upper teeth (= upper_inner where none show)
    lower_teeth: np.ndarray  # y of the upper edge of the lower teeth (= lower_inner where none show)
    lower_inner: np.ndarray
    lower_outer: np.ndarray  # y of the bottom edge of the lower lip
    taper: np.ndarray  # 1 at the middle, 0 at the corners: how much of a lip's thickness each point has


def _mouth_shape(values):
    """Where the lips and teeth are, given the mouth, jaw and chin AUs.

    Points left of the centre belong to the subject's right lip corner and points right of it to the left corner, and
    a corner's motion fades to nothing at the centre, so a one-sided AU moves only its own half of the mouth.
    """
    t = np.linspace(-1.0, 1.0, 25)
    left_half = t >= 0
    reach = np.abs(t)  # 0 at the centre, 1 at a corner

    def per_side(name):
        return np.where(left_half, _au(values, f"Left {name}"), _au(values, f"Right {name}"))

    pull, stretch = per_side("Lip Corner Pull"), per_side("Lip Corner Stretch")
    drop, sideways, forward = _jaw_motion(values)
    pucker = _au(values, "Lip Pucker")
    upper_raise, lower_depress = _au(values, "Upper Lip Raise"), _au(values, "Lower Lip Depress")
    chin_raise = _au(values, "Chin Raise")
    upper_suck, lower_suck = _au(values, "Upper Lip Suck"), _au(values, "Lower Lip Suck")

    half_width = 0.36 + 0.2 * stretch + 0.08 * pull - 0.16 * pucker - 0.35 * drop
    # FEAFA has no lip-corner depressor: the lower lip's depressor drags the corners down with it (the down-turned
    # mouth of sadness), and a rising chin pushes the middle of the mouth up against them.
    corner_y = -0.34 * pull + 0.04 * stretch + 0.5 * drop + 0.34 * lower_depress
    x = t * half_width
    mouth_line = 0.62 + corner_y * reach**2.2 - 0.1 * chin_raise * (1.0 - t**2)
    taper = (1.0 - t**2) ** 0.6  # lips thin to nothing at the corners
    thin = 1.0 - 0.4 * stretch * reach  # stretched lips flatten
    upper_thickness = 0.085 * (1.0 - 0.85 * upper_suck) * (1.0 + 0.6 * pucker) * thin
    lower_thickness = 0.1 * (1.0 - 0.85 * lower_suck) * (1.0 + 0.6 * pucker + 0.3 * chin_raise + 0.35 * forward)
    lower_thickness = lower_thickness * thin

    # The raised upper lip uncovers the upper teeth, which stay where they are: they fill the gap down to the line
    # where the lips met before.
    upper_inner = mouth_line - 0.2 * upper_raise * (1.0 - t**2) ** 0.5
    cupids_bow = 0.018 * np.exp(-((t / 0.12) ** 2)) - 0.009 * np.exp(-(((reach - 0.3) / 0.15) ** 2))
    upper_outer = upper_inner - upper_thickness * taper + cupids_bow * taper
    # Dropping the jaw and depressing the lower lip part the lips; stretched corners pull them apart towards the sides
    # (the squarish mouth of a grimace, nothing at the centre so each side opens its own half); a rising chin closes
    # them.
    opening = 1.5 * drop + 0.12 * lower_depress + 0.1 * stretch * reach**0.7 - 0.15 * chin_raise
    opening = np.maximum(opening, 0.0) * (1.0 - t**2) ** 0.6
    lower_inner = np.maximum(mouth_line + opening, upper_inner)
    lower_outer = lower_inner + lower_thickness * taper
    upper_teeth = np.minimum(np.maximum(upper_inner + 0.06 * taper, mouth_line + 0.01 * taper), lower_inner)
    lower_teeth = np.maximum(lower_inner - 0.04 * taper, upper_teeth)
    lower_x = x + sideways * (1.0 - reach**3)  # the jaw carries the lower lip sideways; the corners stay
    return _Mouth(x, lower_x, upper_outer, upper_inner, upper_teeth, lower_teeth, lower_inner, lower_outer, taper)


def _draw_mouth(pen, values, mouth, colours):
    x, lower_x, upper_inner, lower_inner = mouth.x, mouth.lower_x, mouth.upper_inner, mouth.lower_inner
    # Nasolabial folds run from the nose wings to just outside the lip corners; smiling and a raised upper lip deepen
    # them. Each fold follows its own corner.
    upper_raise = _au(values, "Upper Lip Raise")
    for side, sign in SIDES:
        corner = 0 if sign < 0 else -1
        depth = 0.12 + 0.8 * max(_au(values, f"{side} Lip Corner Pull"), upper_raise)
        start, end = np.array([sign * 0.17, 0.27]), np.array([x[corner] + sign * 0.08, upper_inner[corner] + 0.06])
        bend = (start + end) / 2 + np.array([sign * 0.07, 0.0])
        pen.line(_bezier(start, bend, end, steps=10), _blend(colours.skin, colours.crease, depth), 0.022)
        # A pulled corner tucks into a dimple just beside it.
        pull = _au(values, f"{side} Lip Corner Pull")
        if pull > 0.0:
            tip = np.array([x[corner], upper_inner[corner]])
            dimple = _bezier(tip + (sign * 0.035, -0.06), tip + (sign * 0.085, 0.0), tip + (sign * 0.035, 0.06), 6)
            pen.line(dimple, _blend(colours.skin, colours.lip_line, 0.9 * pull), 0.026)
        # A stretched corner is drawn back into a short taut line beyond the lips.
        stretch = _au(values, f"{side} Lip Corner Stretch")
        if stretch > 0.0:
            tip = np.array([x[corner], upper_inner[corner]])
            pen.line([tip, tip + (sign * 0.09, 0.015)], _blend(colours.skin, colours.lip_line, 0.9 * stretch), 0.024)
    # Inside of the mouth, then the teeth, then the lips on top.
    pen.polygon(np.concatenate([_curve(x, upper_inner), _curve(lower_x, lower_inner)[::-1]]), (44, 12, 18))
    pen.polygon(np.concatenate([_curve(x, upper_inner), _curve(x, mouth.upper_teeth)[::-1]]), (246, 244, 236))
    teeth = np.concatenate([_curve(lower_x, mouth.lower_teeth), _curve(lower_x, lower_inner)[::-1]])
    pen.polygon(teeth, (236, 234, 224))
    pen.polygon(np.concatenate([_curve(x, mouth.upper_outer), _curve(x, upper_inner)[::-1]]), colours.lips)
    pen.polygon(np.concatenate([_curve(lower_x, lower_inner), _curve(lower_x, mouth.lower_outer)[::-1]]), colours.lips)
    suck = (_au(values, "Upper Lip Suck") + _au(values, "Lower Lip Suck")) / 2
    pen.line(_curve(x, upper_inner), colours.lip_line, 0.016 + 0.03 * suck)


def _draw_chin(pen, values, mouth, colours):
    drop, sideways, forward = _jaw_motion(values)
    raise_ = _au(values, "Chin Raise")
    # The fold under the lower lip deepens and the chin boss bulges (a shaded dome) as the chin rises.
    middle = len(mouth.lower_x) // 2
    fold = np.array([mouth.lower_x[middle], mouth.lower_outer[middle] + 0.09])
    fold_colour = _blend(colours.skin, colours.crease, 0.2 + 0.8 * raise_)
    pen.line(_bezier(fold + (-0.15, 0.035), fold + (0.0, -0.035), fold + (0.15, 0.035), steps=9), fold_colour, 0.026)
    chin_y = 1.13 + drop + 0.04 * forward - 0.04 * raise_
    if raise_ > 0.0:
        boss = _blend(colours.skin, colours.crease, 0.8 * raise_)
        pen.line(
            _bezier((sideways - 0.19, chin_y - 0.07), (sideways, chin_y + 0.11), (sideways + 0.19, chin_y - 0.07)),
            boss,
            0.045,
        )
    if forward > 0.0:
        jut = _blend(colours.skin, colours.crease, 0.6 * forward)
        pen.line(
            _bezier((sideways - 0.24, chin_y + 0.05), (sideways, chin_y + 0.12), (sideways + 0.24, chin_y + 0.05)),
            jut,
            0.03,
        )


def _draw_hair_front(pen, look, colours):
    """Hair covering the top of the head down to a hairline that dips towards the temples."""
    x = np.linspace(-0.99, 0.99, 21)
    hairline = _curve(x, -0.97 + look.hairline + 0.4 * (x / 0.99) ** 2)
    angles = np.linspace(-0.2, math.pi + 0.2, 24)
    crown = _curve(1.06 * np.cos(angles), -0.3 - 1.14 * np.sin(angles))
    pen.polygon(np.concatenate([hairline, crown]), colours.hair)


def _background(look, size):
    """A linear gradient: a 2x2 image of corner colours blown up with bilinear resampling to a quarter of the canvas
    side, then with nearest-neighbour (4x cheaper; the 4-pixel steps are at most a level or two of colour)."""
    angle = math.radians(look.background_angle)
    direction = np.array([math.cos(angle), math.sin(angle)])
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) @ direction
    fractions = (corners - corners.min()) / max(corners.max() - corners.min(), 1e-9)
    colours = [_blend(look.background_from, look.background_to, f) for f in fractions]
    tiny = Image.new("RGB", (2, 2))
    tiny.putdata(colours)
    quarter = max(2, size // 4)
    return tiny.resize((quarter, quarter), Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.NEAREST)


def _apply_light(image, look):
    """Directional shade, then brightness and contrast, on the finished picture (in numpy: a few array operations
    instead of a per-value Python table)."""
    if look.shade == 0.0 and look.brightness == 1.0 and look.contrast == 1.0:
        return image
    values = np.asarray(image, dtype=np.float32)
    if look.shade > 0.0:
        # The shade darkens linearly along the direction shade_angle, from nothing at one corner of the picture to
        # `shade` at the opposite one.
        angle = math.radians(look.shade_angle)
        across = np.linspace(-1.0, 1.0, image.size[0], dtype=np.float32)
        ramp = across[None, :] * math.cos(angle) + across[:, None] * math.sin(angle)
        values = values * (1.0 - look.shade * (ramp + math.sqrt(2)) / (2 * math.sqrt(2)))[:, :, None]
    values = (values - 128.0) * look.contrast + 128.0 * look.brightness
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def render_face(au, appearance: FaceAppearance | None = None, size: int = 224) -> Image.Image:
    """Draw a frontal face whose 24 FEAFA action units have the given intensities (0..1, FEAFA order).

    Returns an RGB image of `size` x `size` pixels. The AUs it was drawn from are stored, rounded to 4 decimals, as a
    JSON list in `image.info["expllm_au"]`.
    """
    values = unit_au_array(au)
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer of at least 16 pixels, got {size!r}")
    look = appearance if appearance is not None else FaceAppearance()
    colours = _Colours.of(look)
    canvas = _background(look, size * SUPERSAMPLE)
    pen = _FacePen(canvas, look)
    _draw_hair_back(pen, look, colours)
    _draw_neck(pen, values, colours)
    _draw_head(pen, values, colours)
    _draw_hair_front(pen, look, colours)
    _draw_eyes(pen, values, colours)
    _draw_brows(pen, values, colours)
    _draw_nose(pen, values, colours)
    mouth = _mouth_shape(values)
    _draw_mouth(pen, values, mouth, colours)
    _draw_chin(pen, values, mouth, colours)
    image = canvas.reduce(SUPERSAMPLE)  # the mean of each SUPERSAMPLE x SUPERSAMPLE block
    image = _apply_light(image, look)
    image.info[AU_INFO_KEY] = json.dumps([round(float(v), 4) for v in values])
    return image


# ---------------------------------------------------------------------------------------------------------------------
# Sampling labelled faces


@dataclass
class SyntheticFace:
    """One rendered face with the label and the 24 AU intensities (FEAFA order) it was drawn from."""

    id: str
    image: Image.Image
    label: str
    au: list[float]


def sample_au_vector(label: str, rng: np.random.Generator) -> list[float]:
    """AUs for one face of `label`: its prototype at a random overall strength, with per-AU noise, plus one to three
    small activations of unrelated AUs so that no single AU pattern is a lookup table for the label."""
    if label not in EXPRESSION_LABELS:
        raise ValueError(f"unknown expression label {label!r}; expected one of {EXPRESSION_LABELS}")
    prototype = np.array(prototype_vector(label))
    active = prototype > 0
    values = prototype * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.06, NUM_ACTION_UNITS) * active
    unrelated = np.flatnonzero(~active)
    extra = rng.choice(unrelated, size=rng.integers(1, 4), replace=False)
    values[extra] = rng.uniform(0.03, 0.15, size=len(extra))
    # Rounded to the precision the metadata keeps, so the oracle returns exactly the vector the face was drawn from.
    return [round(float(v), 4) for v in np.clip(values, 0.0, 1.0)]


def _face_rng(seed, index):
    """The random stream of face `index` of run `seed`: independent of every other face, so runs can be sharded."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"face index must be a non-negative integer, got {index!r}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def sample_face(seed: int, label: str | None = None, *, index: int = 0, size: int = 224) -> SyntheticFace:
    """Face number `index` of the run `seed`, showing `label` (a random one of the 8 labels when None).

    Its id is `synthetic-<seed>-<index:06d>`; the image carries the AUs and the label in `image.info`.
    """
    rng = _face_rng(seed, index)
    if label is None:
        label = EXPRESSION_LABELS[rng.integers(len(EXPRESSION_LABELS))]
    au = sample_au_vector(label, rng)
    image = render_face(au, sample_appearance(rng), size=size)
    image.info[LABEL_INFO_KEY] = label
    return SyntheticFace(id=f"synthetic-{seed}-{index:06d}", image=image, label=label, au=au)


def generate_faces(
    count: int, seed: int = 0, labels=EXPRESSION_LABELS, *, start: int = 0, size: int = 224
) -> Iterator[SyntheticFace]:
    """Faces `start` .. `start + count - 1` of the run `seed`, cycling through `labels` in order (balanced).

    Face i depends only on (seed, i), so a resumed run (`start`) or several shards reproduce the same faces.
    """
    labels = tuple(labels)
    if not labels:
        raise ValueError("labels must name at least one expression")
    for label in labels:
        if label not in EXPRESSION_LABELS:
            raise ValueError(f"unknown expression label {label!r} in labels; expected some of {EXPRESSION_LABELS}")
    for index in range(start, start + count):
        yield sample_face(seed, labels[index % len(labels)], index=index, size=size)


# ---------------------------------------------------------------------------------------------------------------------
# Ground truth in the file: the oracle AU detector


def save_face(face: SyntheticFace, path) -> Path:
    """Write the face as a PNG that carries its AUs and label as text chunks (`expllm_au`, `expllm_label`)."""
    metadata = PngInfo()
    metadata.add_text(AU_INFO_KEY, json.dumps(face.au))
    metadata.add_text(LABEL_INFO_KEY, face.label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    face.image.save(path, format="PNG", pnginfo=metadata)
    return path


def _image_info(image_or_path):
    if isinstance(image_or_path, Image.Image):
        return image_or_path.info
    with Image.open(image_or_path) as image:
        return dict(image.info)


def oracle_action_units(image_or_path) -> list[float] | None:
    """The 24 AU intensities a synthetic face was drawn from, read from its metadata; None if it carries none."""
    info = _image_info(image_or_path)
    if AU_INFO_KEY not in info:
        return None
    try:
        values = json.loads(info[AU_INFO_KEY])
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{image_or_path!r}: metadata {AU_INFO_KEY!r} is not a JSON list: {error}") from error
    try:
        return [float(v) for v in unit_au_array(values)]
    except ValueError as error:
        raise ValueError(f"{image_or_path!r}: metadata {AU_INFO_KEY!r} is not a valid AU vector: {error}") from error


def oracle_label(image_or_path) -> str | None:
    """The expression label a synthetic face was drawn for, read from its metadata; None if it carries none."""
    return _image_info(image_or_path).get(LABEL_INFO_KEY)


# ---------------------------------------------------------------------------------------------------------------------
# Contact sheet and command line


def contact_sheet(per_class: int = 6, seed: int = 0, cell: int = 160, labels=EXPRESSION_LABELS) -> Image.Image:
    """One row per label, its name at the left, `per_class` faces of that label from the run `seed`."""
    labels = tuple(labels)
    rows = {label: [] for label in labels}
    for face in generate_faces(per_class * len(labels), seed=seed, labels=labels, size=cell):
        rows[face.label].append(face.image)
    name_width = cell
    sheet = Image.new("RGB", (name_width + per_class * cell, len(labels) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(10, cell // 7))
    for row, label in enumerate(labels):
        draw.text((8, row * cell + cell // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
        for column, image in enumerate(rows[label]):
            sheet.paste(image, (name_width + column * cell, row * cell))
    return sheet


def main(argv=None):
    parser = argparse.ArgumentParser(description="Render synthetic faces from FEAFA action units.")
    parser.add_argument("--contact-sheet", type=Path, required=True, help="where to write the contact sheet PNG")
    parser.add_argument("--per-class", type=int, default=6, help="faces per expression (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--cell", type=int, default=160, help="pixel size of each face on the sheet (default 160)")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per-class must be at least 1, got {args.per_class}")
    sheet = contact_sheet(per_class=args.per_class, seed=args.seed, cell=args.cell)
    args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.contact_sheet)
    print(f"wrote {args.contact_sheet} ({len(EXPRESSION_LABELS)} rows x {args.per_class} faces, seed {args.seed})")


if __name__ == "__main__":
    main()
