"""Deterministic synthetic open-world dataset (COCO format): textured shapes on cluttered backgrounds."""
from __future__ import annotations

import argparse
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ggn.classes import SYNTHETIC_SEEN, SYNTHETIC_UNSEEN
from ggn.io import InputError, atomic_open, atomic_write_json

log = logging.getLogger("ggn.synth")

__all__ = ["CATEGORIES", "SYNTHETIC_SEEN", "SYNTHETIC_UNSEEN", "SceneOptions", "generate_dataset", "render_image"]


@dataclass(frozen=True)
class Category:
    name: str
    colour: tuple[int, int, int]  # typical RGB, jittered per object
    texture: str  # typical texture: solid, stripes, checker, dots


# Seen and unseen halves (ggn.classes) each hold every texture and both straight and curved outlines,
# so an unseen class is new in shape and colour but not in kind.
CATEGORIES = (
    Category("disc", (210, 50, 45), "solid"),
    Category("square", (40, 90, 210), "stripes"),
    Category("triangle", (225, 200, 40), "checker"),
    Category("cross", (40, 170, 70), "dots"),
    Category("star", (240, 130, 30), "solid"),
    Category("ring", (200, 50, 200), "stripes"),
    Category("hexagon", (40, 200, 210), "checker"),
    Category("ellipse", (120, 60, 170), "dots"),
)
assert {c.name for c in CATEGORIES} == set(SYNTHETIC_SEEN) | set(SYNTHETIC_UNSEEN)
TEXTURES = ("solid", "stripes", "checker", "dots")

# Object area (pixels at 256x256, scaled with the image area) is log-uniform over this range, so
# COCO small (< 32^2), medium and large (> 96^2) objects all occur.
AREA_RANGE = (70.0, 22000.0)
MIN_OBJECTS, MAX_OBJECTS = 2, 8
NO_SEEN_FRACTION = 0.1  # images drawn from unseen classes only
TYPICAL_TEXTURE_P = 0.8
MIN_VISIBLE = 0.5  # an occluded object keeps at least this fraction of its pixels
PLACEMENT_TRIES = 12
SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SceneOptions:
    """How hard the scenes are for low-level edges. The defaults draw the original scenes (same bytes); the
    others add what misleads an image-gradient grouping but not a learned affinity, each drawn from its own
    random stream so that the objects of an image stay where the defaults put them:
    - clutter: up to this many sharp-edged, low-saturation distractor pieces (polygons, bands, some with
      stripes or checks) and hard lines painted on the background, which is then no longer smooth;
    - texture_period: range of object texture periods (pixels at 256x256); periods of 10 px and more survive
      the PA's downscaling, so stripes and checks give strong edges inside objects;
    - strong_texture: probability that a textured object's second colour is the complement of its first,
      so its internal edges are stronger than its outline;
    - touching: probability that an object is placed against an earlier one, in nearly its colour;
    - object_area: range of object areas (pixels at 256x256, log-uniform); a larger low end leaves out the
      smallest objects, which a network that sees the scene at half its size cannot outline."""

    clutter: int = 0
    texture_period: tuple[float, float] = (4.0, 10.0)
    strong_texture: float = 0.0
    touching: float = 0.0
    object_area: tuple[float, float] = AREA_RANGE

    def __post_init__(self):
        lo, hi = self.texture_period
        a_lo, a_hi = self.object_area
        if (self.clutter < 0 or not 0 < lo <= hi or not (0 <= self.strong_texture <= 1 and 0 <= self.touching <= 1)
                or not 0 < a_lo <= a_hi):
            raise InputError(f"scene options out of range: {self} (clutter >= 0, 0 < period low <= high, "
                             "strong_texture and touching in [0, 1], 0 < object area low <= high)")


# Clutter pieces: area range like the objects', grey levels and their texture contrast.
CLUTTER_AREA = (150.0, 12000.0)
CLUTTER_TINT = 10.0  # per-channel spread around a grey level: far less saturated than any object


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray, s: float, aspect: float) -> np.ndarray:
    """Inside test in object coordinates (u, v) for a shape of scale s."""
    if name == "disc":
        return u * u + v * v <= s * s
    if name == "ellipse":
        return (u / s) ** 2 + (v / (s * aspect)) ** 2 <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= s
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= s * s) & (r2 >= (s * aspect) ** 2)
    if name == "cross":
        w = 0.3 * s
        au, av = np.abs(u), np.abs(v)
        return ((au <= s) & (av <= w)) | ((av <= s) & (au <= w))
    if name in ("triangle", "hexagon"):
        n = 3 if name == "triangle" else 6
        apothem = s * math.cos(math.pi / n)
        inside = np.ones(u.shape, bool)
        for k in range(n):
            a = 2 * math.pi * k / n
            inside &= u * math.cos(a) + v * math.sin(a) <= apothem
        return inside
    if name == "star":
        r = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u)
        return r <= s * (0.55 + 0.45 * np.cos(5 * theta))
    raise ValueError(name)


