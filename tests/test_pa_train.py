"""ggn train-pa: data alignment, checkpoints, kill-and-resume, and the eval-pa command on the tiny dataset."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from ggn.cli import main as ggn_main
from ggn.io import load_checkpoint
from ggn.pa import train as pa_train
from ggn.pa.data import PATrainingSet, collate_padded
from ggn.pa.train import make_lr_lambda, train_pa

TINY = ["--backbone", "resnet18", "--fpn-dim", "16", "--ppm-dim", "16", "--input-size", "48",
        "--batch-size", "2", "--workers", "0", "--warmup-iters", "2", "--lr", "0.01", "--log-every", "1"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pa_train.add_arguments(parser)
    return parser.parse_args(argv)


def test_dataset_resizes_flips_and_pads_aligned(tiny_coco):
    ann, images = tiny_coco
    ds = PATrainingSet(ann, images, input_size=48, flip=True, seed=0)
    plain = PATrainingSet(ann, images, input_size=48, flip=False)
    flipped_any = False
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s, p = ds[i], plain[i]
            assert s["image"].shape == (3, 48, 48) and s["image"].dtype == torch.uint8
            assert s["ids"].shape == (48, 48)
            if not torch.equal(s["ids"], p["ids"]):
                assert torch.equal(s["ids"], p["ids"].flip(-1))
                assert torch.equal(s["image"], p["image"].flip(-1))
                flipped_any = True
            assert s["ids"].max() >= 1
    assert flipped_any
    # objects are bright on dark noise: resized ids stay on the bright pixels
    s = plain[0]
    bright = s["image"].float().mean(0) > 100
    on_obj = s["ids"] > 0
    assert (bright & on_obj).sum() > 0.8 * on_obj.sum()
    batch = collate_padded([plain[0], plain[1]], size=56)
    assert batch["images"].shape == (2, 3, 56, 56)  # the largest of the batch and `size`, no multiple of 32
    assert batch["valid"][:, :48, :48].all() and not batch["valid"][:, 48:, :].any()
    assert not batch["ids"][:, 48:, :].any()
    # one image per GPU (the paper rows), of a size no multiple of 32: not padded at all, as the reference
    odd = {**plain[0], "image": plain[0]["image"][:, :45, :37], "ids": plain[0]["ids"][:45, :37],
           "crowd": plain[0]["crowd"][:45, :37]}
    alone = collate_padded([odd])
    assert alone["images"].shape == (1, 3, 45, 37) and alone["valid"].all()


def test_lr_schedule():
    f = make_lr_lambda(iters_per_epoch=10, warmup_iters=5, lr_steps=[2, 3])
    assert f(0) == pytest.approx(0.001)
    assert f(5) == 1.0 and f(19) == 1.0
    assert f(20) == pytest.approx(0.1) and f(35) == pytest.approx(0.01)


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tiny_coco, tmp_path):
    ann, images = tiny_coco
    common = ["--train-json", str(ann), "--images", str(images), "--epochs", "2", *TINY]
    full = tmp_path / "full" / "pa.pt"
    train_pa(parse(common + ["--out", str(full)]))

    killed = tmp_path / "killed" / "pa.pt"

    def crash(epoch):
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill after the first epoch")

    with pytest.raises(KeyboardInterrupt):
        train_pa(parse(common + ["--out", str(killed)]), on_epoch_end=crash)
    assert not killed.exists()
    first = load_checkpoint(killed.parent / "epochs" / "epoch_000.pt")
    assert first["epoch"] == 0 and first["optimizer"]["state"]  # momentum buffers saved
    train_pa(parse(common + ["--out", str(killed)]))

    a = load_checkpoint(full.parent / "epochs" / "epoch_001.pt")
    b = load_checkpoint(killed.parent / "epochs" / "epoch_001.pt")
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    for k, sa in a["optimizer"]["state"].items():
        assert torch.allclose(sa["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"], atol=1e-6)
    final_a, final_b = load_checkpoint(full), load_checkpoint(killed)
    assert set(final_a) == {"model", "config", "provenance"}
    assert final_a["provenance"]["torch"] == str(torch.__version__) and final_a["provenance"]["cpu"]
    for k, v in final_a["model"].items():
        assert torch.allclose(v.float(), final_b["model"][k].float(), atol=1e-5), k
    # the resumed run logged epoch 2 once and did not redo epoch 1
    lines = [json.loads(x) for x in (killed.parent / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "epoch_loss" in r] == [1, 2]
    # a rerun after completion resumes past the end and only rewrites the final checkpoint
    train_pa(parse(common + ["--out", str(killed)]))
    assert torch.equal(load_checkpoint(killed)["model"]["head.classifier.weight"],
                       final_b["model"]["head.classifier.weight"])
    # epoch checkpoints of another run (other options, other data, a longer schedule) are not resumed: a
    # Snakemake rerun after a config change trains afresh
    def epochs_trained(out):
        return [r["epoch"] for r in map(json.loads, (out.parent / "train_log.jsonl").read_text().splitlines())
                if "epoch_loss" in r]

    train_pa(parse(common + ["--out", str(killed), "--fpn-dim", "32"]))
    assert load_checkpoint(killed)["config"]["fpn_dim"] == 32 and epochs_trained(killed) == [1, 2, 1, 2]
    train_pa(parse(common + ["--out", str(killed), "--fpn-dim", "32", "--epochs", "1"]))
    assert epochs_trained(killed) == [1, 2, 1, 2, 1]
    data = json.loads(ann.read_text())
    data["annotations"] = data["annotations"][1:]
    ann.write_text(json.dumps(data))  # same path, other content (e.g. a new split)
    retrain = common + ["--out", str(killed), "--fpn-dim", "32", "--epochs", "1"]
    train_pa(parse(retrain))
    assert epochs_trained(killed) == [1, 2, 1, 2, 1, 1]
    train_pa(parse(retrain))  # the same run again: nothing to train
    assert epochs_trained(killed) == [1, 2, 1, 2, 1, 1]


@pytest.mark.slow
def test_cli_train_then_eval(tiny_coco, tmp_path):
    ann, images = tiny_coco
    out = tmp_path / "pa" / "checkpoint.pt"
    assert ggn_main(["train-pa", "--train-json", str(ann), "--images", str(images), "--out", str(out),
                     "--epochs", "1", "--offsets", "1", "2", "--reduce", "none", *TINY]) == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["config"]["offsets"][8] == [-2, 0] and ckpt["config"]["reduce"] == "none"
    assert ckpt["model"]["head.classifier.weight"].shape[0] == 16
    metrics_path = tmp_path / "metrics.json"
    assert ggn_main(["eval-pa", "--checkpoint", str(out), "--annotations", str(ann), "--images", str(images),
                     "--out", str(metrics_path), "--max-images", "3", "--device", "cpu"]) == 0
    m = json.loads(metrics_path.read_text())
    assert m["images"] == 3 and m["input_size"] == 48
    aff = m["affinity"]
    assert aff["pairs_within"] > 0 and aff["pairs_across"] > 0
    assert 0 <= aff["l1_within"] <= 1 and 0 <= aff["l1_across"] <= 1 and aff["bce"] > 0
    for key in ("pa", "pa_best_threshold", "gradient_baseline"):
        b = m["boundary"][key]
        assert 0 <= b["precision"] <= 1 and 0 <= b["recall"] <= 1 and 0 <= b["f"] <= 1
    # flat bright shapes on dark noise: the oracle gradient baseline finds most edges
    assert m["boundary"]["gradient_baseline"]["f"] > 0.5


def test_help_works(capsys):
    with pytest.raises(SystemExit) as e:
        ggn_main(["train-pa", "--help"])
    assert e.value.code == 0
    assert "--warmup-iters" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        ggn_main(["eval-pa", "--help"])
    assert e.value.code == 0
