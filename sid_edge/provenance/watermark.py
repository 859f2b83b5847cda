"""Stable Diffusion's invisible watermark: invisible-watermark's DWT-DCT decoder checked for the bit patterns the
reference code embeds.

Patterns (:data:`PATTERNS`), all embedded with ``WatermarkEncoder().encode(bgr, "dwtDct")``:

* ``StableDiffusionV1`` — the bytes ``b"StableDiffusionV1"`` (136 bits), CompVis/stable-diffusion
  ``scripts/txt2img.py``.
* ``SDV2`` — the bytes ``b"SDV2"`` (32 bits), Stability-AI/stablediffusion ``scripts/txt2img.py``.
* ``SDXL`` — the 48-bit message ``0b101100111110110010010000011110111011000110011110``, Stability-AI/generative-models
  (``WATERMARK_MESSAGE``) and diffusers' ``StableDiffusionXLWatermarker``.

The decoder is invisible-watermark's own ``EmbedMaxDct`` (``imwatermark/maxDct.py``): per 4x4 block of the Haar
DWT approximation of the U channel (YUV), the DCT-domain rule ``infer_dct_matrix`` gives one score; bit b of an
L-bit pattern is the mean score of blocks b, b+L, b+2L, ... thresholded at 127/255 (``EmbedMaxDct.decode``). The
per-block scores are computed once and grouped for every pattern length, which gives exactly the library's bits
(tests compare with ``WatermarkDecoder.decode``).

``imwatermark/__init__.py`` imports torch (for its RivaGAN method); this module loads ``maxDct.py`` by file path so
the DWT-DCT method stays torch-free. The pip package also declares ``opencv-python``; install it with ``--no-deps``
next to opencv-python-headless (see the ``provenance`` extra).

What a match says: the bit agreement with a known pattern. Under the null of random bits the chance of ``k`` or
more agreeing bits out of ``L`` is the binomial tail reported as ``p_random``. The watermark does not survive
resizing, cropping or JPEG re-encoding well, anyone with the library can embed it in any image, and Stable Diffusion
front-ends other than the reference scripts rarely embed it: a match is evidence, never proof; no match says nothing.
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache

import numpy as np

from sid_edge.provenance.signals import Signal

INSTALL_HINT = "pip install 'sid-edge[provenance]' and pip install --no-deps invisible-watermark"


def _bits_of_bytes(b: bytes) -> tuple[int, ...]:
    return tuple(int(x) for x in np.unpackbits(np.frombuffer(b, dtype=np.uint8)))


#: Pattern name -> (bits, where it comes from).
PATTERNS: dict[str, tuple[tuple[int, ...], str]] = {
    "StableDiffusionV1": (_bits_of_bytes(b"StableDiffusionV1"), "CompVis Stable Diffusion v1 reference scripts"),
    "SDV2": (_bits_of_bytes(b"SDV2"), "Stability AI Stable Diffusion 2 reference scripts"),
    "SDXL": (tuple(int(c) for c in bin(0b101100111110110010010000011110111011000110011110)[2:]),
             "Stability AI SDXL reference code and diffusers' SDXL pipelines"),
}

#: Largest chance-by-luck (binomial tail of the agreeing bits) reported as a signal: 32-bit SDV2 needs 30 agreeing
#: bits, 48-bit SDXL 41, 136-bit StableDiffusionV1 96. Not a fixed agreement fraction, because the library's own
#: embedding is lossy on saturated colours (the U channel clips): on the 10 test photographs its decoder recovered
#: 72-100 % of the bits straight after embedding.
DEFAULT_MAX_P_RANDOM = 1e-6
#: The library refuses images under 256x256 pixels (``WatermarkDecoder.decode``).
MIN_PIXELS = 256 * 256
SCALE, BLOCK = 36, 4  # EmbedMaxDct defaults: scales=[0, 36, 36], block=4


@lru_cache(maxsize=1)
def _max_dct_class():
    """invisible-watermark's ``EmbedMaxDct`` without importing the package (whose __init__ imports torch)."""
    spec = importlib.util.find_spec("imwatermark")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("invisible-watermark is not installed")
    from pathlib import Path

    path = Path(list(spec.submodule_search_locations)[0]) / "maxDct.py"
    mod_spec = importlib.util.spec_from_file_location("_sid_edge_imwatermark_maxdct", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.EmbedMaxDct


def available() -> str | None:
    """None when the DWT-DCT decoder can run (invisible-watermark's maxDct.py, PyWavelets, OpenCV), else why not."""
    try:
        import cv2  # noqa: F401
        import pywt  # noqa: F401

        _max_dct_class()
    except Exception as e:  # noqa: BLE001
        return f"watermark check unavailable ({type(e).__name__}: {e}); {INSTALL_HINT}"
    return None


def block_scores(bgr: np.ndarray) -> np.ndarray:
    """Per-block DWT-DCT scores (0/1, float64 [N]) of a uint8 BGR image HxWx3, in the library's block order.

    Raises ValueError for images under 256x256 pixels or of the wrong shape/dtype."""
    import cv2
    import pywt

    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"need a uint8 HxWx3 BGR image, got {bgr.dtype} {bgr.shape}")
    row, col = bgr.shape[:2]
    if row * col < MIN_PIXELS:
        raise ValueError(f"image too small for the watermark ({col}x{row} < 256x256 pixels)")
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    ca1, _ = pywt.dwt2(yuv[: row // 4 * 4, : col // 4 * 4, 1], "haar")  # channel 1: scales[1] = 36, scales[0] = 0
    n = (ca1.shape[0] // BLOCK) * (ca1.shape[1] // BLOCK)
    embed = _max_dct_class()(watermarks=[], wmLen=n, scales=[0, SCALE, SCALE], block=BLOCK)
    scores = embed.decode_frame(ca1, SCALE, [[] for _ in range(n)])
    return np.array([s[0] for s in scores], dtype=np.float64)


def bits_for_length(scores: np.ndarray, length: int) -> np.ndarray:
    """The library's decoded bits (bool [length]) for an L-bit watermark from per-block scores: bit b is the mean
    of scores b, b+L, ... times 255, above 127 (``EmbedMaxDct.decode``)."""
    n = len(scores)
    if n < length:
        raise ValueError(f"{n} blocks cannot carry {length} bits")
    sums = np.bincount(np.arange(n) % length, weights=scores, minlength=length)
    counts = np.bincount(np.arange(n) % length, minlength=length)
    return (sums / counts) * 255 > 127


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): the chance of k or more agreeing bits by luck."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def check_bgr(bgr: np.ndarray, max_p_random: float = DEFAULT_MAX_P_RANDOM) -> list[Signal]:
    """Watermark signals of a uint8 BGR image: one per pattern whose agreeing bits would occur by luck with
    probability at most ``max_p_random`` (binomial tail, fair coin per bit), best first. Raises ValueError for images
    the decoder cannot take (see :func:`block_scores`)."""
    scores = block_scores(bgr)
    out = []
    for name, (bits, origin) in PATTERNS.items():
        decoded = bits_for_length(scores, len(bits))
        agree = int(np.sum(decoded == np.array(bits, dtype=bool)))
        fraction = agree / len(bits)
        p = binomial_tail(agree, len(bits))
        if p <= max_p_random:
            out.append(Signal(
                "watermark",
                f"invisible watermark of {origin}: {agree} of {len(bits)} bits agree (chance by luck {p:.1e})",
                "statistical", True, f"{name} {fraction:.0%}", "DWT-DCT watermark",
                {"pattern": name, "bits": len(bits), "agreeing_bits": agree, "bit_agreement": round(fraction, 4),
                 "p_random": p},
            ))
    out.sort(key=lambda s: s.details["p_random"])
    return out
