"""Run a trained detector over every image of an annotation file and write COCO results (boxes + RLE masks)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import resize_boxes
from tqdm import tqdm

from ggn.detector.model import DEFAULT_CONFIG, load_detector
from ggn.annotations import validate_coco
from ggn.images import ImageError, image_path, load_image
from ggn.io import InputError, atomic_open, atomic_write_json, pick_device, read_json
from ggn.masks import encode_masks

log = logging.getLogger(__name__)

MASK_THRESHOLD = 0.5
PASTE_CHUNK = 100  # masks pasted at full resolution at a time: bounds memory for 1500 detections per image


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="detector checkpoint of `ggn train-detector`")
    p.add_argument("--annotations", required=True, help="COCO file listing the images (eval.json)")
    p.add_argument("--images", required=True, help="image folder (joined with each image's file_name)")
    p.add_argument("--out", required=True, help="detections.json (COCO results)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--max-images", type=int, help="first N images only (smoke tests)")
    p.add_argument("--max-detections", type=int, default=DEFAULT_CONFIG["box_detections_per_img"],
                   help="detections kept per image after class-agnostic NMS (AR@k needs k or more)")
    p.add_argument("--rpn-proposals", type=int, default=DEFAULT_CONFIG["rpn_post_nms_top_n_test"],
                   help="RPN proposals per image (before and after RPN NMS) at test time; for OLN, the proposals "
                        "kept per FPN level (its RPN has no NMS)")
    p.add_argument("--nms", type=float, default=DEFAULT_CONFIG["box_nms_thresh"], help="class-agnostic NMS IoU")


@torch.inference_mode()
def detect(model, images: list[np.ndarray], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Boxes (original resolution), scores and 28x28 mask probabilities per image; pasting is left to the caller
    so that full-resolution masks never exist for all detections at once."""
    tensors = [torch.from_numpy(im).to(device).permute(2, 0, 1).float().div_(255) for im in images]
    batch, _ = model.transform(tensors)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
    for det, resized, im in zip(detections, batch.image_sizes, images):
        det["boxes"] = resize_boxes(det["boxes"], resized, im.shape[:2])
    return detections


def to_results(image_id: int, det: dict[str, torch.Tensor], height: int, width: int) -> list[dict]:
    boxes = det["boxes"].float()
    scores = det["scores"].float().cpu().tolist()
    rles: list[dict | None] = []
    for start in range(0, len(boxes), PASTE_CHUNK):
        if "masks" not in det:  # a detector without mask branch (`mask_head: false`): boxes only
            rles.extend([None] * len(boxes[start:start + PASTE_CHUNK]))
            continue
        probs = paste_masks_in_image(det["masks"][start:start + PASTE_CHUNK].float(),
                                     boxes[start:start + PASTE_CHUNK], (height, width))
        rles.extend(encode_masks((probs[:, 0] > MASK_THRESHOLD).cpu().numpy()))
    xywh = boxes.cpu().clone()
    xywh[:, 2:] -= xywh[:, :2]
    results = [{"image_id": int(image_id), "category_id": 1, "bbox": [round(float(v), 2) for v in b],
                "segmentation": rle, "score": float(s)} for b, rle, s in zip(xywh.tolist(), rles, scores)]
    for r in results:
        if r["segmentation"] is None:
            del r["segmentation"]
    return results


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    # Cross-category test protocol (OLN): score threshold 0, NMS 0.7, up to 1500 detections per image.
    test_settings = {"box_score_thresh": 0.0, "box_nms_thresh": args.nms,
                     "box_detections_per_img": args.max_detections,
                     "rpn_pre_nms_top_n_test": args.rpn_proposals, "rpn_post_nms_top_n_test": args.rpn_proposals}
    coco = validate_coco(read_json(args.annotations, "annotation file"), args.annotations, annotations=False,
                         categories=False)[0]
    model, config = load_detector(args.checkpoint, device, test_settings)
    infos = sorted(coco["images"], key=lambda im: im["id"])[: args.max_images]
    root = Path(args.images)
    if not root.is_dir():
        raise InputError(f"image folder {root} does not exist (images of {args.annotations})")
    for info in infos:
        image_path(root, info["file_name"])  # a name leaving the image folder is refused before any work
    skipped: dict[int, str] = {}
    written = 0
    bar = tqdm(total=len(infos), desc="predict", unit="img", dynamic_ncols=True)
    # Streamed into the results JSON image by image (COCO val at 1,500 per image is 7.5M detections): memory
    # stays that of one batch; the file appears under its name only when complete.
    with atomic_open(args.out, "w") as out:
        out.write("[")
        for start in range(0, len(infos), args.batch_size):
            chunk, pixels = [], []
            for info in infos[start:start + args.batch_size]:
                try:
                    pixels.append(load_image(root, info))
                    chunk.append(info)
                except ImageError as e:
                    log.warning("skipping image %s: %s", info["id"], e)
                    skipped[int(info["id"])] = str(e)
            if chunk:
                for info, im, det in zip(chunk, pixels, detect(model, pixels, device)):
                    for result in to_results(info["id"], det, im.shape[0], im.shape[1]):
                        out.write(("," if written else "") + json.dumps(result, separators=(",", ":")))
                        written += 1
            bar.update(len(infos[start:start + args.batch_size]))
        out.write("]")
    bar.close()
    summary = {"images": len(infos), "images_processed": len(infos) - len(skipped), "images_skipped": len(skipped),
               "skipped": {str(k): v for k, v in sorted(skipped.items())}, "detections": written}
    atomic_write_json(f"{args.out}.summary.json", summary, indent=2)
    log.info("%d detections on %d images written to %s (%d unusable images skipped, listed in %s.summary.json)",
             written, len(infos) - len(skipped), args.out, len(skipped), args.out)
    return 0
