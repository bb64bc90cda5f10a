"""ExpLLM's Space: a photo in (upload or webcam), every face found, boxed and labelled, its label probabilities and
action-unit intensities as charts, and its chain of thought streamed as the model writes it.

The model is $EXPLLM_MODEL (a Hub id or a folder), else the one `space_settings.json` names (written by
`python -m model_card.publish`). Run locally with `python app.py` (port $GRADIO_SERVER_PORT, default 7860).
The face finding and alignment are the release's `expllm_analysis`, copied here as the flat `expllm_*.py` modules.
"""

import json
import os
from pathlib import Path

import gradio as gr
import matplotlib

matplotlib.use("Agg")  # no display on a Space: figures are drawn off-screen
import matplotlib.pyplot as plt  # noqa: E402
from expllm_photos import FaceAnalyzer, annotated_picture  # noqa: E402
from expllm_vocabulary import AU_NAMES  # noqa: E402

HERE = Path(__file__).parent
MAX_NEW_TOKENS = 256


def model_name():
    if os.environ.get("EXPLLM_MODEL"):
        return os.environ["EXPLLM_MODEL"]
    settings = HERE / "space_settings.json"
    if settings.is_file():
        return json.loads(settings.read_text(encoding="utf-8"))["model"]
    raise SystemExit("no model: set EXPLLM_MODEL to a Hub id or a folder of an ExpLLM model")


def bar_charts(charts, names, colour, height, empty):
    """Horizontal bar charts side by side, one per (title, values) in `charts`, on a 0..1 axis with `names`."""
    figure, axes = plt.subplots(1, max(1, len(charts)), figsize=(3.4 * max(1, len(charts)), height), squeeze=False)
    if not charts:
        axes[0][0].text(0.5, 0.5, empty, ha="center", va="center")
        axes[0][0].axis("off")
    for axis, (title, values) in zip(axes[0], charts):
        axis.barh(range(len(names)), values, color=colour)
        axis.set_yticks(range(len(names)), names, fontsize=8 if len(names) < 10 else 7)
        axis.invert_yaxis()
        axis.set_xlim(0, 1)
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def probability_figure(faces):
    """Each face's label probabilities."""
    names = list(faces[0]["probabilities"])
    charts = [
        (f"face {n}: {face['label']}", [face["probabilities"][label] for label in names])
        for n, face in enumerate(faces)
    ]
    return bar_charts(charts, names, "tab:blue", 3.2, "")


def au_figure(faces):
    """The 24 FEAFA AU intensities of each face the landmarker read (a whole-picture reading has none)."""
    charts = [(f"face {n}: AU intensity", face["au"]) for n, face in enumerate(faces) if face["au"] is not None]
    return bar_charts(charts, AU_NAMES, "tab:orange", 5.2, "no face found: no AU reading")


def top_labels(faces):
    """The line the page shows first (and a browser test reads): each face's most probable label, numbered from 0
    left to right as on the picture and in the analyser's JSON."""
    return "\n".join(
        f"face {number}: {face['label']} ({face['probabilities'][face['label']]:.2f})"
        + ("" if face["box"] is not None else " (no face found: the whole picture)")
        for number, face in enumerate(faces)
    )


def build_app(analyzer):
    def explain(picture, write_cot):
        if picture is None:
            raise gr.Error("Upload a photo or take one with the webcam first.")
        result = analyzer.explain_picture(picture, "upload")
        if result.status == "unreadable":
            raise gr.Error(result.message)
        faces = result.faces
        cots = ["" for _ in faces]

        def chains():
            return "\n\n".join(
                f"### Face {n}: {face['label']}\n\n{cot}" for n, (face, cot) in enumerate(zip(faces, cots))
            )

        charts = (annotated_picture(result), top_labels(faces), probability_figure(faces), au_figure(faces))
        yield (*charts, chains() if write_cot else "")
        if write_cot:
            for number, (face, crop) in enumerate(zip(faces, result.crops)):
                for text in analyzer.stream_explanation(crop, face["label"]):
                    cots[number] = text
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), chains()
            yield (*charts, chains())  # the whole answer last: what an API client (gradio_client) receives
        plt.close(charts[2])
        plt.close(charts[3])

    with gr.Blocks(title="ExpLLM: facial expressions explained") as app:
        gr.Markdown(
            "# ExpLLM: facial expressions explained\n"
            "Every face of the photo is found, aligned and read: its expression, the facial action units it moves, "
            "and a chain of thought from the movements to the label. A face shows an expression, not a feeling: "
            "this demo says what faces look like, never what people feel."
        )
        with gr.Row():
            with gr.Column():
                picture = gr.Image(type="pil", sources=["upload", "webcam"], label="Photo", elem_id="picture")
                write_cot = gr.Checkbox(value=True, label="Write the chain of thought", elem_id="write-cot")
                button = gr.Button("Explain", variant="primary", elem_id="explain")
                examples = sorted(str(path) for path in (HERE / "examples").glob("*.png"))
                if examples:
                    gr.Examples(examples, inputs=picture)
            with gr.Column():
                annotated = gr.Image(label="Faces found", interactive=False, elem_id="annotated")
                labels = gr.Textbox(label="Expression", lines=2, interactive=False, elem_id="top-labels")
                probabilities = gr.Plot(label="Label probabilities", elem_id="probabilities")
        action_units = gr.Plot(label="Action units", elem_id="action-units")
        chain_of_thought = gr.Markdown(elem_id="chain-of-thought")
        button.click(
            explain,
            inputs=[picture, write_cot],
            outputs=[annotated, labels, probabilities, action_units, chain_of_thought],
            api_name="explain",
        )
    return app


def main():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = model_name()
    model = AutoModelForImageTextToText.from_pretrained(name, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    landmarker = HERE / "face_landmarker.task"
    analyzer = FaceAnalyzer(
        model, processor, max_new_tokens=MAX_NEW_TOKENS, model_path=landmarker if landmarker.is_file() else None
    )
    build_app(analyzer).queue().launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))


if __name__ == "__main__":
    main()
