"""`ggn visualize`: PNG panels of chosen images, to see the pseudo-GT and the detectors at a glance.

Two kinds of figure, one image each:
- `mined-{i}.png`, a training image the pseudo-GT was mined from: the image, its ground truth (seen objects
  blue, unseen orange, from the full annotations), the PA network's potential (min over affinity channels),
  its top candidates with rank, score and gt_iou, and the kept pseudo-GT; a second row does the same for the
  no-learning control (image-gradient potential) when given;
- `eval-{i}.png`, an evaluation image: the image, its ground truth (seen/unseen), the PA potential, and each
  detector's top detections, green where one matches an unseen object at mask IoU 0.5, blue on a seen object,
  red elsewhere, with how many unseen objects each finds.
Images are those with the most unseen objects (ties: lower id), so the figures show what the method is for.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from ggn.io import InputError, atomic_open, read_json
from ggn.masks import ann_to_rle

log = logging.getLogger(__name__)

SEEN_COLOUR = (0.15, 0.45, 1.0)
UNSEEN_COLOUR = (1.0, 0.55, 0.0)
HIT_COLOUR = (0.1, 0.8, 0.2)
MISS_COLOUR = (0.9, 0.1, 0.1)
CANDIDATE_COLOURS = [(0.9, 0.1, 0.1), (1.0, 0.8, 0.0), (0.1, 0.8, 0.9), (0.8, 0.2, 0.9), (0.2, 0.9, 0.3),
                     (1.0, 0.5, 0.7), (0.6, 0.4, 0.2), (0.5, 0.5, 1.0)]
PANEL_INCHES = 2.8
DPI = 100
IOU = 0.5


def _decode(rle: dict) -> np.ndarray:
    counts = rle["counts"]
    return mask_utils.decode({"size": list(rle["size"]),
                              "counts": counts.encode("ascii") if isinstance(counts, str) else counts}).astype(bool)


def _iou(a: dict, b: list[dict]) -> np.ndarray:
    if not b:
        return np.zeros(0)
    fix = lambda r: {"size": list(r["size"]), "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str)  # noqa: E731
                     else r["counts"]}
    return np.asarray(mask_utils.iou([fix(a)], [fix(x) for x in b], [0] * len(b))).reshape(-1)


def _overlay(ax, masks: list[np.ndarray], colours, alpha: float = 0.45) -> None:
    """Filled masks with their outlines on the current image."""
    if not masks:
        return
    h, w = masks[0].shape
    layer = np.zeros((h, w, 4), np.float32)
    for m, c in zip(masks, colours):
        layer[m] = (*c, alpha)
    ax.imshow(layer, interpolation="nearest")
    for m, c in zip(masks, colours):
        if m.any():
            ax.contour(m.astype(np.float32), levels=[0.5], colors=[c], linewidths=1.2)


def _label(ax, mask: np.ndarray, text: str, colour) -> None:
    ys, xs = np.nonzero(mask)
    if len(xs):
        ax.text(xs.min(), ys.min(), text, fontsize=6.5, color="white", va="bottom", ha="left",
                bbox={"facecolor": colour, "alpha": 0.85, "pad": 1, "linewidth": 0})


def _panel(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _ground_truth(ax, image, seen: list[dict], unseen: list[dict]) -> None:
    _panel(ax, image, f"ground truth: {len(seen)} seen (blue), {len(unseen)} unseen (orange)")
    _overlay(ax, [_decode(r) for r in seen] + [_decode(r) for r in unseen],
             [SEEN_COLOUR] * len(seen) + [UNSEEN_COLOUR] * len(unseen))


def _potential(ax, potential: np.ndarray | None, title: str, shape) -> None:
    import matplotlib.pyplot as plt

    if potential is None:
        ax.axis("off")
        return
    from PIL import Image

    full = np.asarray(Image.fromarray(potential.astype(np.float32), mode="F").resize((shape[1], shape[0]),
                                                                                      Image.BILINEAR))
    ax.imshow(full, cmap=plt.get_cmap("viridis"), vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _candidates(ax, image, rows: list[dict], unseen: list[dict], title: str, top: int) -> None:
    rows = rows[:top]
    masks = [_decode(r["rle"]) for r in rows]
    found = sum(bool((_iou(r["rle"], unseen) >= IOU).any()) for r in rows)
    _panel(ax, image, f"{title}: top {len(rows)} ({found} on unseen)")
    colours = [CANDIDATE_COLOURS[i % len(CANDIDATE_COLOURS)] for i in range(len(rows))]
    _overlay(ax, masks, colours, alpha=0.3)
    for r, m, c in zip(rows, masks, colours):
        gt = "–" if r["gt_iou"] is None else f"{r['gt_iou']:.2f}"
        _label(ax, m, f"#{r['rank'] + 1} s{r['score']:.2f} gt{gt}", c)


def _pseudo(ax, image, anns: list[dict], unseen: list[dict], title: str) -> None:
    hits = [bool((_iou(a["segmentation"], unseen) >= IOU).any()) for a in anns]
    _panel(ax, image, f"{title}: {len(anns)} kept, {sum(hits)} on unseen")
    _overlay(ax, [_decode(a["segmentation"]) for a in anns], [HIT_COLOUR if h else MISS_COLOUR for h in hits])


def _detections(ax, image, dets: list[dict], seen: list[dict], unseen: list[dict], title: str, top: int) -> None:
    dets = sorted(dets, key=lambda d: -d["score"])[:top]
    colours, found = [], np.zeros(len(unseen), bool)
    for d in dets:
        hit_unseen = _iou(d["segmentation"], unseen) >= IOU
        found |= hit_unseen
        colours.append(HIT_COLOUR if hit_unseen.any() else
                       SEEN_COLOUR if (_iou(d["segmentation"], seen) >= IOU).any() else MISS_COLOUR)
    _panel(ax, image, f"{title}: {int(found.sum())}/{len(unseen)} unseen in top {len(dets)}")
    _overlay(ax, [_decode(d["segmentation"]) for d in dets], colours, alpha=0.3)


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)


def _rank_images(objects: dict[int, list], ids, count: int) -> list[int]:
    return sorted(ids, key=lambda i: (-len(objects.get(i, ())), i))[:count]


def _shard_rows(shards: list[Path], image_ids: set[int]) -> dict[int, list[dict]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    rows: dict[int, list[dict]] = {i: [] for i in image_ids}
    for path in shards:
        if not Path(path).is_file():
            raise InputError(f"extraction shard {path} does not exist; run `ggn extract` first")
        table = pq.read_table(path, columns=["image_id", "rank", "score", "gt_iou", "height", "width", "rle"])
        table = table.filter(pc.is_in(table["image_id"], value_set=pa.array(sorted(image_ids), pa.int64())))
        for r in table.to_pylist():
            rows[int(r["image_id"])].append({"rank": r["rank"], "score": r["score"], "gt_iou": r["gt_iou"],
                                             "rle": {"size": [r["height"], r["width"]], "counts": r["rle"]}})
    for v in rows.values():
        v.sort(key=lambda r: r["rank"])
    return rows


def _pseudo_anns(path: Path | None, image_ids: set[int]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {i: [] for i in image_ids}
    if path is None:
        return out
    for a in read_json(path, "pseudo-GT")["annotations"]:
        if int(a["image_id"]) in out:
            out[int(a["image_id"])].append(a)
    return out


def _potentials(checkpoint: Path | None, images: list[np.ndarray], input_size: int | None) -> list:
    if checkpoint is None:
        return [None] * len(images)
    from ggn.io import pick_device
    from ggn.pa.model import load_pa_model, predict_affinity

    device = pick_device("auto")
    model, config = load_pa_model(checkpoint, device)
    return [a.min(axis=0) for a in predict_affinity(model, images, config, device, input_size=input_size)]


def visualize(out_dir: Path, images: Path, mined: Path, full: Path, seen: str, shards: list[Path],
              pseudo_gt: Path | None = None, checkpoint: Path | None = None, control_shards: list[Path] | None = None,
              control_pseudo_gt: Path | None = None, input_size: int | None = None, eval_json: Path | None = None,
              eval_images: Path | None = None, detections: dict[str, Path] | None = None, num_images: int = 3,
              top: int = 5, top_detections: int = 10) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    from ggn.control import gradient_affinity
    from ggn.eval_pseudo import MinedObjects

    objects = MinedObjects(read_json(full, "full annotations"), read_json(mined, "mined image list"), seen,
                           None, str(full), str(mined))
    chosen = _rank_images(objects.unseen, objects.images, num_images)
    written = []
    rows = _shard_rows(shards, set(chosen))
    control_rows = _shard_rows(control_shards, set(chosen)) if control_shards else None
    pseudo = _pseudo_anns(pseudo_gt, set(chosen))
    control_pseudo = _pseudo_anns(control_pseudo_gt, set(chosen)) if control_shards else None
    pictures = [_read(images, objects.images[i]) for i in chosen]
    potentials = _potentials(checkpoint, pictures, input_size)
    n_rows = 2 if control_rows is not None else 1
    for n, (iid, image, potential) in enumerate(tqdm(list(zip(chosen, pictures, potentials)), desc="visualize mined",
                                                     unit="img")):
        fig, axes = plt.subplots(n_rows, 5, figsize=(5 * PANEL_INCHES, n_rows * PANEL_INCHES), squeeze=False)
        unseen, seen_objs = objects.unseen.get(iid, []), objects.seen.get(iid, [])
        _panel(axes[0, 0], image, f"training image {iid}")
        _ground_truth(axes[0, 1], image, seen_objs, unseen)
        _potential(axes[0, 2], potential, "PA potential (high: same object)", image.shape)
        _candidates(axes[0, 3], image, rows[iid], unseen, "PA candidates", top)
        _pseudo(axes[0, 4], image, pseudo[iid], unseen, "PA pseudo-GT")
        if control_rows is not None:
            axes[1, 0].axis("off")
            axes[1, 1].axis("off")
            axes[1, 0].text(0.0, 0.5, "control: the same grouping on\nthe image gradient (no learning)",
                            fontsize=9, va="center")
            _potential(axes[1, 2], gradient_affinity(image, input_size)[0], "gradient potential (control)",
                       image.shape)
            _candidates(axes[1, 3], image, control_rows[iid], unseen, "control candidates", top)
            _pseudo(axes[1, 4], image, control_pseudo[iid], unseen, "control pseudo-GT")
        fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.01, wspace=0.04, hspace=0.12)
        path = Path(out_dir) / f"mined-{n}.png"
        _save(fig, path)
        plt.close(fig)
        written.append(path)

    if eval_json is not None and detections:
        written += _eval_figures(out_dir, eval_json, eval_images, detections, checkpoint, input_size, num_images,
                                 top_detections)
    log.info("wrote %d figures to %s", len(written), out_dir)
    return written


def _read(root: Path, info: dict) -> np.ndarray:
    from ggn.images import ImageError, load_image

    try:
        return np.array(load_image(root, info))
    except ImageError as e:
        raise InputError(f"{e}; check --images (or --eval-images)") from None


def _eval_figures(out_dir, eval_json, eval_images, detections, checkpoint, input_size, num_images, top) -> list[Path]:
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    data = read_json(eval_json, "evaluation annotations")
    infos = {int(img["id"]): img for img in data["images"]}
    seen: dict[int, list[dict]] = {}
    unseen: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        if a.get("iscrowd", 0) or not a.get("segmentation"):
            continue
        info = infos[int(a["image_id"])]
        rle = ann_to_rle(a["segmentation"], int(info["height"]), int(info["width"]))
        (seen if int(a.get("ignored_split", 0)) == 1 else unseen).setdefault(int(a["image_id"]), []).append(rle)
    chosen = _rank_images(unseen, infos, num_images)
    per_variant = {}
    for name, path in detections.items():
        dets: dict[int, list[dict]] = {i: [] for i in chosen}
        for d in read_json(path, f"{name} detections"):
            if int(d["image_id"]) in dets and "segmentation" in d:
                dets[int(d["image_id"])].append(d)
        per_variant[name] = dets
    pictures = [_read(eval_images, infos[i]) for i in chosen]
    potentials = _potentials(checkpoint, pictures, input_size)
    written = []
    cols = 3 + len(per_variant)
    for n, (iid, image, potential) in enumerate(tqdm(list(zip(chosen, pictures, potentials)), desc="visualize eval",
                                                     unit="img")):
        fig, axes = plt.subplots(1, cols, figsize=(cols * PANEL_INCHES, PANEL_INCHES), squeeze=False)
        _panel(axes[0, 0], image, f"evaluation image {iid}")
        _ground_truth(axes[0, 1], image, seen.get(iid, []), unseen.get(iid, []))
        _potential(axes[0, 2], potential, "PA potential", image.shape)
        for k, (name, dets) in enumerate(per_variant.items()):
            _detections(axes[0, 3 + k], image, dets[iid], seen.get(iid, []), unseen.get(iid, []), name, top)
        fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.01, wspace=0.04)
        path = Path(out_dir) / f"eval-{n}.png"
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def _named_paths(items: list[str] | None) -> dict[str, Path]:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--detections {item!r}: use NAME=PATH (e.g. baseline=results/x/seed0/detector/baseline/"
                             "detections.json)")
        out[name] = Path(path)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for mined-{i}.png and eval-{i}.png")
    parser.add_argument("--images", required=True, type=Path, help="folder of the mined (training) images")
    parser.add_argument("--mined", required=True, type=Path, help="COCO file the shards were extracted from")
    parser.add_argument("--full-annotations", required=True, type=Path,
                        help="the mined images with every class annotated (seen and unseen told apart)")
    parser.add_argument("--seen", required=True, help="seen classes, as `ggn split --seen`")
    parser.add_argument("--shards", nargs="+", required=True, type=Path, help="the PA network's extraction shards")
    parser.add_argument("--pseudo-gt", type=Path, help="pseudo_gt.json merged from them")
    parser.add_argument("--checkpoint", type=Path, help="PA checkpoint, for the potential maps")
    parser.add_argument("--input-size", type=int, default=None, help="PA input long side (default: checkpoint's)")
    parser.add_argument("--control-shards", nargs="+", type=Path, help="the control's shards (image gradient)")
    parser.add_argument("--control-pseudo-gt", type=Path, help="the control's pseudo_gt.json")
    parser.add_argument("--eval", dest="eval_json", type=Path, help="eval.json (seen objects: ignored_split 1)")
    parser.add_argument("--eval-images", type=Path, help="folder of the evaluation images")
    parser.add_argument("--detections", nargs="+", metavar="NAME=PATH",
                        help="detections per detector, e.g. baseline=.../detections.json ggn=...")
    parser.add_argument("--num-images", type=int, default=3, help="figures of each kind")
    parser.add_argument("--top", type=int, default=5, help="candidates drawn per image")
    parser.add_argument("--top-detections", type=int, default=10, help="detections drawn per detector and image")


def run(args: argparse.Namespace) -> int:
    if args.num_images < 1 or args.top < 1 or args.top_detections < 1:
        raise InputError("--num-images, --top and --top-detections must be >= 1")
    detections = _named_paths(args.detections)
    if detections and (args.eval_json is None or args.eval_images is None):
        raise InputError("--detections needs --eval (eval.json) and --eval-images")
    written = visualize(args.out_dir, args.images, args.mined, args.full_annotations, args.seen, args.shards,
                        args.pseudo_gt, args.checkpoint, args.control_shards, args.control_pseudo_gt, args.input_size,
                        args.eval_json, args.eval_images, detections, args.num_images, args.top, args.top_detections)
    expected = args.num_images * (2 if detections else 1)
    if len(written) < expected:
        log.warning("only %d of %d figures: fewer images than --num-images", len(written), expected)
    return 0
