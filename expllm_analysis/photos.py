"""ExpLLM on photographs: every face of every picture found and aligned (`faces.py`), then per face the label
probabilities (one `predict_expression` call for the faces of many pictures), the 24 FEAFA AUs and, on request, the
CoT (batched generation, asked in the official order: the label round answered with the most probable label, then
the step-by-step question).

`analyze_pictures` is the Python API; `analyze_files` runs a list of files or folders into JSON lines (one a face, or
one a file saying why it has none), resumable, with optional annotated copies and per-face AU charts, and split across
the processes of `accelerate launch` (one shard each, merged by the main process at the end).
"""

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dataset_builders.exp_cot.au_detection import IMAGE_SUFFIXES, UnreadableImageError, load_rgb
from modeling_expllm.vocabulary import AU_NAMES, EXPRESSION_LABELS

from .faces import FaceFinder

OUTCOMES = ("ok", "no_face", "too_small", "unreadable")
MAX_SIDE = 4096  # larger pictures are read downscaled (boxes are given in the original's pixels all the same)
ALIGNED_SIZE = 224  # faces are aligned at the size the training crops were rendered; the processor resizes them


@dataclass
class PictureResult:
    """What one picture gave: `status` (one of OUTCOMES), `faces` (per-face records), `message` (why, if not ok)."""

    name: str
    status: str
    faces: list
    message: str = ""
    pixels: np.ndarray | None = None  # the picture as analysed (for drawing)
    scale: float = 1.0  # from those pixels to the original's
    crops: list = field(default_factory=list, repr=False)  # each face's aligned crop, in the order of `faces`


