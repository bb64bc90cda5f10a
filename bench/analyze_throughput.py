"""Speed of the face analyser (`expllm_analysis`) on this machine.

    python bench/analyze_throughput.py [--pictures 48]

Composes pictures of four synthetic faces each (900 x 620, faces 200-260 px, a few degrees of tilt), then measures in
one run: pictures and faces a second for detection + landmarks + alignment + AUs (the MediaPipe part) in one process
and in two (each with its own face finder, half the pictures each); faces a second end to end with a tiny random
ExpLLM (`analyze_files`: the above plus label probabilities, JSON lines); and video frames a second
(`analyze_video` on a 10 s synthetic clip of two faces, every frame sampled, CoTs at the apexes included).
"""

import argparse
import multiprocessing
import os
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compose_pictures(folder, count):
    from dataset_builders.exp_cot.synthetic_faces import generate_faces
    from expllm_testing.group_pictures import compose_faces

    faces = list(generate_faces(4 * count, seed=61, size=224))
    paths = []
    for number in range(count):
        canvas, _ = compose_faces(faces[4 * number : 4 * number + 4])
        paths.append(os.path.join(folder, f"group_{number:03d}.png"))
        canvas.save(paths[-1])
    return paths


def find_faces(paths):
    """(pictures, faces) done by one face finder, in this process."""
    import numpy as np
    from PIL import Image

    from expllm_analysis.faces import FaceFinder

    found = 0
    with FaceFinder() as finder:
        for path in paths:
            found += len(finder.find(np.asarray(Image.open(path).convert("RGB"))))
    return len(paths), found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=48)
    args = parser.parse_args()
    sys.path.insert(0, REPO_ROOT)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from expllm_analysis.photos import FaceAnalyzer, analyze_files
    from expllm_analysis.video import analyze_video
    from expllm_testing.synthetic_video import write_expression_video
    from expllm_testing.tiny import save_tiny_backbones
    from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration

    with tempfile.TemporaryDirectory() as work:
        paths = compose_pictures(work, args.pictures)
        find_faces(paths[:2])  # load the models once before timing
        started = time.perf_counter()
        pictures, faces = find_faces(paths)
        alone = time.perf_counter() - started
        print(f"detection + landmarks + alignment + AUs, 1 process: {pictures / alone:.1f} pictures/s, "
              f"{faces / alone:.1f} faces/s ({faces} faces in {pictures} pictures)")  # fmt: skip
        halves = [paths[0::2], paths[1::2]]
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            pool.map(find_faces, [paths[:1], paths[1:2]])  # start both workers and their models first
            started = time.perf_counter()
            done = pool.map(find_faces, halves)
            both = time.perf_counter() - started
        pictures, faces = sum(d[0] for d in done), sum(d[1] for d in done)
        print(f"detection + landmarks + alignment + AUs, 2 processes: {pictures / both:.1f} pictures/s, "
              f"{faces / both:.1f} faces/s ({alone / both:.2f} x one process)")  # fmt: skip

        torch.manual_seed(0)
        backbones = save_tiny_backbones(os.path.join(work, "backbones"), image_size=56, vision_hidden_size=64)
        model, processor = ExpLLMForConditionalGeneration.from_backbones(*backbones)
        model_folder = os.path.join(work, "tiny")
        model.save_pretrained(model_folder)
        processor.save_pretrained(model_folder)
        with FaceAnalyzer.from_pretrained(model_folder) as analyzer:
            started = time.perf_counter()
            merged = analyze_files(analyzer, paths, os.path.join(work, "out"))
            seconds = time.perf_counter() - started
            lines = sum(1 for _ in open(merged))
            print(f"end to end with a tiny ExpLLM (label probabilities, JSON lines): {lines / seconds:.1f} faces/s, "
                  f"{len(paths) / seconds:.1f} pictures/s")  # fmt: skip

            clip = os.path.join(work, "clip.mp4")
            frames = write_expression_video(clip, seconds=10.0, fps=10)
            started = time.perf_counter()
            analyze_video(analyzer, clip, os.path.join(work, "video"), sample_fps=10)
            seconds = time.perf_counter() - started
            print(f"video, 2 faces, every frame of a 10 s clip at 10 fps: {frames / seconds:.1f} frames/s "
                  f"({frames} frames in {seconds:.1f} s, CoTs at the apexes included)")  # fmt: skip


if __name__ == "__main__":
    main()
