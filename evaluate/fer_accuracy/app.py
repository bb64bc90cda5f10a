"""The metric's Space: evaluate's widget (a table of predictions and references, the results beside it) on the
module of this folder. It is loaded by its script's path: `evaluate.load` of a folder reads the script named after
the folder, and a Space's folder is called `app`."""

from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load(str(Path(__file__).with_name("fer_accuracy.py")))
launch_gradio_widget(module)
