"""Deterministic synthetic talking-head corpus: cartoon faces whose mouths open with speech-like audio.

Each clip ships its per-frame ground truth (mouth opening, mouth box, head motion, blinks) as a JSON sidecar.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from scipy.signal import iirpeak, lfilter

from privfedtalk.data.corpus import split_heldout
from privfedtalk.data.media import write_video
from privfedtalk.errors import ConfigError

__all__ = [
    "synthesize_corpus",
    "render_clip",
    "synth_speech",
    "identity_name",
    "clip_name",
    "Corruption",
    "CORRUPTION_PARAMETERS",
    "SS",
]

SS = 4  # supersampling factor: shapes are rasterised at SS x resolution, then box-averaged
SAMPLE_RATE = 16000
_MOUTH_DARK = np.array([0.30, 0.04, 0.07], np.float32)  # luminance ~0.12: well below the 0.25 metric cut

_SKIN = [
    (0.97, 0.83, 0.72),
    (0.94, 0.76, 0.63),
    (0.88, 0.69, 0.56),
    (0.80, 0.60, 0.46),
    (0.72, 0.53, 0.39),
    (0.66, 0.48, 0.35),
    (0.90, 0.74, 0.68),
]
_HAIR = [
    (0.08, 0.06, 0.05),
    (0.30, 0.18, 0.10),
    (0.55, 0.36, 0.18),
    (0.86, 0.72, 0.42),
    (0.62, 0.22, 0.08),
    (0.70, 0.70, 0.72),
    (0.18, 0.24, 0.55),
    (0.55, 0.15, 0.40),
]
_IRIS = [(0.36, 0.22, 0.10), (0.20, 0.42, 0.72), (0.22, 0.50, 0.30), (0.45, 0.48, 0.52), (0.50, 0.40, 0.18)]
# (F1, F2, F3) in Hz for a, e, i, o, u: the vowel decides the formants of each syllable.
_VOWELS = np.array(
    [[730, 1090, 2440], [530, 1840, 2480], [300, 2250, 3000], [570, 840, 2410], [330, 900, 2250]], np.float64
)


def identity_name(k: int) -> str:
    return f"id{k:03d}"


def clip_name(c: int) -> str:
    return f"clip{c:02d}"


def _lum(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _lift(rgb, min_lum: float) -> np.ndarray:
    """Blend a colour toward white until its luminance reaches min_lum."""
    c = np.asarray(rgb, np.float32)
    lum = _lum(c)
    if lum >= min_lum:
        return c
    a = (min_lum - lum) / max(1.0 - lum, 1e-6)
    return (c + a * (1.0 - c)).astype(np.float32)


# ------------------------------------------------------------------------------------------ rasteriser


class _Canvas:
    """An RGB image at SS x resolution whose top-left subpixel corner sits at output-pixel `origin`."""

    def __init__(self, height: int, width: int, origin: tuple[float, float] = (0.0, 0.0), alpha=False):
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.alpha = np.zeros((height, width), bool) if alpha else None
        self.ox, self.oy = origin

    def paint(self, bbox, mask_fn, color) -> None:
        """Fill subpixels inside bbox (x0,y0,x1,y1 output px) where mask_fn(X,Y) holds.

        X, Y: subpixel-centre coordinates in output pixels; color: (3,) or callable(X,Y)->(h,w,3).
        """
        h, w = self.rgb.shape[:2]
        j0 = max(0, int(math.floor((bbox[0] - self.ox) * SS)))
        i0 = max(0, int(math.floor((bbox[1] - self.oy) * SS)))
        j1 = min(w, int(math.ceil((bbox[2] - self.ox) * SS)) + 1)
        i1 = min(h, int(math.ceil((bbox[3] - self.oy) * SS)) + 1)
        if j0 >= j1 or i0 >= i1:
            return
        xs = self.ox + (np.arange(j0, j1, dtype=np.float32) + 0.5) / SS
        ys = self.oy + (np.arange(i0, i1, dtype=np.float32) + 0.5) / SS
        X, Y = np.meshgrid(xs, ys)
        m = mask_fn(X, Y)
        if not m.any():
            return
        region = self.rgb[i0:i1, j0:j1]
        if callable(color):
            region[m] = color(X, Y)[m]
        else:
            region[m] = np.asarray(color, np.float32)
        if self.alpha is not None:
            self.alpha[i0:i1, j0:j1][m] = True

    def ellipse(self, cx, cy, rx, ry, color, angle=0.0, where=None) -> None:
        rx, ry = max(rx, 1e-3), max(ry, 1e-3)
        r = max(rx, ry)
        ca, sa = math.cos(angle), math.sin(angle)

        def mask(X, Y):
            dx, dy = X - cx, Y - cy
            u, v = ca * dx + sa * dy, -sa * dx + ca * dy
            m = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
            return m & where(X, Y) if where is not None else m

        self.paint((cx - r, cy - r, cx + r, cy + r), mask, color)

    def rect(self, x0, y0, x1, y1, color, where=None) -> None:
        def mask(X, Y):
            m = (X >= x0) & (X < x1) & (Y >= y0) & (Y < y1)
            return m & where(X, Y) if where is not None else m

        self.paint((x0, y0, x1, y1), mask, color)


# ------------------------------------------------------------------------------------------ identities


@dataclass
class _Face:
    """Per-identity appearance; geometry in output pixels relative to the unshifted head."""

    size: int
    bg: np.ndarray  # (2,3) gradient end colours
    bg_dir: int  # 0 flat, 1 vertical, 2 diagonal
    skin: np.ndarray
    lip: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    shirt: np.ndarray
    hair_style: str  # cap | side | none
    hairline: float
    cx: float
    cy: float
    hx: float
    hy: float
    eye_dx: float
    eye_y: float
    eye_rx: float
    eye_ry: float
    brow_tilt: float
    mouth_y: float
    mouth_rx: float
    mouth_ry_max: float
    lip_t: float
    glasses: np.ndarray | None
    earrings: np.ndarray | None
    hat: tuple[np.ndarray, np.ndarray] | None
    blush: bool
    f0: float
    formant_scale: float
    breath: float


def _make_face(seed: int, k: int, size: int) -> _Face:
    rng = np.random.default_rng([seed, k, 0])  # appearance and voice depend only on (seed, identity)
    u = size / 64.0

    def pick(table):
        return np.asarray(table[int(rng.integers(len(table)))], np.float32)

    def jitter(c, amount):
        return np.clip(c + rng.uniform(-amount, amount, 3), 0.0, 1.0).astype(np.float32)

    skin = _lift(jitter(pick(_SKIN), 0.03), 0.48)
    lip = _lift(np.clip(skin * np.array([0.95, 0.60, 0.62]) + np.array([0.05, 0.0, 0.03]), 0, 1), 0.40)
    bg0 = rng.uniform(0.05, 0.95, 3).astype(np.float32)
    bg1 = np.clip(bg0 + rng.uniform(-0.45, 0.45, 3), 0, 1).astype(np.float32)
    hx = rng.uniform(16.0, 20.0) * u
    hy = rng.uniform(21.0, 24.5) * u
    cx = 32.0 * u + rng.uniform(-1.0, 1.0) * u
    cy = 33.0 * u + rng.uniform(-0.8, 0.8) * u
    eye_rx = rng.uniform(2.7, 3.4) * u
    styles = ("cap", "side", "none")
    glasses = None
    if rng.random() < 0.35:
        glasses = jitter(
            pick([(0.10, 0.10, 0.12), (0.55, 0.12, 0.10), (0.15, 0.25, 0.55), (0.75, 0.6, 0.2)]), 0.05
        )
    earrings = pick([(0.92, 0.78, 0.25), (0.85, 0.86, 0.90)]) if rng.random() < 0.3 else None
    hat = None
    if rng.random() < 0.25:
        hat = (rng.uniform(0.1, 0.9, 3).astype(np.float32), rng.uniform(0.1, 0.9, 3).astype(np.float32))
    return _Face(
        size=size,
        bg=np.stack([bg0, bg1]),
        bg_dir=int(rng.integers(3)),
        skin=skin,
        lip=lip.astype(np.float32),
        hair=jitter(pick(_HAIR), 0.04),
        iris=jitter(pick(_IRIS), 0.04),
        shirt=rng.uniform(0.05, 0.95, 3).astype(np.float32),
        hair_style=styles[int(rng.integers(3))],
        hairline=rng.uniform(0.35, 0.55),
        cx=cx,
        cy=cy,
        hx=hx,
        hy=hy,
        eye_dx=rng.uniform(0.38, 0.46) * hx,
        eye_y=cy - rng.uniform(0.10, 0.16) * hy,
        eye_rx=eye_rx,
        eye_ry=eye_rx * rng.uniform(0.55, 0.75),
        brow_tilt=rng.uniform(-0.25, 0.25),
        mouth_y=cy + rng.uniform(0.48, 0.53) * hy,
        mouth_rx=rng.uniform(6.6, 7.6) * u,  # open mouth ~14 px wide at size 64
        mouth_ry_max=rng.uniform(3.7, 4.3) * u,  # ... and ~8 px tall
        lip_t=rng.uniform(1.1, 1.5) * u,
        glasses=glasses,
        earrings=earrings,
        hat=hat,
        blush=bool(rng.random() < 0.5),
        f0=float(np.exp(rng.uniform(np.log(90.0), np.log(260.0)))),
        formant_scale=float(rng.uniform(0.88, 1.15)),
        breath=float(rng.uniform(0.004, 0.012)),
    )


def _skin_fn(face: _Face, dx: float = 0.0, dy: float = 0.0):
    """Skin colour with gentle shading toward the head outline (never below luminance ~0.4)."""

    def color(X, Y):
        r2 = ((X - face.cx - dx) / face.hx) ** 2 + ((Y - face.cy - dy) / face.hy) ** 2
        shade = 1.0 - 0.12 * np.clip(r2, 0.0, 1.0)
        return shade[..., None] * face.skin

    return color


def _background(face: _Face) -> np.ndarray:
    s = face.size * SS
    t = (np.arange(s, dtype=np.float32) + 0.5) / s
    if face.bg_dir == 0:
        w = np.zeros((s, s), np.float32)
    elif face.bg_dir == 1:
        w = np.broadcast_to(t[:, None], (s, s))
    else:
        w = 0.5 * (t[:, None] + t[None, :])
    return (face.bg[0] * (1.0 - w[..., None]) + face.bg[1] * w[..., None]).astype(np.float32)


def _static_layer(face: _Face, margin: int) -> _Canvas:
    """Everything that moves rigidly with the head (open eyes, no mouth), with an alpha mask."""
    n = face.size * SS + 2 * margin
    cv = _Canvas(n, n, origin=(-margin / SS, -margin / SS), alpha=True)
    u = face.size / 64.0
    cx, cy, hx, hy = face.cx, face.cy, face.hx, face.hy
    # Shoulders and neck first; the head covers their top.
    cv.ellipse(cx, face.size + 6.0 * u, 30.0 * u, 14.0 * u, face.shirt)
    cv.rect(cx - 0.42 * hx, cy + 0.5 * hy, cx + 0.42 * hx, face.size + 2.0 * u, face.skin * 0.88)
    if face.hair_style == "side":
        cv.ellipse(cx, cy + 0.12 * hy, hx * 1.28, hy * 1.05, face.hair, where=lambda X, Y: Y < cy + 0.8 * hy)
    for side in (-1.0, 1.0):
        cv.ellipse(cx + side * hx * 0.97, face.eye_y + 2.5 * u, 2.4 * u, 4.0 * u, face.skin * 0.93)
    cv.ellipse(cx, cy, hx, hy, _skin_fn(face))
    if face.blush:
        blush = np.clip(face.skin * 0.85 + np.array([0.15, 0.02, 0.04]), 0, 1)
        for side in (-1.0, 1.0):
            cv.ellipse(cx + side * 0.55 * hx, cy + 0.28 * hy, 3.0 * u, 2.0 * u, blush)
    if face.hair_style in ("cap", "side"):
        line = cy - face.hairline * hy

        def hairline(X, Y):
            # A wavy hairline with a side parting, so caps differ between identities.
            return Y < line + 1.2 * u * np.sin((X - cx) / (2.5 * u)) + 0.08 * (X - cx)

        cv.ellipse(cx, cy - 0.06 * hy, hx * 1.07, hy * 1.02, face.hair, where=hairline)
    if face.hat is not None:
        crown, band = face.hat
        top = cy - 0.55 * hy
        cv.ellipse(cx, cy - 0.2 * hy, hx * 1.12, hy * 1.1, crown, where=lambda X, Y: Y < top)
        cv.rect(cx - hx * 1.14, top - 2.2 * u, cx + hx * 1.14, top + 0.6 * u, band)
    brow = np.clip(face.hair * 0.7, 0, 1) if _lum(face.hair) < 0.6 else face.hair * 0.55
    for side in (-1.0, 1.0):
        ex = cx + side * face.eye_dx
        cv.ellipse(ex, face.eye_y - 3.6 * u, face.eye_rx * 1.15, 0.75 * u, brow, angle=side * face.brow_tilt)
        cv.ellipse(ex, face.eye_y, face.eye_rx, face.eye_ry, np.array([0.96, 0.96, 0.94], np.float32))
        ir = min(face.eye_ry * 0.95, 1.6 * u)
        cv.ellipse(ex, face.eye_y, ir, ir, face.iris, where=_inside(ex, face.eye_y, face.eye_rx, face.eye_ry))
        cv.ellipse(ex, face.eye_y, 0.6 * ir, 0.6 * ir, np.array([0.05, 0.05, 0.06], np.float32))
        cv.ellipse(ex + 0.4 * ir, face.eye_y - 0.4 * ir, 0.3 * u, 0.3 * u, np.ones(3, np.float32))
    # Nose hint: shading only, kept bright so it never reads as "dark mouth" pixels.
    cv.ellipse(cx, cy + 0.13 * hy, 2.2 * u, 1.3 * u, face.skin * 0.84)
    cv.ellipse(cx - 0.5 * u, cy + 0.02 * hy, 0.7 * u, 2.2 * u, face.skin * 0.92)
    if face.glasses is not None:
        for side in (-1.0, 1.0):
            ex = cx + side * face.eye_dx
            inner = face.eye_rx + 1.0 * u, face.eye_ry + 1.3 * u

            def ring(X, Y, ex=ex, inner=inner):
                return ((X - ex) / inner[0]) ** 2 + ((Y - face.eye_y) / inner[1]) ** 2 > 1.0

            cv.ellipse(ex, face.eye_y, inner[0] + 0.8 * u, inner[1] + 0.8 * u, face.glasses, where=ring)
        gap = face.eye_dx - face.eye_rx - 1.2 * u
        cv.rect(cx - gap, face.eye_y - 0.9 * u, cx + gap, face.eye_y - 0.2 * u, face.glasses)
    if face.earrings is not None:
        for side in (-1.0, 1.0):
            cv.ellipse(cx + side * hx * 0.97, face.eye_y + 7.3 * u, 1.1 * u, 1.1 * u, face.earrings)
    return cv


def _inside(cx, cy, rx, ry):
    def where(X, Y):
        return ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 <= 1.0

    return where


def _mouth_extent(face: _Face) -> tuple[float, float]:
    """Half-width and half-height (output px) of the lips at full opening."""
    return face.mouth_rx * 1.1 + face.lip_t, face.mouth_ry_max + face.lip_t


def _draw_dynamic(cv: _Canvas, face: _Face, dx: float, dy: float, mouth_open: float, blink: float) -> None:
    u = face.size / 64.0
    mx, my = face.cx + dx, face.mouth_y + dy
    ry = face.mouth_ry_max * float(np.clip(mouth_open, 0.0, 1.0))
    # Lips: an outer ellipse in lip colour, a slightly darker lip line, then the dark interior.
    cv.ellipse(mx, my, face.mouth_rx * 1.1 + face.lip_t, ry + face.lip_t, face.lip)
    cv.ellipse(mx, my, face.mouth_rx, 0.3 * u, face.lip * 0.75)
    if ry > 0.0:
        cv.ellipse(mx, my, face.mouth_rx, ry, _MOUTH_DARK)
    if blink > 0.0:
        for side in (-1.0, 1.0):
            ex, ey = face.cx + side * face.eye_dx + dx, face.eye_y + dy
            rx, ry_e = face.eye_rx * 1.05, face.eye_ry * 1.1
            lid = ey - ry_e + 2.0 * ry_e * float(np.clip(blink, 0.0, 1.0))

            def covered(X, Y, lid=lid):
                return Y <= lid

            cv.ellipse(ex, ey, rx, ry_e, _skin_fn(face, dx, dy), where=covered)
            cv.ellipse(ex, lid, rx * 0.95, 0.3 * u, face.skin * 0.55, where=_inside(ex, ey, rx, ry_e))


def _box_down(img: np.ndarray) -> np.ndarray:
    """(S*SS, S*SS, 3) -> (S, S, 3) box average; strided sums are ~10x faster than a multi-axis mean."""
    rows = sum(img[i::SS] for i in range(SS))
    return sum(rows[:, i::SS] for i in range(SS)) * (1.0 / (SS * SS))


def render_clip(face: _Face, mouth_open, head_offset, blink) -> np.ndarray:
    """Render frames (T, size, size, 3) uint8 from per-frame mouth_open (T,), head_offset (T,2), blink (T,).

    head_offset must be multiples of 1/SS px (the static layer is shifted by whole subpixels).
    """
    size = face.size
    s = size * SS
    offsets = np.rint(np.asarray(head_offset, np.float64) * SS).astype(int)
    margin = int(np.abs(offsets).max(initial=0)) + SS
    layer = _static_layer(face, margin)
    bg = _background(face)
    out = np.empty((len(mouth_open), size, size, 3), np.uint8)
    for t in range(len(mouth_open)):
        sx, sy = offsets[t]
        rows = slice(margin - sy, margin - sy + s)
        cols = slice(margin - sx, margin - sx + s)
        cv = _Canvas(0, 0)
        cv.rgb = np.where(layer.alpha[rows, cols, None], layer.rgb[rows, cols], bg)
        _draw_dynamic(cv, face, sx / SS, sy / SS, float(mouth_open[t]), float(blink[t]))
        out[t] = np.clip(np.rint(_box_down(cv.rgb) * 255.0), 0, 255).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------------ audio


def _envelope_shape(n: int) -> np.ndarray:
    """Syllable amplitude envelope over n samples: raised-cosine attack (25%), hold, release (40%)."""
    tau = (np.arange(n) + 0.5) / n
    env = np.ones(n)
    a, r = 0.25, 0.40
    env[tau < a] = np.sin(0.5 * np.pi * tau[tau < a] / a) ** 2
    tail = tau > 1.0 - r
    env[tail] = np.cos(0.5 * np.pi * (tau[tail] - (1.0 - r)) / r) ** 2
    return env


def _formant_filter(source: np.ndarray, formants, sample_rate: int) -> np.ndarray:
    """Parallel formant resonators (unit peak gain, bandwidths 90/110/160 Hz) with falling gains.

    Parallel rather than cascade so F2/F3 keep speech-like levels (about -10/-20 dB) next to F1; the
    alternating sign avoids spectral notches between neighbouring formants.
    """
    out = np.zeros_like(source)
    for f, bw, gain in zip(formants, (90.0, 110.0, 160.0), (1.0, -0.6, 0.35)):
        b, a = iirpeak(float(f), float(f) / bw, fs=sample_rate)
        out += gain * lfilter(b, a, source)
    return out


def synth_speech(
    rng: np.random.Generator,
    seconds: float,
    f0: float,
    formant_scale: float,
    breath: float = 0.008,
    sample_rate: int = SAMPLE_RATE,
) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like audio and its amplitude envelope, both (N,) with N = round(seconds*sample_rate).

    Syllables (80-250 ms) form words of 2-8 syllables separated by pauses (150-600 ms, ~25% silence). Each
    syllable is a harmonic glottal source at the speaker's f0 with slight intonation, filtered by 3 formants
    of a random vowel (scaled by formant_scale), with unit RMS times the envelope. The envelope peaks at 1;
    the audio peaks at 0.5.
    """
    n = int(round(seconds * sample_rate))
    audio = np.zeros(n)
    env = np.zeros(n)
    t = rng.uniform(0.05, 0.25)
    end = seconds - 0.05
    word_pitch = 1.0
    syllables = []
    while t < end - 0.08:
        word_pitch = float(np.clip(word_pitch + rng.normal(0.0, 0.05), 0.88, 1.12))
        for _ in range(int(rng.integers(2, 9))):
            d = rng.uniform(0.08, 0.25)
            if t + d > end:
                break
            syllables.append((t, d, rng.uniform(0.55, 1.0), int(rng.integers(len(_VOWELS))), word_pitch))
            t += d
        t += 0.15 + 0.45 * rng.beta(1.2, 3.5)  # pauses skewed short, as in running speech
    if not syllables:
        return audio.astype(np.float32), env.astype(np.float32)
    peak_amp = max(s[2] for s in syllables)
    for start, dur, amp, vowel, pitch in syllables:
        i0 = int(round(start * sample_rate))
        m = min(int(round(dur * sample_rate)), n - i0)
        if m <= 16:
            continue
        tt = np.arange(m) / sample_rate
        glide = rng.uniform(-0.06, 0.04)
        f_inst = f0 * pitch * (1.0 + glide * tt / dur) * (1.0 + 0.004 * np.sin(2 * np.pi * 5.5 * tt))
        phase = 2.0 * np.pi * np.cumsum(f_inst) / sample_rate + rng.uniform(0, 2 * np.pi)
        k = np.arange(1, max(2, int(7000.0 / (f0 * pitch * 1.1))) + 1)
        source = (np.sin(np.outer(phase, k)) / k**1.2).sum(axis=1)  # glottal tilt + lip radiation
        source += breath * rng.standard_normal(m) * np.abs(source).max()
        formants = _VOWELS[vowel] * formant_scale * rng.uniform(0.96, 1.04, 3)
        voiced = _formant_filter(source, formants, sample_rate)
        voiced /= np.sqrt(np.mean(voiced**2)) + 1e-12
        shape = (amp / peak_amp) * _envelope_shape(m)
        audio[i0 : i0 + m] += shape * voiced
        env[i0 : i0 + m] = np.maximum(env[i0 : i0 + m], shape)
        if rng.random() < 0.4:  # a quiet consonant burst at the onset, for spectral variety
            b = min(int(rng.uniform(0.015, 0.035) * sample_rate), m)
            burst = np.diff(rng.standard_normal(b + 1)) * np.linspace(1.0, 0.0, b) * 0.12
            audio[i0 : i0 + b] += burst
    audio *= 0.5 / (np.abs(audio).max() + 1e-12)
    return audio.astype(np.float32), env.astype(np.float32)


