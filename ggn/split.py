"""Seen/unseen class split: seen-class training annotations and seen/unseen-marked evaluation annotations."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ggn.classes import class_names
from ggn.io import InputError, atomic_write_json, read_json

log = logging.getLogger("ggn.split")

OBJECT_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def _check_coco(data: dict, path: str) -> None:
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a COCO annotation file (expected a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{path} has no '{key}' list; is it a COCO instances file?")
    for c in data["categories"]:
        if "id" not in c or "name" not in c:
            raise InputError(f"{path}: category {c!r:.200} needs 'id' and 'name'")
    for img in data["images"]:
        if "id" not in img:
            raise InputError(f"{path}: image {img!r:.200} has no 'id'")
    for a in data["annotations"]:
        for key in ("image_id", "category_id"):
            if key not in a:
                raise InputError(f"{path}: annotation {a.get('id', '?')} has no '{key}'")


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


def renumber_ids(annotations: list[dict], what: str) -> int:
    """Give every annotation a fresh id from 1 when any id is 0, missing or duplicated.

    COCOeval stores the matched annotation id as the match marker (0 = unmatched), so such ids
    silently corrupt recall. Returns how many ids were unusable.
    """
    bad = count_unusable_ids(annotations)
    if bad:
        for n, a in enumerate(annotations, start=1):
            a["id"] = n
        log.warning("%s: %d annotation ids were 0, missing or duplicated; renumbered all %d from 1",
                    what, bad, len(annotations))
    return bad


def make_train(data: dict, seen_ids: set[int]) -> tuple[dict, dict]:
    """Seen-class annotations only, as one class `object`; images without a seen object dropped."""
    objects_per_image: dict = {}
    for a in data["annotations"]:
        if a["category_id"] in seen_ids and not a.get("iscrowd", 0):
            objects_per_image[a["image_id"]] = objects_per_image.get(a["image_id"], 0) + 1
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


def split(train_src: dict, eval_src: dict, seen: str | list[str], unseen: str | list[str] | None = None,
          train_path: str = "train annotations", eval_path: str = "eval annotations",
          eval_seen: str | list[str] | None = None,
          eval_unseen: str | list[str] | None = None) -> tuple[dict, dict]:
    """(train.json, eval.json) contents for a class split; class specs as in ggn.classes.

    `seen` is resolved in the training file; the evaluation file uses `eval_seen` (default `seen`)
    and `eval_unseen` (default `unseen`, else every evaluation class not seen), by name, so the two
    files may number (or even name) their categories differently.
    """
    _check_coco(train_src, train_path)
    _check_coco(eval_src, eval_path)
    seen_names = set(class_names(seen, train_src["categories"]))
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
    seen_ids = {c["id"] for c in train_src["categories"] if c["name"] in seen_names}
    eval_seen_ids = {c["id"] for c in eval_src["categories"] if c["name"] in eval_seen_names}
    unseen_ids = {c["id"] for c in eval_src["categories"] if c["name"] in unseen_names}
    log.info("seen classes for training (%d): %s", len(seen_names), _short(seen_names))
    log.info("seen classes in evaluation (%d): %s", len(eval_seen_names), _short(eval_seen_names))
    log.info("unseen classes in evaluation (%d): %s", len(unseen_names), _short(unseen_names))

    train, tstats = make_train(train_src, seen_ids)
    renumber_ids(train["annotations"], train_path)
    ev, estats = make_eval(eval_src, eval_seen_ids, unseen_ids)
    renumber_ids(ev["annotations"], eval_path)
    log.info("train: %d images kept, %d without a seen object dropped; %d seen annotations (%d crowd); "
             "%d annotations of other classes dropped", tstats["images"], tstats["images_dropped"],
             tstats["annotations"], tstats["crowd"], tstats["other_class_dropped"])
    log.info("eval: %d images; %d seen (ignored_split 1), %d unseen (ignored_split 0); "
             "%d annotations of neither dropped", estats["images"], estats["seen"], estats["unseen"],
             estats["other_class_dropped"])
    if not train["annotations"]:
        log.warning("train: no annotation of a seen class in %s; check --seen", train_path)
    if not estats["unseen"]:
        log.warning("eval: no annotation of an unseen class in %s; AR will be undefined", eval_path)
    return train, ev


def _short(names: set[str], limit: int = 30) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-annotations", required=True, type=Path, help="source COCO file for training")
    parser.add_argument("--eval-annotations", required=True, type=Path, help="source COCO file for evaluation")
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
    parser.add_argument("--train-out", required=True, type=Path, help="train.json to write")
    parser.add_argument("--eval-out", required=True, type=Path, help="eval.json to write")


def run(args: argparse.Namespace) -> int:
    train_src = read_json(args.train_annotations, "training annotations")
    eval_src = read_json(args.eval_annotations, "evaluation annotations")
    train, ev = split(train_src, eval_src, args.seen, args.unseen,
                      str(args.train_annotations), str(args.eval_annotations),
                      eval_seen=args.eval_seen, eval_unseen=args.eval_unseen)
    atomic_write_json(args.train_out, train)
    atomic_write_json(args.eval_out, ev)
    log.info("wrote %s and %s", args.train_out, args.eval_out)
    return 0