class FaceAnalyzer:
    """Finds and explains every face. `model`/`processor`: an ExpLLM and its processor (`from_pretrained` loads them).

    Args:
        labels: the label set scored. cot: also generate each face's CoT. max_new_tokens: its limit.
        max_faces, min_score: passed to the face finder. min_face_size: faces whose box is smaller (pixels, shorter
            side, in the original picture) are counted but not analysed. batch_size: faces per model call.
    """

    def __init__(
        self,
        model,
        processor,
        labels=EXPRESSION_LABELS,
        cot=False,
        max_new_tokens=256,
        max_faces=16,
        min_score=0.5,
        min_face_size=24,
        batch_size=16,
        model_path=None,
    ):
        self.model, self.processor = model.eval(), processor
        self.labels, self.cot, self.max_new_tokens = list(labels), cot, max_new_tokens
        self.min_face_size, self.batch_size = min_face_size, batch_size
        self.finder = FaceFinder(model_path, max_faces=max_faces, min_score=min_score, crop_size=ALIGNED_SIZE)

    @classmethod
    def from_pretrained(cls, model_name_or_path, device=None, **kwargs):
        """The analyser of a saved ExpLLM (folder or Hub id), on `device` (default: this process's GPU, or the CPU)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = device or process_state().device
        model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, trust_remote_code=True).to(device)
        processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=True)
        return cls(model, processor, **kwargs)

    def close(self):
        self.finder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ----------------------------------------------------------------------------------------------------------------

    def read(self, picture, name=None):
        """(pixels, scale, name) of a path, PIL image or RGB array."""
        name = name or (os.fspath(picture) if isinstance(picture, (str, os.PathLike)) else "picture")
        pixels, scale = load_rgb(picture, MAX_SIDE)
        return pixels, scale, name

    def analyze_pictures(self, pictures, names=None):
        """One PictureResult per picture (paths, PIL images or RGB arrays); never raises for a bad picture."""
        names = names or [None] * len(pictures)
        results, pending = [], []  # pending: (result, face) pairs still to be explained
        for picture, name in zip(pictures, names):
            try:
                pixels, scale, name = self.read(picture, name)
            except (UnreadableImageError, TypeError) as error:
                results.append(PictureResult(name or str(picture), "unreadable", [], str(error)))
                continue
            faces = self.finder.find(pixels)
            usable = [face for face in faces if face.size * scale >= self.min_face_size]
            if not faces:
                result = PictureResult(name, "no_face", [], f"{name}: no face found", pixels, scale)
            elif not usable:
                smallest = min(face.size * scale for face in faces)
                message = f"{name}: {len(faces)} face(s), all smaller than {self.min_face_size} px ({smallest:.0f} px)"
                result = PictureResult(name, "too_small", [], message, pixels, scale)
            else:
                skipped = len(faces) - len(usable)
                message = f"{skipped} face(s) under {self.min_face_size} px left out" if skipped else ""
                result = PictureResult(name, "ok", [], message, pixels, scale)
                pending += [(result, face) for face in usable]
            results.append(result)
        for start in range(0, len(pending), self.batch_size):
            self._explain(pending[start : start + self.batch_size])
        return results

    def explain_picture(self, picture, name="picture"):
        """One picture for a service (a web page, an endpoint): its PictureResult, where a picture without a usable
        face is read whole as one face (`box` and `au` None), so that a face crop the detector misses works too."""
        result = self.analyze_pictures([picture], [name])[0]
        if result.status in ("no_face", "too_small"):
            probabilities = self.label_probabilities([result.pixels])[0]
            label = max(probabilities, key=probabilities.get)
            cot = self.explain_crops([result.pixels], [label])[0] if self.cot else None
            whole = {"face_index": 0, "box": None, "au": None, "probabilities": probabilities, "label": label}
            result.faces, result.crops = [{**whole, "cot": cot}], [result.pixels]
        return result

    def _explain(self, pairs):
        """Label probabilities (and CoTs) of a batch of aligned faces, written into their pictures' results."""
        crops = [face.crop for _, face in pairs]
        probabilities = self.label_probabilities(crops)
        tops = [max(row, key=row.get) for row in probabilities]
        cots = self.explain_crops(crops, tops) if self.cot else [None] * len(pairs)
        for (result, face), row, top, cot in zip(pairs, probabilities, tops, cots):
            record = face.to_record()
            record["box"] = [round(v * result.scale, 1) for v in face.box]
            record["face_index"] = len(result.faces)
            record["probabilities"] = {label: round(p, 5) for label, p in row.items()}
            record["label"] = top
            record["cot"] = cot
            result.faces.append(record)
            result.crops.append(face.crop)

    def label_probabilities(self, crops):
        """{label: probability} of each aligned face, in one `predict_expression` call."""
        import torch

        with torch.inference_mode():
            inputs = self.processor.expression_inputs(list(crops), self.labels).to(self.model.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            prediction = self.model.predict_expression(**inputs)
        return [dict(zip(prediction.labels, row)) for row in prediction.probabilities.float().tolist()]

    def explain_crops(self, crops, labels):
        """The CoT of each aligned face, asked after the label round answered with `labels` (the official order)."""
        import torch

        prompts = [
            self.processor.apply_chat_template(
                self.processor.label_first_cot_messages(label), add_generation_prompt=True
            )
            for label in labels
        ]
        inputs = self.processor(images=list(crops), text=prompts, padding=True, return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs.to(self.model.device), max_new_tokens=self.max_new_tokens, do_sample=False
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def stream_explanation(self, crop, label):
        """The CoT of one aligned face as it is written: yields the text so far after every few tokens (a generation
        thread feeds transformers' TextIteratorStreamer, so that a web page can show it growing)."""
        import threading

        import torch
        from transformers import TextIteratorStreamer

        prompt = self.processor.apply_chat_template(
            self.processor.label_first_cot_messages(label), add_generation_prompt=True
        )
        inputs = self.processor(images=[crop], text=[prompt], return_tensors="pt").to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)

        def generate():
            with torch.inference_mode():
                self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, streamer=streamer)

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text.strip()
        thread.join()


# ---------------------------------------------------------------------------------------------------------------------
# Drawing


def annotate(result, path):
    """Save a copy of the picture with each face's box, index, top label and its probability."""
    annotated_picture(result).save(path)