# ------------------------------------------------------------------------------------------ per clip


def _head_motion(rng: np.random.Generator, num: int, size: int, fps: float) -> np.ndarray:
    """Smooth random walk, |offset| <= ~size/64 px, quantised to 1/SS px: (num, 2)."""
    pad = int(2 * fps)
    noise = rng.standard_normal((num + pad, 2))
    alpha = min(1.0, 2.0 / fps)  # one-pole low-pass with ~0.5 s time constant, applied twice
    path = lfilter([alpha], [1.0, alpha - 1.0], noise, axis=0)
    path = lfilter([alpha], [1.0, alpha - 1.0], path, axis=0)[pad:]  # drop the filter warm-up
    path -= path.mean(axis=0)
    amp = rng.uniform(0.6, 1.0) * size / 64.0
    path *= amp / (np.abs(path).max() + 1e-12)
    return np.rint(path * SS) / SS


def _blinks(rng: np.random.Generator, num: int, fps: float) -> np.ndarray:
    """Blink closure per frame in 0..1: a ~3-frame triangle every 2-5 s."""
    out = np.zeros(num)
    width = max(3, int(round(0.12 * fps)))
    profile = 1.0 - np.abs(np.linspace(-1.0, 1.0, width + 2)[1:-1])
    profile /= profile.max()
    t = rng.uniform(0.4, 2.5)
    while True:
        start = int(round(t * fps))
        if start >= num:
            break
        seg = profile[: num - start]
        out[start : start + seg.size] = np.maximum(out[start : start + seg.size], seg)
        t += rng.uniform(2.0, 5.0)
    return out


