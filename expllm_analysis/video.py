"""ExpLLM on videos: frames sampled at a chosen rate, every face found (MediaPipe's video mode, increasing
timestamps), aligned and scored as on photographs, followed across frames by box overlap with a stable id, and per
tracked face: the AU intensities and label probabilities over time (smoothed), the expression episodes (each stretch
where one expression other than Neutral dominates: onset, apex, offset), the model's CoT at each apex, and a
timeline summary written from the tracks alone (deterministic: which AUs rise and fall, when, how strongly).

Outputs, beside each other in the output folder: `<video>.timeline.json`, `<video>.timeline.png` (AU and label
tracks) and, on request, `<video>.annotated.mp4`.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from modeling_expllm.vocabulary import AU_NAMES

from .faces import FaceFinder, box_overlap
from .photos import ALIGNED_SIZE

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
NEUTRAL = "Neutral"
AU_CHANGE = 0.15  # an AU "rises" when its smoothed intensity climbs at least this much above where it started


class VideoError(ValueError):
    """A video that cannot be analysed: not a video, corrupt, or without a single frame."""


def sampled_frames(path, sample_fps):
    """(frame number, time in ms, RGB pixels) of the frames kept at about `sample_fps` a second."""
    import cv2

    if not Path(path).is_file():
        raise VideoError(f"{path}: no such file")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoError(f"{path}: not a video OpenCV can read")
        fps = capture.get(cv2.CAP_PROP_FPS)
        if not fps or not math.isfinite(fps) or fps <= 0:
            raise VideoError(f"{path}: the video gives no frame rate")
        step = max(1, round(fps / sample_fps))
        number, kept = 0, 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if number % step == 0:
                kept += 1
                yield number, 1000.0 * number / fps, np.ascontiguousarray(frame[:, :, ::-1])
            number += 1
        if kept == 0:
            raise VideoError(f"{path}: no frame could be decoded")
    finally:
        capture.release()


@dataclass
class Track:
    """One face followed through the video: per sampled frame it appears in, its time, box, AUs, label
    probabilities and aligned crop."""

    id: int
    frames: list = field(default_factory=list)
    times: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    au: list = field(default_factory=list)
    probabilities: list = field(default_factory=list)
    crops: list = field(default_factory=list, repr=False)


def follow(tracks, faces, sample, time_ms, min_overlap=0.3, max_gap=3):
    """Attach each face of one sampled frame to the live track it overlaps most (greedy, best pairs first), or start a
    new track. A track not seen for more than `max_gap` samples is over."""
    live = [t for t in tracks if sample - t.frames[-1] <= max_gap]
    pairs = sorted(
        (
            (box_overlap(track.boxes[-1], face.box), i, j)
            for i, track in enumerate(live)
            for j, face in enumerate(faces)
        ),
        reverse=True,
    )
    matched_tracks, matched_faces, assignment = set(), set(), {}
    for overlap, i, j in pairs:
        if overlap < min_overlap:
            break
        if i not in matched_tracks and j not in matched_faces:
            matched_tracks.add(i)
            matched_faces.add(j)
            assignment[j] = live[i]
    for j, face in enumerate(faces):
        track = assignment.get(j)
        if track is None:
            track = Track(id=len(tracks))
            tracks.append(track)
        track.frames.append(sample)
        track.times.append(time_ms / 1000.0)
        track.boxes.append(tuple(float(v) for v in face.box))
        track.au.append(face.au)
        track.crops.append(face.crop)


def smooth(values, window):
    """A centred moving average along the first axis (shorter at the ends), `window` samples wide."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) < 2:
        return values
    half = window // 2
    cumulative = np.cumsum(np.vstack([np.zeros((1,) + values.shape[1:]), values]), axis=0)
    out = np.empty_like(values)
    for t in range(len(values)):
        low, high = max(0, t - half), min(len(values), t + half + 1)
        out[t] = (cumulative[high] - cumulative[low]) / (high - low)
    return out


def find_episodes(times, probabilities, labels, min_samples=2):
    """Each stretch of at least `min_samples` samples where one label other than Neutral has the highest (smoothed)
    probability: its onset (first sample), apex (where that label peaks) and offset (last sample)."""
    dominant = np.argmax(probabilities, axis=1)
    episodes, start = [], 0
    for t in range(1, len(dominant) + 1):
        if t == len(dominant) or dominant[t] != dominant[start]:
            label = labels[dominant[start]]
            if label != NEUTRAL and t - start >= min_samples:
                column = probabilities[start:t, dominant[start]]
                apex = start + int(np.argmax(column))
                episodes.append(
                    {
                        "label": label,
                        "onset": {"sample": start, "time_s": round(times[start], 3)},
                        "apex": {"sample": apex, "time_s": round(times[apex], 3)},
                        "offset": {"sample": t - 1, "time_s": round(times[t - 1], 3)},
                        "peak_probability": round(float(column.max()), 4),
                    }
                )
            start = t
    return episodes


