"""`train.py test` / `eval` per-clip predictions: splits without labels (Jester/SSv2 test), the leaderboard files,
and exact distributed evaluation -- per-clip scores of 1 and 2 gloo ranks, single view and clips x crops.

The model: an untrained ResNet-18 ACTION whose new_fc is set so that its predictions vary from clip to clip
(see ``_checkpoint``): a misplaced or mis-scored clip changes the result.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import predictions

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
MODEL = ["--arch", "resnet18", "--num-segments", "2", "--size", "32", "--workers", "0", "--device", "cpu"]


def _checkpoint(path: Path, data: Path, num_classes: int) -> Path:
    """An official-format checkpoint whose logits differ from clip to clip by a few units on ``data``'s val and
    test clips: new_fc's rows are random directions orthogonal to the features' mean (an untrained network's
    features share one large component, which would otherwise decide every clip's class)."""
    from action import build_model
    from pipelines.loader import build_loader
    from pipelines.plan import presets

    torch.manual_seed(11)
    model = build_model(arch="resnet18", num_classes=num_classes, num_segments=2, temporal="action").eval()
    feats = []
    model.new_fc.register_forward_hook(lambda mod, inp, out: feats.append(inp[0]))
    pre = presets.get(model_dataset := path.stem)
    with torch.no_grad():
        for split in ("val", "test"):
            for clips, _ in build_loader(data, split, mode="val", batch_size=4, num_segments=2, size=32, workers=0):
                model(presets.normalize(clips, pre.mean, pre.std))
        f = torch.cat(feats)
        mu = f.mean(0) / f.mean(0).norm()
        w = torch.randn(num_classes, f.shape[1])
        w -= (w @ mu)[:, None] * mu[None]
        w *= 2.0 / (f @ w.T).std()
        model.new_fc.weight.copy_(w)
        model.new_fc.bias.zero_()
    assert model_dataset in ("jester", "sthv2")
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from rawtrees import make_jester, make_sthv2

    from pipelines.ingest.convert import convert_dataset

    base = tmp_path_factory.mktemp("predict")
    out = {}
    # 7 clips per split: not divisible by world (2) x per-rank batch (2)
    make_jester(base / "raw-j", n_train=2, n_val=7, n_test=7, frames=(4, 7), size=(40, 32), seed=4)
    convert_dataset("jester", base / "raw-j", base / "jester", workers=1, shard_mb=0.02, seed=0)
    make_sthv2(base / "raw-s", n_train=2, n_val=2, n_test=5, frames=(4, 6), size=(40, 32), seed=6)
    convert_dataset("sthv2", base / "raw-s", base / "sthv2", workers=1, shard_mb=0.05, seed=0)
    out["jester"], out["sthv2"] = base / "jester", base / "sthv2"
    out["ck-jester"] = _checkpoint(base / "jester.pth", base / "jester", 27)
    out["ck-sthv2"] = _checkpoint(base / "sthv2.pth", base / "sthv2", 174)
    return out


def _cmd(command, dataset, data, run, ck, *extra, nproc=1):
    args = [command, "--dataset", dataset, "--data", str(data), "--run-dir", str(run), "--checkpoint", str(ck),
            *MODEL, *extra]
    if nproc == 1:
        return [sys.executable, str(ROOT / "train.py"), *args]
    return [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", str(ROOT / "train.py"), *args]


def _run(cmd) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ids(split_dir: Path) -> list[str]:
    from pipelines.shards.reader import ShardDataset

    return list(ShardDataset(split_dir.parent, split_dir.name).metadata()["key"])


def test_unlabelled_test_split_writes_leaderboard_files_and_no_accuracy(data, tmp_path):
    run = tmp_path / "j"
    res = _run(_cmd("test", "jester", data["jester"], run, data["ck-jester"], "--split", "test", "--test-clips", "2",
                    "--test-crops", "1", "--batch-size", "3"))
    assert (res["clips"], res["labelled"]) == (7, 0)
    assert not {"top1", "top5", "loss", "per_class"} & set(res)  # no accuracy without labels
    ids = sorted(_ids(data["jester"] / "test"), key=int)
    lines = (run / "predictions-test.csv").read_text().splitlines()
    body, scores = predictions.read(run, "predictions-test")
    classes = body["classes"]
    assert [x.split(";")[0] for x in lines] == ids  # every test id once, ascending
    assert [c["id"] for c in body["clips"]] == ids and scores.shape == (7, 27) and scores.dtype == np.float32
    for line, clip, row in zip(lines, body["clips"], scores, strict=True):
        want = [classes[i] for i in np.argsort(-row, kind="stable")[:5]]
        assert clip["top5"] == want and line == f"{clip['id']};{want[0]}"  # Jester: id;Label (top-1)
        assert clip["label"] is None and clip["top5_scores"] == pytest.approx(sorted(row, reverse=True)[:5], abs=1e-6)
        assert row.sum() == pytest.approx(1.0, abs=1e-5)  # test: softmax averaged over the views
    assert len({c["top5"][0] for c in body["clips"]}) > 1, "the model predicts one class for every clip"
    assert res["predictions"]["csv"] == str(run / "predictions-test.csv")


def test_sthv2_test_csv_lists_five_names(data, tmp_path):
    run = tmp_path / "s"
    res = _run(_cmd("test", "sthv2", data["sthv2"], run, data["ck-sthv2"], "--split", "test", "--test-clips", "1",
                    "--test-crops", "1", "--batch-size", "2"))
    assert (res["clips"], res["labelled"]) == (5, 0) and "top1" not in res
    body, _ = predictions.read(run, "predictions-test")
    lines = (run / "predictions-test.csv").read_text().splitlines()
    assert lines == [";".join([c["id"], *c["top5"]]) for c in body["clips"]]
    assert all(len(x.split(";")) == 6 for x in lines)


def test_labelled_split_reports_accuracy_that_matches_the_predictions(data, tmp_path):
    run = tmp_path / "v"
    res = _run(_cmd("test", "jester", data["jester"], run, data["ck-jester"], "--split", "val", "--test-clips", "2",
                    "--test-crops", "3", "--batch-size", "2"))
    body, scores = predictions.read(run, "predictions-val")
    clips = body["clips"]
    assert (res["clips"], res["labelled"], len(clips)) == (7, 7, 7)
    assert all(c["label"] is not None for c in clips)
    top1 = 100.0 * sum(c["top5"][0] == c["label"] for c in clips) / 7
    top5 = 100.0 * sum(c["label"] in c["top5"] for c in clips) / 7
    assert (res["top1"], res["top5"]) == (pytest.approx(top1), pytest.approx(top5))
    labels = torch.tensor([body["classes"].index(c["label"]) for c in clips])
    nll = torch.nn.functional.nll_loss(torch.from_numpy(scores).clamp_min(1e-12).log(), labels)
    assert res["loss"] == pytest.approx(nll.item(), rel=1e-5)


def test_distributed_multiview_test_scores_every_clip_exactly_as_one_process(data, tmp_path):
    """2 gloo ranks (per-rank batch 2, as the single process) score every clip once with the same per-clip
    scores (2 clips x 3 crops averaged) as one process: the same top-5 names, the scores of every class."""
    extra = ("--split", "val", "--test-clips", "2", "--test-crops", "3")
    one = _run(_cmd("test", "jester", data["jester"], tmp_path / "one", data["ck-jester"], *extra, "--batch-size", "2"))
    two = _run(_cmd("test", "jester", data["jester"], tmp_path / "two", data["ck-jester"], *extra, "--batch-size", "4",
                    nproc=2))
    a, sa = predictions.read(tmp_path / "one", "predictions-val")
    b, sb = predictions.read(tmp_path / "two", "predictions-val")
    assert [c["id"] for c in a["clips"]] == [c["id"] for c in b["clips"]] and len(a["clips"]) == 7
    torch.testing.assert_close(torch.from_numpy(sb), torch.from_numpy(sa), rtol=1e-5, atol=1e-6)
    assert [c["top5"] for c in a["clips"]] == [c["top5"] for c in b["clips"]]
    assert len({c["top5"][0] for c in a["clips"]}) > 1, "the model predicts one class for every clip"
    for k in ("top1", "top5", "clips", "labelled"):
        assert one[k] == two[k], k
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_distributed_eval_logits_equal_one_process(data, tmp_path):
    one = _run(_cmd("eval", "jester", data["jester"], tmp_path / "one", data["ck-jester"], "--batch-size", "2"))
    two = _run(_cmd("eval", "jester", data["jester"], tmp_path / "two", data["ck-jester"], "--batch-size", "4",
                    nproc=2))
    a, la = predictions.read(tmp_path / "one", "predictions-val-eval")
    b, lb = predictions.read(tmp_path / "two", "predictions-val-eval")
    assert a["score"] == "logits" and la.shape == (7, 27)
    assert np.ptp(la, axis=0).max() > 0.1, "per-clip logits barely differ: the check could not see a swapped clip"
    torch.testing.assert_close(torch.from_numpy(lb), torch.from_numpy(la), rtol=1e-5, atol=1e-5)
    assert (one["top1"], one["top5"], one["clips"]) == (two["top1"], two["top5"], two["clips"])


def test_leaderboard_lines_and_id_order():
    assert predictions.leaderboard_lines("jester", ["5", "12"], [list("abcde"), list("fghij")]) == ["5;a", "12;f"]
    assert predictions.leaderboard_lines("sthv2", ["7"], [list("abcde")]) == ["7;a;b;c;d;e"]
    keys = ["10", "9", "100", "b/x#1", "a/y#2"]
    assert [keys[i] for i in predictions._order(keys)] == ["9", "10", "100", "a/y#2", "b/x#1"]
    with pytest.raises(ValueError):
        predictions.leaderboard_lines("jester", ["1", "2"], [list("abcde")])
