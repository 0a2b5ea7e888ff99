"""Where a pruned YOLO loses the original's detections: the measurements behind docs/DETECTION.md's
"Where the per-group plan's detections go", on the held-out half of ``bench_detection.py``'s split.

    python benchmarks/detection_diagnosis.py breakdown PRUNED.onnx
    python benchmarks/detection_diagnosis.py splice PRUNED.onnx PLAN.json
    python benchmarks/detection_diagnosis.py plan PLAN.json [--without /model.22/cv3 ...] [--no-head-refit]

``breakdown``: mAP50 of the pruned model, of its boxes with the original's scores and of the original's
boxes with its scores, how often its best class differs where the original detects, and its logit
error of the original's class there. ``splice``: the pruned model with its head fed the original's neck
outputs (the plan's kept channels; YOLOv8 / YOLO11 names). ``plan``: a saved plan (``--plan-out``), parts
of it dropped, applied to the original and reconstructed as the CLI does (the CLI's training split of the
250 calibration photos, the head refit where the original detects); mAP50 before and after. Prints JSON
lines; writes nothing under ``results/`` (the figures are quoted in docs/DETECTION.md with their load).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_detection as bench  # noqa: E402

from onnxprune.roundtrip.detector_outputs import YoloLayout, find_yolo_layout  # noqa: E402
from onnxprune.roundtrip.images import read_folder  # noqa: E402
from onnxprune.workers.detection import BOX_VALUES, detection_agreement  # noqa: E402

CONFIDENCE = 0.1  # the benchmark's ground-truth confidence
NECK = {3: "/model.15/cv2/conv/Conv", 4: "/model.18/cv2/conv/Conv", 5: "/model.21/cv2/conv/Conv"}


def held_out() -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        _, folder = bench.split_photos(Path(tmp))
        return read_folder(folder, bench.SIZE)


def run_ort(path: Path | str, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + 25]})[0] for i in range(0, len(images), 25)])


def map50(reference: np.ndarray, candidate: np.ndarray, layout: YoloLayout) -> float:
    return round(float(detection_agreement(reference, candidate, layout, CONFIDENCE)["map50"]), 3)


def logits(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(scores, 1e-12, 1 - 1e-7)
    return np.log(clipped) - np.log1p(-clipped)


def breakdown(original: np.ndarray, pruned: np.ndarray, layout: YoloLayout) -> dict[str, object]:
    """Boxes against scores against classes (outputs [N, 4 + classes, anchors])."""

    def mixed(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        out[:, :BOX_VALUES] = boxes[:, :BOX_VALUES]
        return out

    s_orig, s_pruned = original[:, BOX_VALUES:], pruned[:, BOX_VALUES:]
    best = s_orig.argmax(1)
    detects = s_orig.max(1) >= CONFIDENCE
    own_class = np.take_along_axis(s_pruned, best[:, None], 1)[:, 0]
    forced = pruned.copy()
    forced[:, BOX_VALUES:] = 0
    np.put_along_axis(forced[:, BOX_VALUES:], best[:, None], s_pruned.max(1, keepdims=True), 1)
    error = (logits(own_class) - logits(s_orig.max(1)))[detects]
    return {
        "pruned": map50(original, pruned, layout),
        "pruned boxes, original scores": map50(original, mixed(pruned, original), layout),
        "original boxes, pruned scores": map50(original, mixed(original, pruned), layout),
        "pruned scores, original class": map50(original, forced, layout),
        "anchors the original detects": int(detects.sum()),
        "best class differs there": round(float((s_pruned.argmax(1) != best)[detects].mean()), 4),
        "logit error of its class there (mean, rms)": [
            round(float(error.mean()), 3),
            round(float(np.sqrt((error**2).mean())), 3),
        ],
    }


def splice(pruned_path: Path, plan_path: Path, images: np.ndarray, layout: YoloLayout, reference: np.ndarray) -> dict:
    """The pruned head fed the original's neck outputs, per scale and branch."""
    import onnx
    import torch

    from onnxprune.roundtrip.executor import OnnxModule

    keep = {g["id"]: g["keep"] for g in json.loads(plan_path.read_text())["groups"]}
    pruned = onnx.load(str(pruned_path))
    heads = [n for n in pruned.graph.node if n.op_type == "Conv" and n.name.startswith("/model.22/cv")]
    heads = [n for n in heads if n.name.endswith(".0/conv/Conv")]
    tensors = sorted({n.input[0] for n in heads})
    teacher, student = OnnxModule(onnx.load(str(bench.MODEL))).eval(), OnnxModule(pruned).eval()

    def scale(node: onnx.NodeProto) -> int:
        return 3 + int(node.name.split("/")[2].split(".")[1])

    def with_neck(scales: tuple[int, ...], branches: tuple[str, ...]) -> float:
        outputs = []
        with torch.no_grad():
            for start in range(0, len(images), 50):
                batch = images[start : start + 50]
                feeds = dict(zip(tensors, teacher.run({"images": batch}, outputs=tensors)))
                hooks = {}
                for node in heads:
                    if scale(node) in scales and node.name.split("/")[2][:3] in branches:
                        kept = keep.get(NECK[scale(node)])
                        feed = feeds[node.input[0]] if kept is None else feeds[node.input[0]][:, kept]
                        hooks[(node.name, 0)] = lambda _edge, feed=feed: feed
                outputs.append(student.run({"images": batch}, edge_hooks=hooks)[0].numpy())
        return map50(reference, np.concatenate(outputs), layout)

    every = (3, 4, 5)
    result = {"as pruned": with_neck((), ()), "original neck into the head": with_neck(every, ("cv2", "cv3"))}
    result["original neck into the class branch"] = with_neck(every, ("cv3",))
    for level in every:
        result[f"original P{level} into the head"] = with_neck((level,), ("cv2", "cv3"))
    return result