def _mouth_box(face: _Face, offsets: np.ndarray) -> list[int]:
    """One integer box [x0,y0,x1,y1] (x1,y1 exclusive) holding the lips at full opening for every offset."""
    hw, hh = _mouth_extent(face)
    lo, hi = offsets.min(axis=0), offsets.max(axis=0)
    x0 = math.floor(face.cx - hw + lo[0])
    y0 = math.floor(face.mouth_y - hh + lo[1])
    x1 = math.ceil(face.cx + hw + hi[0])
    y1 = math.ceil(face.mouth_y + hh + hi[1])
    s = face.size
    return [max(0, x0), max(0, y0), min(s, x1), min(s, y1)]


# ------------------------------------------------------------------------------------------ corruptions


class Corruption(str, Enum):
    """How a corrupted client's training clips are damaged (see CORRUPTION_PARAMETERS for the strengths)."""

    AUDIO_SHIFT = "audio_shift"  # the audio track is moved against the video: wrong lip timing
    IDENTITY = "identity"  # a block of frames shows another identity of the corpus
    OCCLUSION = "occlusion"  # a block of frames has a flat box over the face, brows to chin
    TEMPORAL = "temporal"  # per-frame head-position jitter and brightness flicker


# Strengths, chosen so each corruption is plain to the detector-free checks at 32x32 and 64x64 (see
# tests/data/test_data_corruptions.py); pixel amounts are at 64x64 and scale with the frame size.
CORRUPTION_PARAMETERS = {
    Corruption.AUDIO_SHIFT: {"min_frames": 3, "max_frames": 6},  # |offset| in frames, random sign
    Corruption.IDENTITY: {"frame_share": 0.5},  # one contiguous block, never frame 0
    Corruption.OCCLUSION: {"frame_share": 0.5},
    # Head jitter uniform in +-jitter_px per axis and frame; brightness gain uniform in 1 +- flicker.
    Corruption.TEMPORAL: {"jitter_px": 2.0, "flicker": 0.2},
}


