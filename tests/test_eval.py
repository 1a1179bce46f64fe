"""`streamer eval`: metrics against the official evaluation's figures, and the command end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from streamer.cli import main
from streamer.commands.eval import read_matte
from streamer.evaluate import METRICS, Evaluation

DATA = Path(__file__).parent / "data"
SCRIPT = Path(__file__).parent.parent / "scripts" / "make_metric_fixture.py"


@pytest.fixture(scope="module")
def fixture_script():
    spec = importlib.util.spec_from_file_location("make_metric_fixture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pair_files(fixture_script, tmp_path):
    """The fixture's 20 seeded (prediction, truth) pairs as PNGs: (truth paths, prediction paths)."""
    return fixture_script.write_pairs(fixture_script.make_pairs(), tmp_path / "pairs")


def test_metrics_equal_the_official_evaluation(pair_files):
    official = json.loads((DATA / "metrics-official.json").read_text())["official"]
    evaluation = Evaluation()
    for gt, pred in zip(*pair_files, strict=True):
        evaluation.add(Path(gt).stem, read_matte(Path(pred)), read_matte(Path(gt)))
    ours = evaluation.summary()
    assert list(ours) == [key for key, _ in METRICS] == list(official)
    for key in official:
        assert ours[key] == pytest.approx(official[key], abs=1e-4), key


def test_hce_uses_the_official_threshold():
    # A prediction that never reaches 255: pysodmetrics' own min-max normalisation would cut it at
    # its mid-range (100), the official evaluation at 128; the 100..128 band must count as wrong.
    gt = np.zeros((48, 48), np.uint8)
    gt[8:40, 8:40] = 255
    pred = np.full_like(gt, 0)
    pred[8:40, 8:40] = 200
    pred[20:28, 20:28] = 110
    evaluation = Evaluation()
    evaluation.add("x", pred, gt)
    assert evaluation.summary()["HCE"] > 0


def test_rgba_prediction_is_scored_by_its_alpha(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[2:8, 3:9, 3] = 200
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_matte(tmp_path / "a.png"), rgba[..., 3])


def test_predictions_folder(pair_files, tmp_path, capsys):
    gts, preds = pair_files
    gt_dir, pred_dir = Path(gts[0]).parent, Path(preds[0]).parent
    Image.new("L", (8, 8)).save(pred_dir / "extra.png")
    Image.new("L", (8, 8)).save(gt_dir / "lonely.png")
    report, sheet = tmp_path / "report.json", tmp_path / "worst.png"
    args = [
        "eval",
        "--predictions",
        pred_dir,
        "--masks",
        gt_dir,
        "--report",
        report,
        "--sheet",
        sheet,
        "--worst",
        "3",
    ]
    assert main([str(a) for a in args]) == 0
    out, err = capsys.readouterr()
    assert f"no ground truth for {pred_dir / 'extra.png'}" in err
    assert f"no input for {gt_dir / 'lonely.png'}" in err
    labels = out.splitlines()[1].split()
    assert " ".join(labels) == " ".join(label for _, label in METRICS)
    data = json.loads(report.read_text())
    official = json.loads((DATA / "metrics-official.json").read_text())["official"]
    assert data["count"] == 20 and data["settings"] == {"source": "predictions"}
    assert all(data["metrics"][k] == pytest.approx(v, abs=1e-4) for k, v in official.items())
    worst = data["worst"]
    assert [r["name"] for r in worst] == [
        r["name"] for r in sorted(data["images"], key=lambda r: -r["MAE"])[:3]
    ]
    assert worst[0]["name"] in out
    with Image.open(sheet) as im:
        assert im.mode == "RGB" and im.height == 3 * (192 + 22)

    # Nothing the user had is replaced without --overwrite.
    before = report.read_text()
    assert main([str(a) for a in args]) == 2
    assert "output exists" in capsys.readouterr().err and report.read_text() == before


def test_network_scores_what_streamer_image_writes(lite, tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate(((70, 90), (96, 64), (64, 64))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"p{i}.png")
        truth = np.zeros((h, w), np.uint8)
        cv2.circle(truth, (w // 2, h // 2), min(h, w) // 3, 255, -1)
        Image.fromarray(truth).save(masks / f"p{i}.png")
    model = lite
    report = tmp_path / "r.json"
    assert (
        main(["eval", "--images", str(images), "--masks", str(masks), "--report", str(report), *model]) == 0
    )
    network = json.loads(report.read_text())
    assert network["settings"]["variant"] == "lite" and network["settings"]["size"] == [64, 64]

    mattes = tmp_path / "mattes"
    assert main(["image", str(images), "-o", str(mattes), "--format", "mask", *model]) == 0
    report2 = tmp_path / "r2.json"
    assert main(["eval", "--predictions", str(mattes), "--masks", str(masks), "--report", str(report2)]) == 0
    assert network["metrics"] == json.loads(report2.read_text())["metrics"]
    assert 0 < network["metrics"]["MAE"] < 1


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda a, b: None, "no file names in common"),
        (lambda a, b: Image.new("L", (4, 4)).save(a / "x.jpg"), "share a name"),
    ],
)
def test_bad_folders_get_one_line(tmp_path, capsys, setup, message):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    Image.new("L", (4, 4)).save(a / "x.png")
    Image.new("L", (4, 4)).save(b / "y.png")
    setup(a, b)
    assert main(["eval", "--predictions", str(a), "--masks", str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "".join(err)


def test_unreadable_file_is_skipped_with_one_warning(pair_files, tmp_path, capsys):
    gts, preds = pair_files
    gt_dir, pred_dir = Path(gts[0]).parent, Path(preds[0]).parent
    (pred_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("L", (8, 8), 255).save(gt_dir / "broken.png")
    report = tmp_path / "r.json"
    assert (
        main(["eval", "--predictions", str(pred_dir), "--masks", str(gt_dir), "--report", str(report)]) == 3
    )
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "broken.png" in warning[0]
    data = json.loads(report.read_text())
    assert data["count"] == 20 and data["unreadable"] == [str(pred_dir / "broken.png")]
