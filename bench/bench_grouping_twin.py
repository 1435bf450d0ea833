"""How close `grouping: paper` comes to the reference's grouping (bench/grouping_twin.py), and how much faster.

Run: .venv/bin/python bench/bench_grouping_twin.py [--checkpoint results/synthetic/seed0/pa/checkpoint.pt]
     [--cache /tmp/twin_cache] [--maps 12]

Map sets (every map is the potential both groupings receive):
- noisy: pa_lib.synthetic label maps at 500x375 (5/10/15/20 objects) with blur, noise and pixel grain, as
  bench/bench_propose.py's noisy case; recall against the label map;
- demo: images of ggn.synth at the demo's settings (config/config.yaml: 256 px, clutter 2, texture period
  10-24, strong texture, touching 0.15; val split, seed 0) through the demo's PA network (`--checkpoint`,
  e.g. results/synthetic/seed0/pa/checkpoint.pt after `make demo`) at its input size; recall against the
  rendered objects (seen and unseen) at that size;
- photos: the two photographs matplotlib ships (grace_hopper.jpg, Minduka_Present_Blue_Pack.png), whole and
  in four overlapping crops each, long side 320, through the same PA network (photos-pa) and through the
  image-gradient affinity of ggn.control (photos-gradient); no ground truth, so agreement and speed only.

Per set: agreement = the fraction of the twin's top-k masks (k = 3, 20) that one of ours of the same k matches
at IoU >= 0.8, the reverse fraction (ours found in the twin's), recall@0.5 of each top 20, and seconds per map
of each on one core (BLAS threads forced to 1; ours best of 2 runs, the twin one run). The twin's masks are
cached per map in `--cache` (they do not depend on this project's code), so the same maps can be re-measured
against another checkout of pa_lib (PYTHONPATH) without re-running it.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grouping_twin  # noqa: E402

import pa_lib  # noqa: E402
from pa_lib.synthetic import best_ious, potential_from_labels, random_label_map  # noqa: E402

MATCH_IOU = 0.8


def noisy_maps(count: int):
    from scipy import ndimage as ndi

    maps = []
    for k in range(count):
        n, seed = (5, 10, 15, 20)[k % 4], k // 4
        labels = random_label_map(375, 500, n, seed=seed)
        potential = potential_from_labels(labels, blur=1.0, noise=0.1, seed=seed)
        rng = np.random.default_rng(1000 + seed)
        grain = ndi.gaussian_filter(rng.standard_normal(potential.shape).astype(np.float32), 1.0)
        potential = np.clip(0.8 * potential + 0.1 + 0.15 * grain, 0.0, 1.0).astype(np.float32)
        gt = np.stack([labels == i for i in np.unique(labels) if i > 0])
        maps.append((f"noisy/{n}obj/seed{seed}", potential, gt))
    return maps


def demo_images(count: int):
    import yaml

    from ggn.synth import SceneOptions, render_image

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    synth = cfg["experiments"]["synthetic"]["synthetic"]
    options = SceneOptions(clutter=synth["clutter"], texture_period=tuple(synth["texture_period"]),
                           strong_texture=synth["strong_texture"], touching=synth["touching"])
    out = []
    for i in range(count):
        image, objects = render_image(synth["seed"], "val", i, synth["image_size"], options)
        out.append((f"demo/val{i}", image, [o["mask"] for o in objects]))
    return out


def photo_images(long_side: int = 320):
    import matplotlib
    from PIL import Image

    root = Path(matplotlib.get_data_path()) / "sample_data"
    out = []
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        image = np.asarray(Image.open(root / name).convert("RGB"))
        h, w = image.shape[:2]
        crops = [("whole", image)] + [
            (f"crop{k}", image[y:y + 2 * h // 3, x:x + 2 * w // 3])
            for k, (y, x) in enumerate([(0, 0), (0, w // 3), (h // 3, 0), (h // 3, w // 3)])
        ]
        for tag, crop in crops:
            scale = long_side / max(crop.shape[:2])
            size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
            resized = np.asarray(Image.fromarray(crop).resize(size, Image.BILINEAR))
            out.append((f"photo/{Path(name).stem}/{tag}", resized))
    return out


def pa_potentials(checkpoint: Path, images: list[np.ndarray], input_size: int | None):
    from ggn.pa.model import load_pa_model, predict_affinity

    model, config = load_pa_model(checkpoint, "cpu")
    affinities = predict_affinity(model, images, config, "cpu", input_size=input_size, batch_size=1)
    return [pa_lib.potential_from_affinity(a) for a in affinities]


def twin_masks(potential: np.ndarray, cache: Path | None, retime: bool = False):
    key = hashlib.sha1(potential.astype(np.float32).tobytes() + str(potential.shape).encode()).hexdigest()[:16]
    path = cache / f"{key}.npz" if cache else None
    if path and path.is_file() and not retime:
        with np.load(path) as z:
            return z["masks"], float(z["seconds"])
    t = time.perf_counter()
    masks, _ = grouping_twin.propose(potential)
    seconds = time.perf_counter() - t
    if path:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, masks=np.packbits(masks, axis=-1), shape=np.array(masks.shape), seconds=seconds)
        tmp.replace(path)
        return masks, seconds
    return masks, seconds


def _unpack(masks, shape):
    return masks if masks.dtype == bool else np.unpackbits(masks, axis=-1, count=shape[-1]).astype(bool)


def matched_fraction(reference: np.ndarray, ours: np.ndarray) -> tuple[int, int]:
    """(how many of ``reference`` one of ``ours`` matches at IoU >= 0.8, len(reference))."""
    if len(reference) == 0:
        return 0, 0
    return int((best_ious(ours, reference) >= MATCH_IOU).sum()), len(reference)


def measure(name: str, maps, cache: Path | None, retime: bool = False):
    rows = {k: [0, 0] for k in ("twin3", "twin20", "ours3", "ours20", "rec_twin", "rec_ours")}
    t_twin, t_ours = [], []
    for tag, potential, gt in maps:
        masks_t, sec_t = twin_masks(potential, cache, retime)
        masks_t = _unpack(masks_t, potential.shape)
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            masks_o, _ = pa_lib.propose(potential, top_k=20)
            runs.append(time.perf_counter() - t)
        t_twin.append(sec_t)
        t_ours.append(min(runs))
        for k in (3, 20):
            for key, (a, b) in ((f"twin{k}", matched_fraction(masks_t[:k], masks_o[:k])),
                                (f"ours{k}", matched_fraction(masks_o[:k], masks_t[:k]))):
                rows[key][0] += a
                rows[key][1] += b
        if gt is not None and len(gt):
            for key, masks in (("rec_twin", masks_t), ("rec_ours", masks_o)):
                rows[key][0] += int((best_ious(masks, gt) >= 0.5).sum())
                rows[key][1] += len(gt)
        print(f"  {tag:40s} twin {sec_t:6.2f} s, ours {min(runs) * 1e3:6.1f} ms, "
              f"{len(masks_t)}/{len(masks_o)} candidates", flush=True)

    def frac(key):
        a, b = rows[key]
        return f"{a}/{b}={a / b:.2f}" if b else "n/a"

    speed = np.mean(t_twin) / np.mean(t_ours)
    return (f"{name:16s} {len(maps):4d} {frac('twin3'):>13s} {frac('twin20'):>15s} {frac('ours3'):>13s} "
            f"{frac('ours20'):>15s} {frac('rec_twin'):>14s} {frac('rec_ours'):>14s} {np.mean(t_twin):8.2f} "
            f"{np.mean(t_ours) * 1e3:8.1f} {speed:7.0f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("results/synthetic/seed0/pa/checkpoint.pt"),
                        help="the demo's PA checkpoint (make demo); the PA sets are skipped without it")
    parser.add_argument("--maps", type=int, default=12, help="maps per synthetic set (noisy, demo)")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the twin's masks (re-used when present)")
    parser.add_argument("--sets", nargs="+", default=["noisy", "demo", "photos-pa", "photos-gradient"])
    parser.add_argument("--retime", action="store_true",
                        help="run the twin again even when cached, so both are timed under the same machine load")
    args = parser.parse_args()
    summary = []
    if "noisy" in args.sets:
        print("noisy: pa_lib.synthetic, 500x375, pixel grain 0.15", flush=True)
        summary.append(measure("noisy", noisy_maps(args.maps), args.cache, args.retime))
    have_pa = args.checkpoint.is_file()
    if not have_pa:
        print(f"no PA checkpoint at {args.checkpoint}: demo and photos-pa skipped "
              "(run `make demo` or pass --checkpoint)")
    if "demo" in args.sets and have_pa:
        print(f"demo: ggn.synth val images at the demo's settings, PA {args.checkpoint}", flush=True)
        demo = demo_images(args.maps)
        potentials = pa_potentials(args.checkpoint, [img for _, img, _ in demo], None)
        maps = []
        for (tag, _, objects), pot in zip(demo, potentials):
            step = objects[0].shape[0] / pot.shape[0] if objects else 1
            gt = np.stack([o[:: round(step), :: round(step)][: pot.shape[0], : pot.shape[1]] for o in objects]) \
                if objects else None
            maps.append((tag, pot, gt))
        summary.append(measure("demo", maps, args.cache, args.retime))
    photos = photo_images() if {"photos-pa", "photos-gradient"} & set(args.sets) else []
    if "photos-pa" in args.sets and have_pa:
        print("photos-pa: matplotlib's sample photographs, long side 320, through the demo PA network", flush=True)
        pots = pa_potentials(args.checkpoint, [img for _, img in photos], 0)
        summary.append(measure("photos-pa", [(t, p, None) for (t, _), p in zip(photos, pots)], args.cache, args.retime))
    if "photos-gradient" in args.sets:
        from ggn.control import gradient_affinity

        print("photos-gradient: the same photographs, image-gradient affinity (ggn.control)", flush=True)
        maps = [(t, pa_lib.potential_from_affinity(gradient_affinity(img, 0)), None) for t, img in photos]
        summary.append(measure("photos-gradient", maps, args.cache, args.retime))
    print(f"\nagreement at IoU >= {MATCH_IOU}: twin-k = share of the twin's top k that ours (top k) matches; "
          "ours-k = share of ours that the twin's matches. recall@0.5 of the top 20. seconds per map, one core.")
    print(f"{'set':16s} {'maps':>4s} {'twin-3':>13s} {'twin-20':>15s} {'ours-3':>13s} {'ours-20':>15s} "
          f"{'recall twin':>14s} {'recall ours':>14s} {'twin s':>8s} {'ours ms':>8s} {'speed':>8s}")
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