def _parse_corruptions(corruption, corrupt_fraction: float) -> list[Corruption]:
    if corruption is None:
        kinds = []
    else:
        raw = [corruption] if isinstance(corruption, (str, Corruption)) else list(corruption)
        kinds = []
        for value in raw:
            try:
                kinds.append(Corruption(value))
            except ValueError:
                choices = ", ".join(k.value for k in Corruption)
                raise ConfigError(f"unknown corruption {value!r} (choose from {choices})") from None
    fraction = float(corrupt_fraction)
    if not 0.0 <= fraction <= 1.0:  # also rejects nan
        raise ConfigError(f"corrupt fraction must be in [0, 1], got {corrupt_fraction}")
    if fraction > 0.0 and not kinds:
        raise ConfigError(f"corrupt fraction {fraction} needs a corruption kind (e.g. --corruption temporal)")
    return kinds


def _choose_corrupted(seed: int, private: list[str], kinds: list[Corruption], fraction: float) -> dict:
    """{identity: kind} for round(fraction * len(private)) private identities (at least 1 if fraction > 0).

    The order depends only on (seed, number of private identities), so a smaller fraction corrupts a
    subset of a larger one; kinds are dealt out in turn when several are given.
    """
    if not kinds or fraction == 0.0 or not private:
        return {}
    count = max(1, int(math.floor(fraction * len(private) + 0.5)))
    order = np.random.default_rng([seed, len(private), 0xC0]).permutation(len(private))
    return {private[int(i)]: kinds[n % len(kinds)] for n, i in enumerate(order[:count])}


