"""Run a trained detector over every image of an annotation file and write COCO results (boxes + RLE masks)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.transform import resize_boxes
from tqdm import tqdm

from ggn.detector.model import DEFAULT_CONFIG, load_detector
from ggn.annotations import validate_coco
from ggn.images import ImageError, image_path, load_image
from ggn.io import InputError, atomic_open, atomic_write_json, pick_device, read_json
from ggn.masks import encode_crop

log = logging.getLogger(__name__)

MASK_THRESHOLD = 0.5
# Above this many pixels an image is shrunk to the network's input size a channel at a time, before it is
# converted to float and normalised whole (a 10000 x 10000 image: 1.2 GB as float, 3.6 GB in the transform).
LARGE_IMAGE_PIXELS = 16_000_000


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
    tensors = [image_tensor(model, im, device) for im in images]
    batch, _ = model.transform(tensors)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
    for det, resized, im in zip(detections, batch.image_sizes, images):
        det["boxes"] = resize_boxes(det["boxes"], resized, im.shape[:2])
    return detections


def paste_crop(mask: torch.Tensor, box: torch.Tensor, height: int, width: int) -> tuple[np.ndarray, int, int]:
    """(boolean crop, top, left): the part of the image that torchvision's paste_mask_in_image writes for one
    padded mask and its expanded integer box, thresholded; the rest of the full-size mask is empty."""
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    resized = F.interpolate(mask.expand((1, 1, -1, -1)), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    top, bottom = min(max(y0, 0), height), min(max(y1 + 1, 0), height)
    left, right = min(max(x0, 0), width), min(max(x1 + 1, 0), width)
    crop = resized[top - y0:max(bottom, top) - y0, left - x0:max(right, left) - x0] > MASK_THRESHOLD
    return crop.cpu().numpy(), top, left


def image_tensor(model, image: np.ndarray, device: torch.device) -> torch.Tensor:
    """float [3,H,W] in [0,1]. A huge image is first shrunk to the size the model's transform resizes it to (its
    scale, mode and rounding), one channel at a time; the transform then leaves the size as it is."""
    pixels = torch.from_numpy(image)
    h, w = image.shape[:2]
    if h * w <= LARGE_IMAGE_PIXELS:
        return pixels.to(device).permute(2, 0, 1).float().div_(255)
    transform = model.transform
    scale = min(float(transform.min_size[-1]) / min(h, w), float(transform.max_size) / max(h, w))
    return torch.stack([F.interpolate(pixels[..., c].to(device)[None, None].float().div_(255), scale_factor=scale,
                                      mode="bilinear", recompute_scale_factor=True, align_corners=False)[0, 0]
                        for c in range(3)])


def to_results(image_id: int, det: dict[str, torch.Tensor], height: int, width: int) -> list[dict]:
    """COCO results of one image. Each mask is pasted within its box and encoded from that crop, one at a time:
    the RLEs are those of torchvision's paste_masks_in_image, but no mask exists at full size (a 10000 x 10000
    image: 400 MB a float mask, 40 GB the 100 masks pasted together before)."""
    boxes = det["boxes"].float()
    scores = det["scores"].float().cpu().tolist()
    rles: list[dict | None] = [None] * len(boxes)  # a detector without mask branch (`mask_head: false`): boxes only
    if "masks" in det:
        padded, scale = expand_masks(det["masks"].float(), padding=1)
        expanded = expand_boxes(boxes, scale).to(dtype=torch.int64).cpu()
        rles = [encode_crop(*paste_crop(m[0], b, height, width), height, width) for m, b in zip(padded, expanded)]
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
    if device.type == "cuda":
        from ggn.precision import strict_fp32

        strict_fp32()  # prediction is fp32, as the reference's: no TF32 either
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