def plan(
    plan_path: Path, without: list[str], head_refit: bool, images: np.ndarray, layout: YoloLayout, reference: np.ndarray
) -> dict:
    """A saved plan less the groups named by ``without`` (substrings), reconstructed as the CLI does."""
    import onnx
    import torch

    from onnxprune.graphops.cost import measure_cost
    from onnxprune.graphops.dependency import analyze
    from onnxprune.graphops.plan import PruningPlan
    from onnxprune.graphops.prepare import prepare_model
    from onnxprune.graphops.surgery import apply_plan
    from onnxprune.roundtrip.data import Dataset, split_data
    from onnxprune.roundtrip.executor import OnnxModule
    from onnxprune.roundtrip.reconstruction import DETECTOR_SAMPLES, head_layers, reconstruct, score_layers

    shapes = {"images": [1, 3, *bench.SIZE]}
    dep = analyze(prepare_model(onnx.load(str(bench.MODEL))), shapes)
    data = json.loads(plan_path.read_text())
    data["groups"] = [g for g in data["groups"] if not any(part in g["id"] for part in without)]
    chosen = PruningPlan.from_dict(data)
    pruned = apply_plan(dep, chosen)
    with tempfile.TemporaryDirectory() as tmp:
        calibration, _ = bench.split_photos(Path(tmp))
        train = split_data(Dataset({"images": read_folder(calibration, bench.SIZE)}, None)).train
    head = head_layers(dep.model, dep.model.graph.output[0].name) if head_refit else set()
    started = time.monotonic()
    result = reconstruct(
        dep,
        chosen,
        pruned,
        train,
        seed=0,
        also=head,
        at_least=DETECTOR_SAMPLES,
        scores=score_layers(dep.model, head, layout.classes) if head else (),
    )

    def judged(model: onnx.ModelProto) -> float:
        module = OnnxModule(model).eval()
        with torch.no_grad():
            out = [module.run({"images": images[i : i + 50]})[0].numpy() for i in range(0, len(images), 50)]
        return map50(reference, np.concatenate(out), layout)

    before, after = measure_cost(dep.model, shapes).macs, measure_cost(pruned, shapes).macs
    return {
        "groups": len(data["groups"]),
        "macs_removed": round(1 - after / before, 4),
        "pruned": judged(pruned),
        "reconstructed": judged(result.model),
        "reconstruction_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("breakdown", "splice", "plan"))
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--without", nargs="*", default=[], help="drop the plan's groups whose id contains these")
    parser.add_argument("--no-head-refit", action="store_true")
    args = parser.parse_args()
    images = held_out()
    reference = run_ort(bench.MODEL, images)
    layout = find_yolo_layout([reference], "yolo")
    if layout is None:
        raise SystemExit("the original's output is not YOLO-shaped")
    load = Path("/proc/loadavg").read_text().split()[0]
    if args.what == "breakdown":
        result = breakdown(reference, run_ort(args.paths[0], images), layout)
    elif args.what == "splice":
        result = splice(args.paths[0], args.paths[1], images, layout, reference)
    else:
        result = plan(args.paths[0], args.without, not args.no_head_refit, images, layout, reference)
    print(json.dumps({"what": args.what, "paths": [str(p) for p in args.paths], "load": load, **result}))


if __name__ == "__main__":
    main()