def _frame_block(rng: np.random.Generator, num: int, share: float) -> np.ndarray:
    """Indices of one contiguous block of round(share * num) frames that never includes frame 0."""
    length = min(max(1, int(round(share * num))), num - 1)
    start = int(rng.integers(1, num - length + 1))
    return np.arange(start, start + length)


def _delay_audio(audio: np.ndarray, samples: int) -> np.ndarray:
    """audio moved later by `samples` (earlier if negative), same length, silence where nothing is left."""
    out = np.zeros_like(audio)
    if samples >= 0:
        out[samples:] = audio[: audio.size - samples]
    else:
        out[: audio.size + samples] = audio[-samples:]
    return out


def _shift_audio(rng, audio: np.ndarray, fps: float) -> tuple[np.ndarray, dict]:
    p = CORRUPTION_PARAMETERS[Corruption.AUDIO_SHIFT]
    frames = int(rng.integers(p["min_frames"], p["max_frames"] + 1)) * (1 if rng.random() < 0.5 else -1)
    samples = int(round(frames * SAMPLE_RATE / fps))
    record = {"audio_offset_frames": frames, "audio_offset_samples": samples}
    return _delay_audio(audio, samples), record


def _contaminate_identity(rng, frames, seed, k, identities, size, mouth, offsets, blink) -> dict:
    """Replace a block of frames (in place) with another identity speaking with the same mouth and motion."""
    others = [j for j in range(identities) if j != k]
    source = others[int(rng.integers(len(others)))]
    block = _frame_block(rng, len(frames), CORRUPTION_PARAMETERS[Corruption.IDENTITY]["frame_share"])
    face = _make_face(seed, source, size)
    frames[block] = render_clip(face, mouth[block], offsets[block], blink[block])
    return {"source_identity": identity_name(source), "frames": block.tolist()}


