"""Pictures of several synthetic faces on one canvas, rescaled and tilted, for the face analyser's tests, the demo and
its bench: where each face is pasted is known, so what the analyser finds can be checked against it."""

from PIL import Image

BACKGROUND = (90, 110, 130)
# (left, top, side, rotation in degrees) of four faces on a 900 x 620 canvas.
GROUP_SPOTS = ((30, 30, 260, 0), (380, 50, 200, 8), (640, 320, 200, -6), (110, 340, 240, 4))


def compose_faces(faces, spots=GROUP_SPOTS, size=(900, 620), background=BACKGROUND):
    """(canvas, boxes): the faces (SyntheticFace) pasted at `spots`; each box is where its face's picture went."""
    canvas = Image.new("RGB", size, background)
    boxes = []
    for face, (left, top, side, rotation) in zip(faces, spots):
        picture = face.image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
        canvas.paste(picture.rotate(rotation, resample=Image.Resampling.BICUBIC, fillcolor=background), (left, top))
        boxes.append((left, top, left + side, top + side))
    return canvas, boxes
