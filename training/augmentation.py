"""The official face augmentations (DESIGN section 2), without torchvision: flip, colour jitter, small rotation and
random resized crop on the PIL image, random erasing on the normalised pixels; a mirrored image swaps "left" and
"right" in its conversation too."""

import math
import re
from dataclasses import dataclass, field

from PIL import Image, ImageEnhance


@dataclass
class FaceAugmentation:
    """Horizontal flip, colour jitter, small rotation and random resized crop on the PIL image, then random erasing
    on the normalised pixels. Every draw comes from the generator it is given, so it is reproducible."""

    flip_probability: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.1
    rotation_degrees: float = 5.0
    crop_scale: tuple = (0.8, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    erase_probability: float = 0.25
    erase_scale: tuple = (0.02, 0.2)
    fill: tuple = field(default=(123, 117, 104))  # the CLIP mean colour, which normalises to zero

    def augment_image(self, image, rng):
        """The augmented image and whether it was mirrored (then left and right swap in the text too)."""
        flipped = bool(rng.random() < self.flip_probability)
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - self.brightness, 1 + self.brightness))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - self.contrast, 1 + self.contrast))
        image = ImageEnhance.Color(image).enhance(rng.uniform(1 - self.saturation, 1 + self.saturation))
        image = shift_hue(image, rng.uniform(-self.hue, self.hue))
        angle = rng.uniform(-self.rotation_degrees, self.rotation_degrees)
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=self.fill)
        return self.random_resized_crop(image, rng), flipped

    def random_resized_crop(self, image, rng):
        width, height = image.size
        for _ in range(10):  # rejection sampling, as the usual RandomResizedCrop
            area = width * height * rng.uniform(*self.crop_scale)
            ratio = math.exp(rng.uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])))
            crop_width, crop_height = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                left = int(rng.integers(0, width - crop_width + 1))
                top = int(rng.integers(0, height - crop_height + 1))
                return image.crop((left, top, left + crop_width, top + crop_height))
        return image

    def erase(self, pixel_values, rng):
        """Random erasing on one normalised image `(channels, height, width)`: a rectangle set to zero (the mean)."""
        if rng.random() >= self.erase_probability:
            return pixel_values
        _, height, width = pixel_values.shape
        area = height * width * rng.uniform(*self.erase_scale)
        ratio = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        erase_height = min(height, max(1, round(math.sqrt(area * ratio))))
        erase_width = min(width, max(1, round(math.sqrt(area / ratio))))
        top = int(rng.integers(0, height - erase_height + 1))
        left = int(rng.integers(0, width - erase_width + 1))
        pixel_values = pixel_values.clone()
        pixel_values[:, top : top + erase_height, left : left + erase_width] = 0.0
        return pixel_values


def shift_hue(image, fraction):
    """Rotate the hue of an RGB image by `fraction` of the colour wheel."""
    if fraction == 0.0:
        return image
    hue, saturation, value = image.convert("HSV").split()
    hue = hue.point(lambda h: (h + round(fraction * 255)) % 256)
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


_SIDES = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")


def mirror_sides(messages):
    """The messages of a mirrored image: "left" and "right" swap, since CoTs name the subject's own side."""
    swap = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}

    def mirrored(part):
        if part.get("type") != "text" or not part.get("text"):
            return part
        return dict(part, text=_SIDES.sub(lambda match: swap[match.group(1)], part["text"]))

    return [dict(message, content=[mirrored(part) for part in message["content"]]) for message in messages]