# Object colours far from every skin tone, all with luminance 0.30-0.40 (above the 0.25 mouth cut).
_OCCLUDER = [(0.12, 0.30, 0.80), (0.15, 0.55, 0.25), (0.50, 0.20, 0.65), (0.20, 0.45, 0.50)]


def _occlude(rng, frames, face: _Face, offsets) -> dict:
    """Cover the face from brows to chin (moving with the head) with a flat box on a block of frames."""
    block = _frame_block(rng, len(frames), CORRUPTION_PARAMETERS[Corruption.OCCLUSION]["frame_share"])
    color = np.rint(np.asarray(_OCCLUDER[int(rng.integers(len(_OCCLUDER)))]) * 255.0).astype(np.uint8)
    u = face.size / 64.0
    box = [
        face.cx - 0.85 * face.hx,
        face.eye_y - face.eye_ry - 3.0 * u,
        face.cx + 0.85 * face.hx,
        face.cy + 0.85 * face.hy,
    ]
    for t in block:
        dx, dy = offsets[t]
        x0, x1 = (max(0, int(round(v + dx))) for v in (box[0], box[2]))
        y0, y1 = (max(0, int(round(v + dy))) for v in (box[1], box[3]))
        frames[t, y0:y1, x0:x1] = color
    return {"frames": block.tolist(), "box": [round(float(v), 3) for v in box], "color": color.tolist()}