def _unit_area(name: str, aspect: float) -> float:
    """Area of the shape at scale 1 (to turn a target area into a scale)."""
    return {
        "disc": math.pi,
        "ellipse": math.pi * aspect,
        "square": 4.0,
        "ring": math.pi * (1 - aspect * aspect),
        "cross": 8 * 0.3 - 4 * 0.09,
        "triangle": 3 * math.sqrt(3) / 4,
        "hexagon": 3 * math.sqrt(3) / 2,
        "star": math.pi * (0.55**2 + 0.45**2 / 2),
    }[name]


def _extent(name: str) -> float:
    return math.sqrt(2.0) if name in ("square", "cross") else 1.0


def _upsample(coarse: np.ndarray, h: int, w: int) -> np.ndarray:
    """Separable linear upsampling of [g, g, C] to [h, w, C] (plain indexing: no BLAS threads)."""
    def axis(n_out: int, n_in: int):
        pos = np.linspace(0, n_in - 1, n_out, dtype=np.float32)
        lo = np.floor(pos).astype(np.intp).clip(0, n_in - 2)
        return lo, (pos - lo)[:, None, None]

    lo, f = axis(h, coarse.shape[0])
    rows = coarse[lo] * (1 - f) + coarse[lo + 1] * f
    lo, f = axis(w, coarse.shape[1])
    rows = rows.transpose(1, 0, 2)
    return (rows[lo] * (1 - f) + rows[lo + 1] * f).transpose(1, 0, 2)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradient + smooth noise + soft low-contrast blobs + faint lines + pixel noise (float RGB)."""
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    base = rng.uniform(70, 180, 3)
    other = np.clip(base + rng.normal(0, 35, 3), 30, 220)
    # Desaturate towards grey so that the saturated objects stand out without being trivial.
    base = base.mean() + 0.5 * (base - base.mean())
    other = other.mean() + 0.5 * (other - other.mean())
    angle = rng.uniform(0, 2 * math.pi)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = base.astype(np.float32) + t[..., None] * (other - base).astype(np.float32)
    # Smooth clutter: low-resolution noise upsampled linearly.
    g = max(3, h // 24)
    img += _upsample(rng.normal(0, 14, (g, g, 3)).astype(np.float32), h, w)
    # Soft-edged blobs: low contrast and blurry borders, unlike the sharp-edged objects.
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sy, sx = rng.uniform(0.04, 0.2) * h, rng.uniform(0.04, 0.2) * w
        amp = rng.normal(0, 18, 3).astype(np.float32)
        y0, y1 = int(max(0, cy - 3 * sy)), int(min(h, cy + 3 * sy + 1))
        x0, x1 = int(max(0, cx - 3 * sx)), int(min(w, cx + 3 * sx + 1))
        if y1 <= y0 or x1 <= x0:
            continue
        blob = np.exp(-(((ys[y0:y1] - cy) / sy) ** 2) - ((xs[:, x0:x1] - cx) / sx) ** 2)
        img[y0:y1, x0:x1] += blob[..., None] * amp
    # Faint thin lines.
    for _ in range(int(rng.integers(1, 6))):
        a = rng.uniform(0, math.pi)
        off = rng.uniform(-0.5, 0.5) * (h + w) / 2
        dist = np.abs((xs - w / 2) * math.sin(a) - (ys - h / 2) * math.cos(a) - off)
        width = rng.uniform(0.5, 1.5)
        near = dist < width
        img[near] += (width - dist[near])[:, None] * rng.normal(0, 20, 3).astype(np.float32)
    return img


def _texture(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator, scale: float,
             period_range: tuple[float, float] = (4.0, 10.0)) -> np.ndarray:
    """Texture pattern in [0, 1] (0 = base colour, 1 = second colour) in object coordinates."""
    if kind == "solid":
        return np.zeros(u.shape, np.float32)
    period = rng.uniform(*period_range) * scale
    if kind == "stripes":
        a = rng.uniform(0, math.pi)
        return (((u * math.cos(a) + v * math.sin(a)) / period) % 1.0 < 0.5).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        r = period * rng.uniform(0.2, 0.32)
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        return (du * du + dv * dv <= r * r).astype(np.float32)
    raise ValueError(kind)


def _clutter(aux: np.random.Generator, img: np.ndarray, count: int, area_scale: float) -> None:
    """Paint 0..count sharp-edged, nearly grey distractor pieces and a few hard lines onto img (in place).

    They are background, not objects: low saturation (CLUTTER_TINT) is what tells them apart, never a soft
    edge, so the image gradient cannot."""
    h, w = img.shape[:2]
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    lo, hi = CLUTTER_AREA
    for _ in range(int(aux.integers(count // 2, count + 1))):
        area = math.exp(aux.uniform(math.log(lo), math.log(hi))) * area_scale
        cy, cx = aux.uniform(0, h), aux.uniform(0, w)
        kind = int(aux.integers(3))
        angle = aux.uniform(0, 2 * math.pi)
        if kind == 0:  # irregular polygon
            n = int(aux.integers(3, 8))
            angles = np.sort(aux.uniform(0, 2 * math.pi, n))
            radii = aux.uniform(0.6, 1.0, n)
            r = math.sqrt(area / (0.5 * n * math.sin(2 * math.pi / n) * float(np.mean(radii ** 2))))
            points = [(cx + r * q * math.cos(a), cy + r * q * math.sin(a)) for a, q in zip(angles, radii)]
        else:  # rectangle (kind 1) or long band (kind 2)
            ratio = aux.uniform(1, 2.5) if kind == 1 else aux.uniform(5, 12)
            half_w, half_h = math.sqrt(area * ratio) / 2, math.sqrt(area / ratio) / 2
            c, s = math.cos(angle), math.sin(angle)
            points = [(cx + du * c - dv * s, cy + du * s + dv * c)
                      for du, dv in ((-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h))]
        canvas = Image.new("L", (w, h), 0)
        ImageDraw.Draw(canvas).polygon(points, fill=1)
        inside = np.asarray(canvas, dtype=bool)
        if not inside.any():
            continue
        grey = aux.uniform(25, 230)
        first = grey + aux.normal(0, CLUTTER_TINT, 3)
        fill = np.broadcast_to(first.astype(np.float32), (h, w, 3))
        if aux.random() < 0.5:  # striped or checked, in two greys
            second = np.clip(grey + aux.choice([-1, 1]) * aux.uniform(50, 110), 10, 245) + aux.normal(0, CLUTTER_TINT, 3)
            period = aux.uniform(8, 20) * math.sqrt(area_scale)
            t = xs * math.cos(angle) + ys * math.sin(angle)
            if aux.random() < 0.5:
                pattern = (t / period) % 1.0 < 0.5
            else:
                t2 = -xs * math.sin(angle) + ys * math.cos(angle)
                pattern = (np.floor(t / period) + np.floor(t2 / period)) % 2 == 1
            fill = np.where(pattern[..., None], second.astype(np.float32), fill)
        img[inside] = fill[inside]
    for _ in range(int(aux.integers(0, count // 2 + 1))):  # hard lines across the scene
        canvas = Image.new("L", (w, h), 0)
        a, off = aux.uniform(0, math.pi), aux.uniform(-0.4, 0.4) * (h + w)
        c, s = math.cos(a), math.sin(a)
        x0, y0 = w / 2 + off * s - (h + w) * c, h / 2 - off * c - (h + w) * s
        x1, y1 = w / 2 + off * s + (h + w) * c, h / 2 - off * c + (h + w) * s
        ImageDraw.Draw(canvas).line([(x0, y0), (x1, y1)], fill=1, width=int(aux.integers(1, 4)))
        on = np.asarray(canvas, dtype=bool)
        img[on] = aux.uniform(15, 240) + aux.normal(0, CLUTTER_TINT, 3)


def _draw_object(rng: np.random.Generator, cat: Category, h: int, w: int, area_scale: float,
                 options: SceneOptions = SceneOptions(), aux: np.random.Generator | None = None,
                 against: dict | None = None):
    """One object: (mask bool [h,w] window-placed, window slices, pixel colours of the window, placement).

    `against` (an earlier object's placement): put this one against it, in nearly its colour (aux stream)."""
    aspect = rng.uniform(0.45, 0.7)  # ellipse axis ratio, ring hole ratio
    lo, hi = options.object_area
    area = math.exp(rng.uniform(math.log(lo), math.log(hi))) * area_scale
    s = math.sqrt(area / _unit_area(cat.name, aspect))
    reach = s * _extent(cat.name) + 1
    margin = 0.3 * s
    cy = rng.uniform(min(margin, h / 2), max(h - margin, h / 2))
    cx = rng.uniform(min(margin, w / 2), max(w - margin, w / 2))
    if against is not None:
        # Centres about one radius sum apart: the shapes touch or overlap a little, whatever their outlines.
        a = aux.uniform(0, 2 * math.pi)
        d = (against["radius"] + math.sqrt(area / math.pi)) * aux.uniform(0.75, 1.0)
        cy = float(np.clip(against["centre"][0] + d * math.sin(a), 0, h - 1))
        cx = float(np.clip(against["centre"][1] + d * math.cos(a), 0, w - 1))
    y0, y1 = max(0, int(cy - reach)), min(h, int(math.ceil(cy + reach)) + 1)
    x0, x1 = max(0, int(cx - reach)), min(w, int(math.ceil(cx + reach)) + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    phi = rng.uniform(0, 2 * math.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(phi) + dy * math.sin(phi)
    v = -dx * math.sin(phi) + dy * math.cos(phi)
    inside = _shape_mask(cat.name, u, v, s, aspect)
    if not inside.any():
        return None
    texture = cat.texture if rng.random() < TYPICAL_TEXTURE_P else TEXTURES[int(rng.integers(len(TEXTURES)))]
    colour = np.clip(np.array(cat.colour, float) + rng.normal(0, 18, 3), 0, 255)
    if against is not None:
        colour = np.clip(against["colour"] + aux.normal(0, 6, 3), 0, 255)
    # Second texture colour: a clearly darker or lighter shade of the same hue.
    second = np.clip(colour * rng.uniform(0.45, 0.65) if rng.random() < 0.6 else
                     colour + (255 - colour) * rng.uniform(0.35, 0.55), 0, 255)
    if options.strong_texture and aux.random() < options.strong_texture:
        second = 255 - colour  # the complement: internal edges stronger than the outline
    pattern = _texture(texture, u, v, rng, math.sqrt(area_scale), options.texture_period)
    pix = colour[None, None, :] * (1 - pattern[..., None]) + second[None, None, :] * pattern[..., None]
    # Gentle shading so that objects are not flat cut-outs.
    a = rng.uniform(0, 2 * math.pi)
    shade = 1 + 0.18 * (u * math.cos(a) + v * math.sin(a)) / max(s, 1.0)
    pix = pix * shade[..., None]
    placement = {"centre": (cy, cx), "radius": math.sqrt(area / math.pi), "colour": colour}
    return inside, (slice(y0, y1), slice(x0, x1)), pix, placement


def render_image(seed: int, split: str, index: int, size: int,
                 options: SceneOptions = SceneOptions()) -> tuple[np.ndarray, list[dict]]:
    """Image uint8 [S,S,3] and its objects [{category_id, mask}] (visible parts, draw order).

    Each image has its own random stream (seed, split, index), so images do not depend on how
    many others are generated or in which process. What `options` adds is drawn from a second stream.
    """
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    aux = np.random.default_rng([seed, SPLIT_CODES[split], index, 1])
    h = w = size
    area_scale = (size / 256.0) ** 2
    img = _background(rng, h, w)
    if options.clutter:
        _clutter(aux, img, options.clutter, area_scale)
    unseen_only = rng.random() < NO_SEEN_FRACTION
    pool = [i for i, c in enumerate(CATEGORIES) if not unseen_only or c.name in SYNTHETIC_UNSEEN]
    objects: list[dict] = []  # visible: bool [h,w]; full: pixel count when placed
    for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
        cat_index = pool[int(rng.integers(len(pool)))]
        against = None
        if options.touching and objects and aux.random() < options.touching:
            against = objects[int(aux.integers(len(objects)))]["placement"]
        for _try in range(PLACEMENT_TRIES):
            drawn = _draw_object(rng, CATEGORIES[cat_index], h, w, area_scale, options, aux, against)
            if drawn is None:
                continue
            inside, win, pix, placement = drawn
            # Later objects occlude earlier ones; refuse a placement that would hide most of one.
            if all((o["visible"][win] & ~inside).sum() + (o["visible"].sum() - o["visible"][win].sum())
                   >= MIN_VISIBLE * o["full"] for o in objects):
                break
        else:
            continue
        for o in objects:
            o["visible"][win] &= ~inside
        window = img[win]
        window[inside] = pix[inside]
        mask = np.zeros((h, w), bool)
        mask[win] = inside
        objects.append({"category_id": cat_index + 1, "visible": mask, "full": int(inside.sum()),
                        "placement": placement})
    img += rng.normal(0, 5, img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, [{"category_id": o["category_id"], "mask": o["visible"]} for o in objects if o["visible"].any()]


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write-then-rename (atomic) without fsync: images are cheap to regenerate, and the
    annotation JSON, written last and fsynced, is what marks a finished dataset."""
    with atomic_open(path, "wb", fsync=False) as f:
        f.write(_png_bytes(image))


def _render_one(job: tuple[Path, str, int, int, int, int, SceneOptions]) -> tuple[dict, list[dict]]:
    """Render, write and annotate one image (runs in a worker process)."""
    img_dir, split, index, image_id, size, seed, options = job
    image, objects = render_image(seed, split, index, size, options)
    name = f"{image_id:06d}.png"
    _write_png(img_dir / name, image)
    anns = []
    if objects:
        masks = np.stack([o["mask"] for o in objects], axis=2).astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(masks))
        for o, rle, area, box in zip(objects, rles, mask_utils.area(rles), mask_utils.toBbox(rles)):
            anns.append({
                "image_id": image_id,
                "category_id": o["category_id"],
                "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
                "area": float(area),
                "bbox": [float(x) for x in box],
                "iscrowd": 0,
            })
    return {"id": image_id, "file_name": name, "height": size, "width": size}, anns


def _render_split(out: Path, split: str, num: int, size: int, seed: int, workers: int,
                  options: SceneOptions) -> dict:
    img_dir = out / split
    img_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(img_dir, split, index, index + 1, size, seed, options) for index in range(num)]
    images, annotations = [], []
    progress = dict(total=num, desc=f"synth {split}", unit="img", mininterval=2.0)
    if workers > 1 and num > 1:
        # Every image has its own random stream, so results do not depend on the worker count;
        # imap keeps them in order.
        import multiprocessing

        with multiprocessing.get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            results = list(tqdm(pool.imap(_render_one, jobs, chunksize=8), **progress))
    else:
        results = [_render_one(job) for job in tqdm(jobs, **progress)]
    for image, anns in results:
        images.append(image)
        for a in anns:
            annotations.append({"id": len(annotations) + 1, **a})
    return {
        "info": {"description": f"GGN synthetic open-world shapes ({split})", "seed": seed, "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c.name, "supercategory": "shape"} for i, c in enumerate(CATEGORIES)],
    }


def generate_dataset(out: str | os.PathLike, num_train: int, num_val: int, image_size: int = 256,
                     seed: int = 0, workers: int = 1, options: SceneOptions = SceneOptions()) -> dict[str, Path]:
    """Write out/{train,val}/*.png and out/annotations/instances_{train,val}.json; returns their paths.

    Same arguments give byte-identical files.
    """
    if image_size < 32:
        raise InputError(f"image size {image_size} is too small for the shapes; use 32 or more")
    out = Path(out)
    paths = {}
    for split, num in (("train", num_train), ("val", num_val)):
        data = _render_split(out, split, num, image_size, seed, workers, options)
        path = out / "annotations" / f"instances_{split}.json"
        atomic_write_json(path, data)
        paths[split] = path
        log.info("%s: %d images, %d objects -> %s (images in %s)", split, len(data["images"]),
                 len(data["annotations"]), path, out / split)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (train/, val/, annotations/)")
    parser.add_argument("--num-train", type=int, default=400, help="training images")
    parser.add_argument("--num-val", type=int, default=100, help="validation images")
    parser.add_argument("--image-size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes (the output does not depend on this)")
    scene = parser.add_argument_group("scenes that mislead low-level edges (defaults: the original scenes)")
    scene.add_argument("--clutter", type=int, default=0,
                       help="up to this many sharp-edged, nearly grey distractor pieces (and hard lines) per image")
    scene.add_argument("--texture-period", type=float, nargs=2, default=[4.0, 10.0], metavar=("LOW", "HIGH"),
                       help="range of object texture periods in pixels at 256x256")
    scene.add_argument("--strong-texture", type=float, default=0.0,
                       help="probability that a textured object's second colour is its complement")
    scene.add_argument("--touching", type=float, default=0.0,
                       help="probability that an object is placed against an earlier one, in nearly its colour")
    scene.add_argument("--object-area", type=float, nargs=2, default=list(AREA_RANGE), metavar=("LOW", "HIGH"),
                       help="range of object areas in pixels at 256x256 (log-uniform; scaled with the image area)")


def run(args: argparse.Namespace) -> int:
    for name in ("num_train", "num_val"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0")
    options = SceneOptions(clutter=args.clutter, texture_period=tuple(args.texture_period),
                           strong_texture=args.strong_texture, touching=args.touching,
                           object_area=tuple(args.object_area))
    generate_dataset(args.out, args.num_train, args.num_val, args.image_size, args.seed, args.workers, options)
    return 0
