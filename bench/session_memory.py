"""What an onnxruntime session costs in resident memory beyond its model file (edge/sysinfo.py's
``SESSION_OVERHEAD_BYTES`` and ``SESSION_MEMORY_FACTOR``; docs/rollouts.md, "Agent reports").

Each run is a fresh process: import numpy and onnxruntime, read VmRSS, create the session as
:class:`edge.detector.OnnxDetector` does (one intra-op thread, sequential), score a warm-up batch,
read VmRSS again. The figure is the difference minus the model file's size. Models: the default
zoo model and dense autoencoders (192 -> H -> H -> 192, float32, built with onnx.helper) of about
4, 16 and 64 MiB. Needs the full venv (onnx)::

    python -m bench.session_memory --runs 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WINDOW, CHANNELS = 32, 6

_CHILD = """
import json, sys
import numpy as np
import onnxruntime as ort

def rss(field="VmRSS:"):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise SystemExit("no " + field)

path, batch, window, channels = sys.argv[1], *map(int, sys.argv[2:])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
before = rss()
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
session.run(None, {name: np.zeros((1, window, channels), dtype=np.float32)})
one = rss()
session.run(None, {name: np.random.default_rng(0).normal(size=(batch, window, channels)).astype(np.float32)})
many = rss()
print(json.dumps({"one": one - before, "batch": many - before, "peak": rss("VmHWM:") - before}))
"""


def dense_model(path: Path, hidden: int) -> Path:
    """A dense autoencoder scoring windows by mean squared reconstruction error, random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(hidden)
    flat = WINDOW * CHANNELS
    weights = {"w1": (flat, hidden), "w2": (hidden, hidden), "w3": (hidden, flat)}
    inits = [numpy_helper.from_array((rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32), name)
             for name, shape in weights.items()]
    inits.append(numpy_helper.from_array(np.array([-1, flat], dtype=np.int64), "flat_shape"))
    nodes = [helper.make_node("Reshape", ["windows", "flat_shape"], ["x"]),
             helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("MatMul", ["a1", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["a2"]),
             helper.make_node("MatMul", ["a2", "w3"], ["y"]), helper.make_node("Sub", ["y", "x"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["e"]), helper.make_node("ReduceMean", ["e"], ["score"], axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["batch", WINDOW, CHANNELS])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def measure(path: Path, batch: int) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(batch), str(WINDOW), str(CHANNELS)], check=True,
                         capture_output=True, text=True)
    got: dict[str, int] = json.loads(out.stdout)
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4096, help="windows in the second scoring call (agent.max_batch_windows)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        models = [ROOT / "models" / "zoo" / "default" / "model.onnx"]
        models += [dense_model(Path(tmp) / f"dense_{h}.onnx", h) for h in (1024, 2048, 4096)]
        print(f"{'model':<16} {'bytes':>10} {'1 window: RSS - file (MiB)':>30} {f'{args.batch} windows (MiB)':>22} "
              f"{'peak RSS - file (MiB)':>24}")
        for path in models:
            size = path.stat().st_size
            runs = [measure(path, args.batch) for _ in range(args.runs)]
            one = [(r["one"] - size) / 2**20 for r in runs]
            many = [(r["batch"] - size) / 2**20 for r in runs]
            peak = [(r["peak"] - size) / 2**20 for r in runs]
            print(f"{path.parent.name if path.name == 'model.onnx' else path.stem:<16} {size:>10} "
                  f"{' '.join(f'{v:6.1f}' for v in one):>30} {' '.join(f'{v:6.1f}' for v in many):>22} "
                  f"{' '.join(f'{v:6.1f}' for v in peak):>24}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