def _temporal_noise(rng, num: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame head jitter (num, 2) in whole subpixels and brightness gains (num,)."""
    p = CORRUPTION_PARAMETERS[Corruption.TEMPORAL]
    reach = int(round(p["jitter_px"] * size / 64.0 * SS))
    jitter = rng.integers(-reach, reach + 1, (num, 2)) / SS
    gain = np.round(1.0 + rng.uniform(-p["flicker"], p["flicker"], num), 4)
    return jitter, gain


def synthesize_corpus(
    out_dir,
    identities: int = 12,
    clips: int = 4,
    seconds: float = 4.0,
    fps: float = 25.0,
    size: int = 64,
    seed: int = 0,
    public_fraction: float = 0.5,
    private_clips: int | None = None,
    private_mouth_lag: int = 0,
    corruption: str | Corruption | Sequence[str | Corruption] | None = None,
    corrupt_fraction: float = 0.0,
    heldout_clips: int = 1,
    private_start: int | None = None,
) -> dict:
    """Write the synthetic corpus and return its manifest.

    Layout: out_dir/<idNNN>/<clipNN>.mp4 (h264 + AAC mono 16 kHz), <clipNN>.json ground truth, and
    out_dir/split.json {"public": [...], "private": [...]}. Identity k and its clip c depend only on
    (seed, k, c, seconds, fps, size), not on how many identities or clips are requested.
    Returns {"root", "identities", "split", "corruption" (split.json's record or None), "clips": {identity:
    [relative mp4 paths]}, "fps", "size", ...}.
    `private_clips` (default `clips`) sets the clip count of private identities: many public identities
    with few clips each make a backbone that generalizes, while clients need several clips each.
    `private_start` (default: after the public ones) is the first of the consecutive private
    identities; the public ones are all the others, so the public set can grow around fixed clients.
    `private_mouth_lag` > 0 makes the private identities' mouths trail their audio by that many frames
    (a speaking style the public backbone never saw): a domain shift that federated adapters can learn
    from all clients' data, while each client alone has only its own few clips.

    Corruption scenarios (unreliable clients): `corruption` names one kind or several (a `Corruption`
    or its value: audio_shift, identity, occlusion, temporal), `corrupt_fraction` in [0, 1] the share
    of private identities (clients) whose TRAINING clips are damaged; with several kinds the chosen
    identities take them in turn. Held-out clips (the last `heldout_clips`, as in `data.heldout_clips`)
    stay clean, public identities are never corrupted, and every clean clip is byte-for-byte the clip
    an uncorrupted corpus with the same seed has. Corruptions apply on top of `private_mouth_lag`:
      audio_shift: the audio track moves by a random whole number of frames (3-6, either sign; positive
        = the sound comes later than the picture); the start or end is silence;
      identity: one block of half the frames (never frame 0) shows another identity of the corpus with
        the same mouth, head motion and blinks;
      occlusion: a flat box in a non-skin colour over the face from the brows to the chin (eyes, nose,
        mouth) on one block of half the frames;
      temporal: every frame's head position jitters independently (+-2 px at 64x64) and its brightness
        is scaled by a random gain in [0.8, 1.2].
    split.json then gains "corruption": {"kinds", "fraction", "heldout_clips", "parameters",
    "identities": {identity: {"kind", "clips": [clip names]}}}, and each corrupted clip's sidecar gains
    "corruption": {"kind", ...} with what was done (audio offset, replaced frames and their source,
    the box, the jitter and gain series). Sidecar "head_offset" and "mouth_box" describe the frames as
    rendered (jitter included); under `identity` they describe the clip's own face, not the intruder.
    Bad corruption arguments raise ConfigError.
    """
    if identities < 1 or clips < 1:
        raise ValueError("identities and clips must be >= 1")
    if private_mouth_lag < 0:
        raise ValueError("private_mouth_lag must be >= 0")
    kinds = _parse_corruptions(corruption, corrupt_fraction)
    if heldout_clips < 0:
        raise ConfigError(f"heldout_clips must be >= 0, got {heldout_clips}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    num = int(round(seconds * fps))
    names = [identity_name(k) for k in range(identities)]
    n_pub = int(math.floor(identities * public_fraction + 0.5))
    if identities >= 2:
        n_pub = min(max(n_pub, 1), identities - 1)
    start = n_pub if private_start is None else int(private_start)
    if not 0 <= start <= n_pub:
        raise ConfigError(
            f"private_start must be in [0, {n_pub}] (the {identities - n_pub} private identities must fit "
            f"among the {identities}), got {private_start}"
        )
    private = names[start : start + identities - n_pub]
    public = [name for name in names if name not in private]
    corrupted = _choose_corrupted(seed, private, kinds, float(corrupt_fraction))
    corrupted_clips: dict[str, list[str]] = {ident: [] for ident in corrupted}
    manifest_clips: dict[str, list[str]] = {}
    for k, ident in enumerate(names):
        face = _make_face(seed, k, size)
        (root / ident).mkdir(exist_ok=True)
        manifest_clips[ident] = []
        is_private = ident in private
        n_clips = private_clips if is_private and private_clips is not None else clips
        for c in range(n_clips):
            trained = len(split_heldout(range(n_clips), heldout_clips)[0])
            kind = corrupted.get(ident) if c < trained else None
            lag = private_mouth_lag if is_private else 0
            frames, audio, truth = _synth_clip(face, seed, k, c, num, fps, size, lag, kind, identities)
            stem = root / ident / clip_name(c)
            write_video(stem.with_suffix(".mp4"), frames, fps, audio, SAMPLE_RATE)
            truth.update(identity=ident, clip=clip_name(c))
            if kind is not None:
                corrupted_clips[ident].append(clip_name(c))
            stem.with_suffix(".json").write_text(json.dumps(truth, sort_keys=True) + "\n")
            manifest_clips[ident].append(f"{ident}/{clip_name(c)}.mp4")
    split = {"public": public, "private": private}
    scenario = _scenario(kinds, corrupt_fraction, heldout_clips, corrupted, corrupted_clips)
    written = split if scenario is None else {**split, "corruption": scenario}
    (root / "split.json").write_text(json.dumps(written, indent=1, sort_keys=True) + "\n")
    return {
        "root": str(root),
        "identities": names,
        "split": split,
        "corruption": scenario,
        "clips": manifest_clips,
        "fps": float(fps),
        "size": int(size),
        "seconds": float(seconds),
        "num_frames": num,
        "sample_rate": SAMPLE_RATE,
        "seed": int(seed),
    }


def _synth_clip(
    face, seed: int, k: int, c: int, num: int, fps: float, size: int, lag: int, kind, identities: int
):
    """Clip c of identity k: (frames, audio, ground-truth sidecar without identity/clip names).

    `lag` > 0: frame t shows the mouth of audio frame t - lag. `kind`: the corruption of a training clip
    (None: clean); its draws come from a stream of their own, so the clean draws are the same either way.
    """
    n_audio = int(round(num / fps * SAMPLE_RATE))
    rng = np.random.default_rng([seed, k, 1000 + c])
    audio, env = synth_speech(rng, n_audio / SAMPLE_RATE, face.f0, face.formant_scale, face.breath)
    centres = np.rint((np.arange(num) + 0.5) / fps * SAMPLE_RATE).astype(int)
    if lag:
        centres = centres[np.maximum(np.arange(num) - lag, 0)]
    mouth = np.round(env[np.minimum(centres, n_audio - 1)].astype(np.float64), 4)
    offsets = _head_motion(rng, num, size, fps)
    blink = np.round(_blinks(rng, num, fps), 4)
    damage = np.random.default_rng([seed, k, 2000 + c])
    record = None
    if kind is Corruption.TEMPORAL:
        jitter, gain = _temporal_noise(damage, num, size)
        offsets = offsets + jitter
        record = {"head_jitter": jitter.tolist(), "brightness_gain": gain.tolist()}
    frames = render_clip(face, mouth, offsets, blink)
    if kind is Corruption.TEMPORAL:
        frames = np.clip(np.rint(frames * gain[:, None, None, None]), 0, 255).astype(np.uint8)
    elif kind is Corruption.AUDIO_SHIFT:
        audio, record = _shift_audio(damage, audio, fps)
    elif kind is Corruption.IDENTITY:
        record = _contaminate_identity(damage, frames, seed, k, identities, size, mouth, offsets, blink)
    elif kind is Corruption.OCCLUSION:
        record = _occlude(damage, frames, face, offsets)
    truth = {
        "fps": float(fps),
        "size": int(size),
        "sample_rate": SAMPLE_RATE,
        "num_frames": num,
        "seed": int(seed),
        "mouth_open": mouth.tolist(),
        "mouth_box": _mouth_box(face, offsets),
        "head_offset": offsets.tolist(),
        "blink": blink.tolist(),
    }
    if kind is not None:
        truth["corruption"] = {"kind": kind.value, **record}
    return frames, audio, truth


def _scenario(kinds, corrupt_fraction: float, heldout_clips: int, corrupted: dict, corrupted_clips: dict):
    """split.json's "corruption" record (None for a clean corpus)."""
    if not kinds:
        return None
    return {
        "kinds": [kind.value for kind in kinds],
        "fraction": float(corrupt_fraction),
        "heldout_clips": int(heldout_clips),
        "parameters": {kind.value: CORRUPTION_PARAMETERS[kind] for kind in dict.fromkeys(kinds)},
        "identities": {
            ident: {"kind": kind.value, "clips": corrupted_clips[ident]} for ident, kind in corrupted.items()
        },
    }
