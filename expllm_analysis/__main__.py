"""expllm-analyze: find, align and explain every face of photos, folders and videos.

    expllm-analyze group.jpg holiday/ --model out/tiny-stage2/merged --output-dir out/analysis --annotate --charts
    expllm-analyze clip.mp4 --model org/ExpLLM --output-dir out/analysis --fps 5 --cot --annotate-video
    accelerate launch --num_processes 2 -m expllm_analysis big_folder/ --model org/ExpLLM --output-dir out/big

Pictures go to `faces.jsonl` (a line per face; a file without a usable face gets one line saying why), resumable after
a kill; videos each to `<video>.timeline.json` and `<video>.timeline.png`, with a line per video in `videos.jsonl`.
"""

import argparse
import json
import sys
from pathlib import Path

from modeling_expllm.vocabulary import EXPRESSION_LABELS, SEVEN_LABELS


def build_parser():
    parser = argparse.ArgumentParser(
        prog="expllm-analyze", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", help="images, folders of images, videos")
    parser.add_argument("--model", required=True, help="an ExpLLM folder or Hub id")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--labels", type=int, choices=(7, 8), default=8)
    parser.add_argument("--cot", action="store_true", help="also write each face's CoT (each video episode's always)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="CoT length limit")
    parser.add_argument("--max-faces", type=int, default=16, help="faces per picture, the most confident")
    parser.add_argument("--min-score", type=float, default=0.5, help="the face detector's confidence a face needs")
    parser.add_argument("--min-face-size", type=int, default=24, help="smaller faces (pixels) are left out")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--annotate", action="store_true", help="write annotated copies of the pictures")
    parser.add_argument("--charts", action="store_true", help="write an AU bar chart per face")
    parser.add_argument("--fps", type=float, default=5.0, help="video frames analysed per second")
    parser.add_argument("--smoothing", type=int, default=3, help="video: moving-average window, in samples")
    parser.add_argument("--annotate-video", action="store_true", help="write an annotated MP4 per video")
    parser.add_argument("--no-video-cot", action="store_true", help="videos: no CoT at the episodes' apexes")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .photos import FaceAnalyzer, analyze_files, process_state
    from .video import VIDEO_SUFFIXES, VideoError, analyze_video

    for name in ("max_faces", "min_face_size", "batch_size", "max_new_tokens", "smoothing"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.fps <= 0:
        raise SystemExit(f"--fps must be positive, got {args.fps}")
    videos = [item for item in args.inputs if Path(item).suffix.lower() in VIDEO_SUFFIXES]
    pictures = [item for item in args.inputs if item not in videos]
    state = process_state()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    labels = SEVEN_LABELS if args.labels == 7 else EXPRESSION_LABELS
    with FaceAnalyzer.from_pretrained(
        args.model,
        labels=labels,
        cot=args.cot,
        max_new_tokens=args.max_new_tokens,
        max_faces=args.max_faces,
        min_score=args.min_score,
        min_face_size=args.min_face_size,
        batch_size=args.batch_size,
    ) as analyzer:
        if pictures:
            merged = analyze_files(analyzer, pictures, output_dir, args.annotate, args.charts)
            if state.is_main_process:
                counts = {}
                for line in merged.read_text(encoding="utf-8").splitlines():
                    status = json.loads(line)["status"]
                    counts[status] = counts.get(status, 0) + 1
                print(f"pictures: {merged} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})")
        # Videos run on the main process: a video's frames depend on each other through the tracks.
        if videos and state.is_main_process:
            with open(output_dir / "videos.jsonl", "a", encoding="utf-8") as log:
                for video in videos:
                    try:
                        timeline = analyze_video(
                            analyzer, video, output_dir, args.fps, args.smoothing, args.annotate_video,
                            cot=not args.no_video_cot,
                        )  # fmt: skip
                    except VideoError as error:
                        print(f"video {video}: {error}", file=sys.stderr)
                        log.write(json.dumps({"file": video, "status": "unreadable", "message": str(error)}) + "\n")
                        continue
                    line = {"file": video, "status": "ok", "faces": len(timeline["faces"]), **timeline["outputs"]}
                    log.write(json.dumps(line) + "\n")
                    print(f"video {video}: {len(timeline['faces'])} face(s); " + ", ".join(
                        f"{kind} {path}" for kind, path in timeline["outputs"].items()))  # fmt: skip
                    print(f"  {timeline['summary']}")


if __name__ == "__main__":
    main()
