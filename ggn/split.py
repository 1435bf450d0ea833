"""Seen/unseen class split: seen-class training annotations and seen/unseen-marked evaluation annotations."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ggn.annotations import log_counts, validate_coco
from ggn.classes import class_names
from ggn.io import InputError, atomic_write_json, read_json

log = logging.getLogger("ggn.split")

OBJECT_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def count_unusable_ids(annotations: list[dict]) -> int:
    """Annotations whose id COCOeval cannot use as a match marker (0, missing, duplicated)."""
    seen, bad = set(), 0
    for a in annotations:
        i = a.get("id")
        if not isinstance(i, int) or isinstance(i, bool) or i <= 0 or i in seen:
            bad += 1
        else:
            seen.add(i)
    return bad


def renumber_ids(annotations: list[dict], what: str, quiet: bool = False) -> int:
    """Give every annotation a fresh id from 1 when any id is 0, missing or duplicated.

    COCOeval stores the matched annotation id as the match marker (0 = unmatched), so such ids
    silently corrupt recall. Returns how many ids were unusable.
    """
    bad = count_unusable_ids(annotations)
    if bad:
        for n, a in enumerate(annotations, start=1):
            a["id"] = n
    if bad and not quiet:
        log.warning("%s: %d annotation ids were 0, missing or duplicated; renumbered all %d from 1",
                    what, bad, len(annotations))
    return bad


def make_train(data: dict, seen_ids: set[int], keep_all_images: bool = False) -> tuple[dict, dict]:
    """Seen-class annotations only, as one class `object`; images without a seen object dropped (kept with
    `keep_all_images`: the images pseudo-GT is mined from when no detector is trained)."""
    objects_per_image: dict = {}
    for a in data["annotations"]:
        if a["category_id"] in seen_ids and not a.get("iscrowd", 0):
            objects_per_image[a["image_id"]] = objects_per_image.get(a["image_id"], 0) + 1
    if keep_all_images:
        objects_per_image.update({img["id"]: objects_per_image.get(img["id"], 0) for img in data["images"]})
    images = [img for img in data["images"] if img["id"] in objects_per_image]
    anns, crowd, unseen_dropped = [], 0, 0
    for a in data["annotations"]:
        if a["category_id"] not in seen_ids:
            unseen_dropped += 1
            continue
        if a["image_id"] not in objects_per_image:
            continue  # a seen crowd region alone does not keep an image
        # Seen crowd regions stay as ignore regions (iscrowd 1); unseen ones went with their class.
        crowd += int(bool(a.get("iscrowd", 0)))
        anns.append({**a, "category_id": 1})
    out = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    out.update(images=images, annotations=anns, categories=[dict(OBJECT_CATEGORY)])
    stats = {"images": len(images), "images_dropped": len(data["images"]) - len(images),
             "annotations": len(anns), "crowd": crowd, "other_class_dropped": unseen_dropped}
    return out, stats


def make_eval(data: dict, seen_ids: set[int], unseen_ids: set[int]) -> tuple[dict, dict]:
    """All images; seen and unseen annotations, marked `ignored_split` 1 (seen) or 0 (unseen)."""
    anns, seen, unseen, other = [], 0, 0, 0
    for a in data["annotations"]:
        if a["category_id"] in seen_ids:
            anns.append({**a, "ignored_split": 1})
            seen += 1
        elif a["category_id"] in unseen_ids:
            anns.append({**a, "ignored_split": 0})
            unseen += 1
        else:
            other += 1
    out = dict(data)
    out["annotations"] = anns
    stats = {"images": len(data["images"]), "seen": seen, "unseen": unseen, "other_class_dropped": other}
    return out, stats


def shared_image_ids(train_src: dict, eval_src: dict, train_root: str | os.PathLike,
                     eval_root: str | os.PathLike) -> set[int]:
    """Ids of the training images whose file is also an evaluation image (the same path once both folders are
    resolved): LVIS v1 val takes most of its 19,809 images from COCO train2017 (val2017 holds 5,000)."""
    from ggn.images import image_path

    def where(root, info) -> str:
        return os.path.normcase(os.path.realpath(image_path(root, info["file_name"])))

    evaluated = {where(eval_root, img) for img in eval_src["images"]}
    return {img["id"] for img in train_src["images"] if where(train_root, img) in evaluated}


def drop_images(data: dict, image_ids: set[int]) -> dict:
    """`data` without the images `image_ids` and their annotations."""
    out = dict(data)
    out["images"] = [img for img in data["images"] if img["id"] not in image_ids]
    out["annotations"] = [a for a in data.get("annotations", []) if a["image_id"] not in image_ids]
    return out


def split(train_src: dict, eval_src: dict | None, seen: str | list[str], unseen: str | list[str] | None = None,
          train_path: str = "train annotations", eval_path: str = "eval annotations",
          eval_seen: str | list[str] | None = None, eval_unseen: str | list[str] | None = None,
          allow_no_unseen: bool = False, keep_all_images: bool = False,
          exclude_eval_images: tuple[str | os.PathLike, str | os.PathLike] | None = None) -> tuple[dict, dict | None]:
    """(train.json, eval.json) contents for a class split; class specs as in ggn.classes.

    `seen` is resolved in the training file; the evaluation file uses `eval_seen` (default `seen`)
    and `eval_unseen` (default `unseen`, else every evaluation class not seen), by name, so the two
    files may number (or even name) their categories differently. Both files go through the annotation
    validator (ggn.annotations) first. An evaluation set without any unseen-class object is refused (every
    AR would be undefined) unless `allow_no_unseen`; `eval_src` None makes the training file only.
    `exclude_eval_images` (training image folder, evaluation image folder): training images that are also
    evaluation images are left out of train.json (the COCO -> LVIS protocol, docs/datasets.md).
    """
    train_src, counts = validate_coco(train_src, train_path, renumber=False)
    log_counts(train_path, counts)
    if eval_src is not None:  # validated once, before its images are compared with the training images
        eval_src, eval_counts = validate_coco(eval_src, eval_path, renumber=False)
    if exclude_eval_images is not None and eval_src is not None:
        shared = shared_image_ids(train_src, eval_src, *exclude_eval_images)
        (log.warning if shared else log.info)("train: %d of %d training images are also evaluation images (%s); "
                                              "left out of training", len(shared), len(train_src["images"]),
                                              eval_path)
        train_src = drop_images(train_src, shared)
    seen_names = set(class_names(seen, train_src["categories"]))
    seen_ids = {c["id"] for c in train_src["categories"] if c["name"] in seen_names}
    log.info("seen classes for training (%d): %s", len(seen_names), _short(seen_names))
    train, tstats = make_train(train_src, seen_ids, keep_all_images)
    renumber_ids(train["annotations"], train_path)
    log.info("train: %d images kept, %d without a seen object dropped; %d seen annotations (%d crowd); "
             "%d annotations of other classes dropped", tstats["images"], tstats["images_dropped"],
             tstats["annotations"], tstats["crowd"], tstats["other_class_dropped"])
    if not train["annotations"]:
        log.warning("train: no annotation of a seen class (%s) in %s: no PA network or detector can be trained "
                    "on it; check `seen`", _short(seen_names), train_path)
    if eval_src is None:
        return train, None

    log_counts(eval_path, eval_counts)
    eval_seen_names = set(class_names(seen if eval_seen is None else eval_seen, eval_src["categories"]))
    if eval_unseen is None:
        eval_unseen = unseen
    if eval_unseen is None:
        unseen_names = {c["name"] for c in eval_src["categories"]} - eval_seen_names
    else:
        unseen_names = set(class_names(eval_unseen, eval_src["categories"]))
        overlap = unseen_names & eval_seen_names
        if overlap:
            raise InputError(f"classes {', '.join(sorted(overlap))} are both seen and unseen in {eval_path}; "
                             "fix --seen/--unseen (or --eval-seen/--eval-unseen)")
    eval_seen_ids = {c["id"] for c in eval_src["categories"] if c["name"] in eval_seen_names}
    unseen_ids = {c["id"] for c in eval_src["categories"] if c["name"] in unseen_names}
    log.info("seen classes in evaluation (%d): %s", len(eval_seen_names), _short(eval_seen_names))
    log.info("unseen classes in evaluation (%d): %s", len(unseen_names), _short(unseen_names))
    ev, estats = make_eval(eval_src, eval_seen_ids, unseen_ids)
    renumber_ids(ev["annotations"], eval_path)
    log.info("eval: %d images; %d seen (ignored_split 1), %d unseen (ignored_split 0); "
             "%d annotations of neither dropped", estats["images"], estats["seen"], estats["unseen"],
             estats["other_class_dropped"])
    if not estats["unseen"]:
        message = (f"no object of an unseen class in {eval_path} (unseen classes: {_short(unseen_names) or 'none'}): "
                   "every AR would be undefined")
        if not allow_no_unseen:
            raise InputError(f"{message}; fix `seen`/`unseen` (or eval_seen/eval_unseen) so that some evaluated "
                             "classes are unseen, or set `targets: pseudo` when only pseudo-GT is wanted")
        log.warning(message)
    return train, ev


def _short(names: set[str], limit: int = 30) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-annotations", required=True, type=Path, help="source COCO file for training")
    parser.add_argument("--eval-annotations", type=Path, default=None,
                        help="source COCO file for evaluation (needed with --eval-out)")
    parser.add_argument("--seen", required=True,
                        help="seen classes: a set (all, voc, nonvoc, person, nonperson, synthetic_seen, "
                             "synthetic_unseen, coco), comma-separated names, @file (one name per line), "
                             "'none', or '~SPEC' for the complement")
    parser.add_argument("--unseen", default=None,
                        help="unseen classes, as --seen; unset: every evaluation class not seen")
    parser.add_argument("--eval-seen", default=None,
                        help="seen classes in the evaluation file's vocabulary when it differs from the "
                             "training file's (LVIS, UVO); 'none': every evaluated object is unseen; "
                             "unset: --seen. Any spec may be negated with a leading '~'")
    parser.add_argument("--eval-unseen", default=None,
                        help="unseen classes of the evaluation file; unset: --unseen, else every "
                             "evaluation class not in --eval-seen")
    parser.add_argument("--train-out", type=Path, default=None,
                        help="train.json to write: seen-class objects, images without one dropped")
    parser.add_argument("--eval-out", type=Path, default=None, help="eval.json to write")
    parser.add_argument("--mining-out", type=Path, default=None,
                        help="also write every training image, none dropped, with its seen-class objects: the "
                             "images pseudo-GT is mined from when no detector is trained (`targets: pseudo`)")
    parser.add_argument("--exclude-eval-images", nargs=2, type=Path, default=None,
                        metavar=("TRAIN_IMAGES", "EVAL_IMAGES"),
                        help="the two image folders: training images whose file is also an evaluation image are "
                             "left out of --train-out (COCO train2017 images in LVIS v1 val for COCO -> LVIS)")
    parser.add_argument("--allow-no-unseen", action="store_true",
                        help="accept an evaluation set without unseen-class objects (a warning, not an error)")


def run(args: argparse.Namespace) -> int:
    if args.train_out is None and args.mining_out is None:
        raise InputError("nothing to write: give --train-out and/or --mining-out")
    if (args.eval_out is None) != (args.eval_annotations is None):
        raise InputError("--eval-annotations and --eval-out go together")
    train_src = read_json(args.train_annotations, "training annotations")
    eval_src = read_json(args.eval_annotations, "evaluation annotations") if args.eval_annotations else None
    train, ev = split(train_src, eval_src, args.seen, args.unseen,
                      str(args.train_annotations), str(args.eval_annotations),
                      eval_seen=args.eval_seen, eval_unseen=args.eval_unseen, allow_no_unseen=args.allow_no_unseen,
                      exclude_eval_images=args.exclude_eval_images)
    if args.train_out is not None:
        atomic_write_json(args.train_out, train)
        log.info("wrote %s", args.train_out)
    if ev is not None:
        atomic_write_json(args.eval_out, ev)
        log.info("wrote %s", args.eval_out)
    if args.mining_out is not None:
        mining, _ = split(train_src, None, args.seen, train_path=str(args.train_annotations), keep_all_images=True)
        atomic_write_json(args.mining_out, mining)
        log.info("wrote %s (%d images, for pseudo-GT mining)", args.mining_out, len(mining["images"]))
    return 0
