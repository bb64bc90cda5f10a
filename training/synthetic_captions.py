"""Stage-1 image-caption pairs from synthetic faces, in LLaVA's pretrain layout (`chat.json` + images), so that the
projector-only stage trains offline exactly as it would on LLaVA-CC3M-Pretrain-595K:

    python -m training.synthetic_captions --output out/pretrain --count 2000 [--seed 1]

Captions say which movements the face makes (from its AUs, by the offline writer), never which expression it shows:
stage 1 aligns image features with words, stage 2 teaches expressions.
"""

import argparse
import json
import os

from tqdm.auto import tqdm

from dataset_builders.exp_cot.offline_writer import write_caption
from dataset_builders.exp_cot.synthetic_faces import generate_faces, save_face
from training.samples import CAPTION_QUESTION


def write_pretrain_set(output, count, seed=1, size=224):
    """Write `count` faces and `chat.json` under `output`; returns the path of `chat.json`."""
    os.makedirs(os.path.join(output, "images"), exist_ok=True)
    entries = []
    for face in tqdm(generate_faces(count, seed=seed, size=size), total=count, desc="caption pairs", unit="face"):
        image = os.path.join("images", f"{face.id}.png")
        save_face(face, os.path.join(output, image))
        conversations = [
            {"from": "human", "value": f"<image>\n{CAPTION_QUESTION}"},
            {"from": "gpt", "value": write_caption(face.au)},
        ]
        entries.append({"id": face.id, "image": image, "conversations": conversations})
    chat_json = os.path.join(output, "chat.json")
    with open(chat_json + ".tmp", "w", encoding="utf-8") as file:
        json.dump(entries, file, indent=1)
    os.replace(chat_json + ".tmp", chat_json)
    return chat_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    print(write_pretrain_set(args.output, args.count, args.seed, args.size))


if __name__ == "__main__":
    main()
