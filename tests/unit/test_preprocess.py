"""Letterbox geometry and tensor layout, table-tested against the Ultralytics semantics."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.errors import InputError
from edgedet.preprocess import PAD_VALUE, Preprocessor, as_bgr, letterbox_geometry


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        # (h, w) -> (new_h, new_w, top, left)
        ((1080, 810), (640, 640), (640, 480, 0, 80)),
        ((720, 1280), (640, 640), (360, 640, 140, 0)),
        ((1, 1), (640, 640), (640, 640, 0, 0)),  # upscaled like Ultralytics (scaleup=True)
        ((1, 4000), (640, 640), (1, 640, 319, 0)),  # thin images keep >= 1 px
        ((4000, 1), (640, 640), (640, 1, 0, 319)),
        ((4000, 3000), (640, 640), (640, 480, 0, 80)),
        ((333, 517), (640, 640), (412, 640, 114, 0)),
        ((720, 1280), (384, 640), (360, 640, 12, 0)),  # aspect-matched input
        ((481, 640), (640, 640), (481, 640, 79, 0)),  # odd padding: 159 -> 79 top, 80 bottom
    ],
)
def test_letterbox_geometry(src, dst, expected):
    geo = letterbox_geometry(*src, *dst)
    assert (geo.new_h, geo.new_w, geo.top, geo.left) == expected
    assert geo.top + geo.new_h <= dst[0] and geo.left + geo.new_w <= dst[1]


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 4000, 3), (4000, 3000, 3), (37, 53), (37, 53, 1), (37, 53, 4)])
def test_preprocess_shapes_and_padding(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    pre = Preprocessor(640, 640)
    tensor, geo = pre(image)
    assert tensor.shape == (1, 3, 640, 640) and tensor.dtype == np.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    if geo.top > 0:  # padding rows hold 114/255 in every channel
        assert np.allclose(tensor[0, :, 0, :], PAD_VALUE / 255)
    if geo.left > 0:
        assert np.allclose(tensor[0, :, :, 0], PAD_VALUE / 255)


def test_bgr_to_rgb_and_scale():
    image = np.zeros((640, 640, 3), np.uint8)
    image[..., 0] = 255  # pure blue in BGR
    tensor, _ = Preprocessor(640, 640)(image)
    assert tensor[0, 2].min() == 1.0 and tensor[0, 0].max() == 0.0 and tensor[0, 1].max() == 0.0


def test_buffer_is_reused_and_padding_refreshed_on_geometry_change():
    pre = Preprocessor(64, 64)
    tall = np.full((64, 32, 3), 7, np.uint8)
    wide = np.full((32, 64, 3), 9, np.uint8)
    t1, g1 = pre(tall)
    first = t1
    t2, g2 = pre(wide)
    assert np.shares_memory(t2, first) and np.shares_memory(t2, pre.batch)  # same buffer, no allocation
    assert g2.top == 16 and g2.left == 0
    # columns that were image for the tall frame are padding rows now
    assert np.allclose(t2[0, :, 0, :], PAD_VALUE / 255)
    assert np.allclose(t2[0, :, 32, :], 9 / 255)


def test_batch_slots_and_external_buffer():
    buffer = np.zeros((3, 3, 32, 32), np.float32)
    pre = Preprocessor(32, 32, batch=3, buffer=buffer)
    view, _ = pre(np.full((32, 32, 3), 255, np.uint8), slot=2)
    assert view.shape == (1, 3, 32, 32) and np.shares_memory(view, buffer)
    assert buffer[2].min() == 1.0 and buffer[:2].max() == 0.0
    with pytest.raises(ValueError, match="buffer shape"):
        Preprocessor(32, 32, batch=2, buffer=buffer)


def test_half_buffer():
    tensor, _ = Preprocessor(32, 32, dtype=np.float16)(np.zeros((10, 10, 3), np.uint8))
    assert tensor.dtype == np.float16


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 10, 3), np.uint8), "image is empty"),
        (np.zeros((10, 10, 3), np.float32), "expected a uint8 image (got float32)"),
        (np.zeros((10, 10, 2), np.uint8), "got shape (10, 10, 2)"),
        (np.zeros((2, 10, 10, 3), np.uint8), "got shape (2, 10, 10, 3)"),
        ("not an image", "expected a numpy array (got str)"),
    ],
)
def test_bad_images(image, message):
    with pytest.raises(InputError, match=None) as info:
        as_bgr(image)
    assert message in str(info.value)


def test_grayscale_and_bgra_convert():
    gray = np.full((5, 6), 200, np.uint8)
    assert as_bgr(gray).shape == (5, 6, 3) and as_bgr(gray)[0, 0].tolist() == [200, 200, 200]
    bgra = np.zeros((5, 6, 4), np.uint8)
    bgra[..., 2] = 255
    assert as_bgr(bgra)[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("shape", [(720, 1280, 3), (481, 640, 3), (64, 64, 3), (37, 53)])
def test_bgr_u8_layout_is_the_letterboxed_pixels_of_the_float_layouts(shape):
    """The uint8 BGR layout (a model that normalises inside) holds exactly the pixels the float
    layouts are made from: RGB/255 of it is the NCHW tensor, and to_bgr_u8 inverts that exactly."""
    from edgedet.preprocess import to_bgr_u8

    image = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    ref, geo = Preprocessor(384, 640)(image)
    got, geo_u8 = Preprocessor(384, 640, layout="bgr_u8")(image)
    assert geo_u8 == geo and got.shape == (1, 384, 640, 3) and got.dtype == np.uint8
    assert np.array_equal(got[:, :, :, ::-1].transpose(0, 3, 1, 2) / np.float32(255), ref)
    assert np.array_equal(to_bgr_u8(ref), got)


def test_bgr_u8_slots_keep_their_own_padding():
    pre = Preprocessor(64, 64, batch=2, layout="bgr_u8")
    tall = np.full((64, 32, 3), 7, np.uint8)
    wide = np.full((32, 64, 3), 9, np.uint8)
    a, _ = pre(tall, slot=0)
    b, geo = pre(wide, slot=1)
    assert np.shares_memory(a, pre.batch) and np.shares_memory(b, pre.batch) and pre.batch.shape == (2, 64, 64, 3)
    assert (pre.batch[0, :, :16] == PAD_VALUE).all() and (pre.batch[0, :, 16:48] == 7).all()
    assert geo.top == 16 and (pre.batch[1, :16] == PAD_VALUE).all() and (pre.batch[1, 16:48] == 9).all()
    pre(wide, slot=0)  # slot 0's geometry changes: its old image columns are padding again
    assert (pre.batch[0, :16] == PAD_VALUE).all() and (pre.batch[0, 16:48] == 9).all()
