"""Synthetic videos with known expression episodes, for the video analyser's tests, the demo and the bench: faces the
project renders from action units, each going from Neutral to a full expression and back (a triangle in time), side
by side on one canvas, encoded to MP4 with OpenCV."""

from dataclasses import dataclass

import numpy as np

from dataset_builders.exp_cot.synthetic_faces import render_face, sample_appearance
from modeling_expllm.vocabulary import prototype_vector


@dataclass(frozen=True)
class Episode:
    """One face's expression over time: Neutral, rising linearly to `label` at full strength at `apex_s`, back to
    Neutral `ramp_s` later; `left` is the face's horizontal place on the canvas, in pixels."""

    label: str
    apex_s: float
    ramp_s: float
    left: int

    def strength(self, time_s):
        return max(0.0, 1.0 - abs(time_s - self.apex_s) / self.ramp_s)

    def strong_between(self, threshold=0.5):
        """(start, end) in seconds of the time the expression is at least `threshold` of its full strength."""
        return self.apex_s - (1 - threshold) * self.ramp_s, self.apex_s + (1 - threshold) * self.ramp_s


DEFAULT_EPISODES = (Episode("Happiness", 1.5, 1.0, 20), Episode("Surprise", 2.8, 1.0, 300))


def write_expression_video(path, episodes=DEFAULT_EPISODES, seconds=4.0, fps=10, face_size=240, seed=3):
    """Write the video to `path` (MP4); returns the frame count. Canvas: faces side by side, 40 px of margin."""
    import cv2

    rng = np.random.default_rng(seed)
    looks = [sample_appearance(rng) for _ in episodes]
    width = max(episode.left for episode in episodes) + face_size + 20
    height = face_size + 40
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    frames = int(round(seconds * fps))
    try:
        for number in range(frames):
            canvas = np.full((height, width, 3), (96, 112, 128), dtype=np.uint8)
            for episode, look in zip(episodes, looks):
                au = np.asarray(prototype_vector(episode.label)) * episode.strength(number / fps)
                face = np.asarray(render_face(au.tolist(), look, size=face_size))
                canvas[20 : 20 + face_size, episode.left : episode.left + face_size] = face
            writer.write(np.ascontiguousarray(canvas[:, :, ::-1]))
    finally:
        writer.release()
    return frames
