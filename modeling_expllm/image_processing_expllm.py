"""ExpLLM image processor: the official preprocessing, without torchvision.

Pad to a square with the mean colour (so a face is never cropped or stretched), resize to the vision tower's
input size, rescale to 0..1 and normalise with the CLIP mean and std, as the official ExpLLM code does. The mean
colour is the official padding colour, (123, 117, 104). The official code resizes with OpenCV's bilinear filter
(no antialiasing); PIL's bicubic (the default here) keeps more of a large photo's detail when it shrinks it, and
`resize_with="opencv"` reproduces the official pixels exactly (the checkpoint converter sets it). Inputs may be
PIL images in any mode, numpy arrays or torch tensors (HxW, HxWxC or CxHxW; uint8, uint16 or floats in 0..1), file
paths, URLs, encoded bytes, or `datasets` image dicts; anything else raises an error that names it.
"""

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, load_image
from transformers.processing_utils import ImagesKwargs

RESIZE_METHODS = ("pil", "opencv")


class ExpLLMImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    resize_with (`str`, *optional*, defaults to `"pil"`):
        `"pil"` resizes with PIL and `resample`; `"opencv"` with `cv2.resize` and bilinear interpolation, as the
        official ExpLLM preprocessing (needs `opencv-python-headless`).
    """

    resize_with: str


def _describe(item):
    """A short, readable name for an input in an error message."""
    if isinstance(item, (str, os.PathLike)):
        return repr(os.fspath(item))
    shape = getattr(item, "shape", None)
    if shape is not None:
        return f"{type(item).__name__} of shape {tuple(shape)}"
    text = repr(item)
    return f"{type(item).__name__} ({text if len(text) <= 60 else text[:57] + '...'})"


def _array_to_pil(array, name):
    """An HxW, HxWxC or CxHxW array (uint8, uint16, bool or float in 0..1) as a PIL image."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels first -> channels last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
        raise ValueError(f"cannot read {name} as an image: expected HxW, HxWx{{1,3,4}} or {{1,3,4}}xHxW values")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"cannot read {name} as an image: it contains NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(f"cannot read {name} as an image: float pixel values must lie in 0..1")
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"cannot read {name} as an image: unsupported pixel type {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _to_rgb(image, background):
    """Any PIL mode as RGB; transparent pixels take the background (padding) colour."""
    if image.mode.startswith("I;16"):
        return _array_to_pil(np.asarray(image, dtype=np.float64) / 65535.0, "image").convert("RGB")
    if image.mode in ("I", "F"):  # no fixed range: scale the brightest pixel to white
        values = np.asarray(image, dtype=np.float64)
        return _array_to_pil(np.clip(values / max(float(values.max()), 1.0), 0.0, 1.0), "image").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


class ExpLLMImageProcessor(PilBackend):
    _auto_class = "AutoImageProcessor"
    valid_kwargs = ExpLLMImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"height": 224, "width": 224}
    do_pad = True  # pad to square with the mean colour before resizing, as the official preprocessing
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    resize_with = "pil"

    @property
    def mean_colour(self):
        """The padding colour: the normalisation mean as 0..255 RGB, which normalises to zero."""
        return tuple(int(round(channel * 255)) for channel in self.image_mean)

    def load_image(self, item):
        """One input as an RGB PIL image, or an error that names the input."""
        name = _describe(item)
        if isinstance(item, dict) and ("bytes" in item or "path" in item):  # `datasets.Image(decode=False)` rows
            item = item.get("bytes") or item.get("path")
            name = _describe(item) if isinstance(item, str) else name
        if isinstance(item, str) and item.startswith(("http://", "https://")):
            item = load_image(item)
        elif isinstance(item, (str, os.PathLike, bytes)):
            source = io.BytesIO(item) if isinstance(item, bytes) else os.fspath(item)
            if not isinstance(item, bytes) and not os.path.isfile(source):
                raise FileNotFoundError(f"image file {name} does not exist")
            try:
                item = Image.open(source)
                item.load()  # decode now, so that truncated files fail here and not inside the model
            except (UnidentifiedImageError, OSError, ValueError) as error:
                raise ValueError(f"cannot read {name} as an image: {error}") from error
        elif hasattr(item, "detach") and hasattr(item, "numpy"):  # torch tensor
            item = _array_to_pil(item.detach().cpu().numpy(), name)
        elif isinstance(item, np.ndarray):
            item = _array_to_pil(item, name)
        if not isinstance(item, Image.Image):
            raise TypeError(f"expected an image (PIL image, array, tensor, file path, URL or bytes), got {name}")
        if item.width == 0 or item.height == 0:
            raise ValueError(f"cannot read {name} as an image: it has no pixels")
        return _to_rgb(item, self.mean_colour)

    def fetch_images(self, image_url_or_urls):
        # Every image passes through here (the processor calls it first), so input checking lives in one place.
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        return self.load_image(image_url_or_urls)

    def pad_to_square(self, image, background):
        """Centre a channels-first image on a square canvas of the background colour."""
        channels, height, width = image.shape
        side = max(height, width)
        if height == width:
            return image
        canvas = np.empty((channels, side, side), dtype=image.dtype)
        canvas[:] = np.asarray(background, dtype=image.dtype).reshape(channels, 1, 1)
        top, left = (side - height) // 2, (side - width) // 2
        canvas[:, top : top + height, left : left + width] = image
        return canvas

    def resize_like_opencv(self, image, size):
        """Resize a channels-first uint8 image with `cv2.resize` and bilinear interpolation (the official way)."""
        try:
            import cv2
        except ImportError as error:
            raise ImportError("resize_with='opencv' needs OpenCV: pip install opencv-python-headless") from error
        resized = cv2.resize(np.moveaxis(image, 0, -1), (size.width, size.height), interpolation=cv2.INTER_LINEAR)
        return np.moveaxis(resized.reshape(size.height, size.width, -1), -1, 0)

    def _preprocess(
        self,
        images,
        do_resize,
        size,
        resample,
        do_rescale,
        rescale_factor,
        do_normalize,
        image_mean,
        image_std,
        do_pad,
        return_tensors,
        resize_with="pil",
        **kwargs,
    ) -> BatchFeature:
        if resize_with not in RESIZE_METHODS:
            raise ValueError(f"resize_with must be one of {RESIZE_METHODS}, got {resize_with!r}")
        background = tuple(int(round(channel * 255)) for channel in image_mean)
        processed = []
        for image in images:
            if do_pad:
                image = self.pad_to_square(image, background)
            if do_resize and resize_with == "opencv":
                image = self.resize_like_opencv(image, size)
            elif do_resize:
                image = self.resize(image=image, size=size, resample=resample)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed.append(image)
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)


__all__ = ["ExpLLMImageProcessor"]