def au_changes(times, au):
    """The AUs that rise (smoothed intensity at least AU_CHANGE above where it started): when they rise past half
    their climb, when they peak and how strongly, and when they fall back below half, if they do."""
    changes = []
    for index, name in enumerate(AU_NAMES):
        series = au[:, index]
        start_level, peak = series[0], int(np.argmax(series))
        climb = series[peak] - start_level
        if climb < AU_CHANGE:
            continue
        half = start_level + climb / 2
        rise = next(t for t in range(peak + 1) if series[t] >= half)
        fall = next((t for t in range(peak, len(series)) if series[t] < half), None)
        changes.append(
            {
                "au": name,
                "from": round(float(start_level), 3),
                "peak": round(float(series[peak]), 3),
                "rises_at_s": round(times[rise], 3),
                "peaks_at_s": round(times[peak], 3),
                "falls_at_s": None if fall is None else round(times[fall], 3),
            }
        )
    return sorted(changes, key=lambda change: (change["rises_at_s"], -change["peak"]))


def summarize(face_id, times, episodes, changes):
    """A short account of one face, written from its tracks."""
    lines = [f"Face {face_id}, seen from {times[0]:.1f} s to {times[-1]:.1f} s."]
    if not episodes:
        lines.append("No expression other than Neutral dominates for long.")
    for episode in episodes:
        lines.append(
            f"{episode['label']} from {episode['onset']['time_s']:.1f} s to {episode['offset']['time_s']:.1f} s, "
            f"strongest at {episode['apex']['time_s']:.1f} s (probability {episode['peak_probability']:.2f})."
        )
    for change in changes[:6]:
        fall = f", falling back by {change['falls_at_s']:.1f} s" if change["falls_at_s"] is not None else ""
        lines.append(
            f"{change['au']} rises from {change['from']:.2f} at {change['rises_at_s']:.1f} s to {change['peak']:.2f} "
            f"at {change['peaks_at_s']:.1f} s{fall}."
        )
    return " ".join(lines)