def annotated_picture(result):
    """The picture (PIL) with each found face's box, index, top label and its probability drawn on it."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(result.pixels)
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    for face in (face for face in result.faces if face["box"] is not None):
        left, top, right, bottom = (v / result.scale for v in face["box"])
        draw.rectangle((left, top, right, bottom), outline=(255, 220, 0), width=width)
        text = f"{face['face_index']}: {face['label']} {face['probabilities'][face['label']]:.2f}"
        text_box = draw.textbbox((left, top), text)
        text_top = max(0, top - (text_box[3] - text_box[1]) - 2 * width)
        draw.rectangle((left, text_top, left + text_box[2] - text_box[0] + 4, top), fill=(255, 220, 0))
        draw.text((left + 2, text_top), text, fill=(0, 0, 0))
    return image


def au_chart(face, path, title):
    """A bar chart of one face's 24 AU intensities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    axes.barh(range(len(AU_NAMES)), face["au"], color="tab:orange")
    axes.set_yticks(range(len(AU_NAMES)), AU_NAMES, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("intensity (FEAFA, 0..1)")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------------------------
# Files and folders, resumable, across processes


def process_state():
    """accelerate's view of this process (rank, world size). Without a GPU the processes of `accelerate launch
    --multi_gpu` still work together, over gloo, once accelerate is told to stay on the CPU."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def list_pictures(inputs):
    """Image files of the inputs (files as given, folders searched recursively), in order, without repeats."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)  # a missing or odd file becomes an "unreadable" outcome, not a crash
    return list(dict.fromkeys(files))


def finished_files(output_dir):
    """Files any shard of an earlier run finished. The lines of a file a kill cut short (its last face unwritten, or
    a line half written) are dropped from the shard, so that the file is done again from the start."""
    done = set()
    for shard in Path(output_dir).glob("faces-rank*.jsonl"):
        text = shard.read_text(encoding="utf-8")
        records = [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]
        finished = {record["file"] for record in records if record.get("last_of_file")}
        kept = "".join(json.dumps(record) + "\n" for record in records if record["file"] in finished)
        if kept != text:
            shard.write_text(kept, encoding="utf-8")
        done |= finished
    return done


def analyze_files(analyzer, inputs, output_dir, annotate_images=False, charts=False, files_per_step=8):
    """Analyse every picture of `inputs` into `output_dir/faces.jsonl`; returns its path.

    Each process of `accelerate launch` takes every n-th file and writes `faces-rank<r>.jsonl`; files a killed run
    finished are skipped (a file's last line is marked, so a file cut in the middle is redone); the main process merges
    the shards in input order when all are done.
    """
    state = process_state()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if annotate_images:
        (output_dir / "annotated").mkdir(exist_ok=True)
    if charts:
        (output_dir / "charts").mkdir(exist_ok=True)
    files = list_pictures(inputs)
    state.wait_for_everyone()  # every shard's unfinished line is cut before anyone reads the finished files
    done = finished_files(output_dir)
    mine = [path for i, path in enumerate(files) if i % state.num_processes == state.process_index]
    todo = [path for path in mine if str(path) not in done]
    shard = output_dir / f"faces-rank{state.process_index}.jsonl"
    progress = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"pictures (process {state.process_index})",
                    unit="picture", disable=not sys.stderr.isatty() and state.num_processes > 1)  # fmt: skip
    with open(shard, "a", encoding="utf-8") as out:
        for start in range(0, len(todo), files_per_step):
            chunk = todo[start : start + files_per_step]
            for result in analyzer.analyze_pictures(chunk, [str(path) for path in chunk]):
                write_result(out, result, output_dir, annotate_images, charts)
            out.flush()
            progress.update(len(chunk))
    progress.close()
    state.wait_for_everyone()
    merged = output_dir / "faces.jsonl"
    if state.is_main_process:
        merge_shards(files, output_dir, merged)
    state.wait_for_everyone()
    return merged


def write_result(out, result, output_dir, annotate_images, charts):
    stem = Path(result.name).stem
    if result.status != "ok":
        line = {"file": result.name, "status": result.status, "message": result.message, "last_of_file": True}
        out.write(json.dumps(line) + "\n")
        return
    if annotate_images:
        annotate(result, output_dir / "annotated" / f"{stem}.png")
    for number, face in enumerate(result.faces):
        if charts:
            au_chart(face, output_dir / "charts" / f"{stem}_face{face['face_index']}.png", f"{stem}, face {number}")
        line = {"file": result.name, "status": "ok", **face, "message": result.message}
        line["last_of_file"] = number == len(result.faces) - 1
        out.write(json.dumps(line) + "\n")


def merge_shards(files, output_dir, merged):
    """Every shard's lines in input-file order (faces in their order), without the bookkeeping field."""
    by_file = {}
    for shard in sorted(Path(output_dir).glob("faces-rank*.jsonl")):
        for line in shard.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                by_file.setdefault(record["file"], []).append(record)
    with open(str(merged) + ".tmp", "w", encoding="utf-8") as out:
        for path in files:
            for record in by_file.get(str(path), []):
                record.pop("last_of_file", None)
                out.write(json.dumps(record) + "\n")
    os.replace(str(merged) + ".tmp", merged)