def plot_tracks(faces, labels, path):
    """One row per face: the AUs that change, and the label probabilities, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(faces), 2, figsize=(12, 3.2 * len(faces)), squeeze=False)
    for row, face in zip(axes, faces):
        times = [frame["time_s"] for frame in face["frames"]]
        au = np.array([frame["au_smoothed"] for frame in face["frames"]])
        probabilities = np.array(
            [[frame["probabilities_smoothed"][label] for label in labels] for frame in face["frames"]]
        )
        for change in face["au_changes"] or []:
            row[0].plot(times, au[:, AU_NAMES.index(change["au"])], label=change["au"])
        row[0].set_ylim(0, 1)
        row[0].set_title(f"face {face['id']}: action units that change", fontsize=10)
        row[0].set_xlabel("time (s)")
        if face["au_changes"]:
            row[0].legend(fontsize=7, loc="upper left")
        for k, label in enumerate(labels):
            row[1].plot(times, probabilities[:, k], label=label)
        for episode in face["episodes"]:
            row[1].axvspan(episode["onset"]["time_s"], episode["offset"]["time_s"], color="grey", alpha=0.15)
            row[1].axvline(episode["apex"]["time_s"], color="grey", linestyle="--", linewidth=0.8)
        row[1].set_ylim(0, 1)
        row[1].set_title(f"face {face['id']}: label probabilities (episodes shaded, apex dashed)", fontsize=10)
        row[1].set_xlabel("time (s)")
        row[1].legend(fontsize=7, loc="upper left", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def analyze_video(analyzer, path, output_dir, sample_fps=5.0, smoothing=3, annotate=False, cot=True):
    """Analyse one video into `output_dir`; returns the timeline (also written as JSON). Raises VideoError for a
    video that cannot be read (not a video, corrupt, no frames)."""
    if sample_fps <= 0:
        raise ValueError(f"sample_fps must be positive, got {sample_fps}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(path).name
    tracks, frame_numbers = [], []  # frame_numbers: the video frame of each sample
    finder = FaceFinder(
        analyzer.finder.model_path, analyzer.finder.max_faces, analyzer.finder.min_score, video=True,
        crop_size=ALIGNED_SIZE,
    )  # fmt: skip
    try:
        progress = tqdm(desc=f"frames of {stem}", unit="frame")
        for sample, (number, time_ms, pixels) in enumerate(sampled_frames(path, sample_fps)):
            faces = [f for f in finder.find(pixels, time_ms) if f.size >= analyzer.min_face_size]
            follow(tracks, faces, sample, time_ms)
            frame_numbers.append(number)
            progress.update()
        progress.close()
    finally:
        finder.close()

    # Label probabilities of every tracked face crop, in batches across frames.
    crops = [(track, i) for track in tracks for i in range(len(track.crops))]
    for start in range(0, len(crops), analyzer.batch_size):
        batch = crops[start : start + analyzer.batch_size]
        rows = analyzer.label_probabilities([track.crops[i] for track, i in batch])
        for (track, _), row in zip(batch, rows):
            track.probabilities.append(row)
    labels = analyzer.labels

    faces = []
    for track in tracks:
        times = track.times
        au = smooth(track.au, smoothing)
        probabilities = smooth([[row[label] for label in labels] for row in track.probabilities], smoothing)
        episodes = find_episodes(times, probabilities, labels)
        if cot and episodes:
            apexes = [episode["apex"]["sample"] for episode in episodes]
            texts = analyzer.explain_crops([track.crops[i] for i in apexes], [e["label"] for e in episodes])
            for episode, text in zip(episodes, texts):
                episode["cot"] = text
        for episode in episodes:  # sample positions within the track -> frame numbers of the video
            for moment in ("onset", "apex", "offset"):
                episode[moment]["frame"] = frame_numbers[track.frames[episode[moment]["sample"]]]
        changes = au_changes(times, au)
        faces.append(
            {
                "id": track.id,
                "frames": [
                    {
                        "frame": frame_numbers[sample],
                        "time_s": round(time, 3),
                        "box": [round(v, 1) for v in box],
                        "au": raw_au,
                        "au_smoothed": [round(float(v), 4) for v in smoothed_au],
                        "probabilities": {k: round(v, 5) for k, v in raw.items()},
                        "probabilities_smoothed": {k: round(float(v), 5) for k, v in zip(labels, smoothed)},
                    }
                    for sample, time, box, raw_au, smoothed_au, raw, smoothed in zip(
                        track.frames, times, track.boxes, track.au, au, track.probabilities, probabilities
                    )
                ],
                "episodes": episodes,
                "au_changes": changes,
                "summary": summarize(track.id, times, episodes, changes),
            }
        )
    timeline = {
        "video": str(path),
        "sample_fps": sample_fps,
        "samples": len(frame_numbers),
        "smoothing_window": smoothing,
        "labels": labels,
        "faces": faces,
        "summary": " ".join(face["summary"] for face in faces) or "No face was found in the video.",
    }
    timeline_path = output_dir / f"{stem}.timeline.json"
    with open(str(timeline_path) + ".tmp", "w", encoding="utf-8") as out:
        json.dump(timeline, out, indent=1)
    Path(str(timeline_path) + ".tmp").replace(timeline_path)
    outputs = {"timeline": str(timeline_path)}
    if faces:
        plot_tracks(faces, labels, output_dir / f"{stem}.timeline.png")
        outputs["plot"] = str(output_dir / f"{stem}.timeline.png")
    if annotate:
        annotated = output_dir / f"{stem}.annotated.mp4"
        outputs["annotated"] = str(write_annotated_video(path, faces, sample_fps, annotated))
    timeline["outputs"] = outputs
    return timeline


def write_annotated_video(video, faces, sample_fps, path):
    """The sampled frames (read again, so that no frame is held in memory) with each tracked face's box, id and
    (smoothed) top label, as an MP4."""
    import cv2

    by_frame = {}
    for face in faces:
        for frame in face["frames"]:
            top = max(frame["probabilities_smoothed"], key=frame["probabilities_smoothed"].get)
            probability = frame["probabilities_smoothed"][top]
            by_frame.setdefault(frame["frame"], []).append((face["id"], frame["box"], top, probability))
    writer = None
    try:
        for number, _, pixels in sampled_frames(video, sample_fps):
            if writer is None:
                height, width = pixels.shape[:2]
                writer = cv2.VideoWriter(
                    str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(sample_fps), (width, height)
                )
            canvas = np.ascontiguousarray(pixels[:, :, ::-1])
            for face_id, box, label, probability in by_frame.get(number, []):
                left, top, right, bottom = (int(round(v)) for v in box)
                cv2.rectangle(canvas, (left, top), (right, bottom), (0, 220, 255), 2)
                cv2.putText(canvas, f"{face_id}: {label} {probability:.2f}", (left, max(12, top - 6)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 220, 255), 1, cv2.LINE_AA)  # fmt: skip
            writer.write(canvas)
    finally:
        if writer is not None:
            writer.release()
    return path
