"""The ncnn backend on a tiny hand-written ncnn graph (Input 3x8x8 -> Reshape 6x32: 4 box rows + 2
classes, 32 anchors, no weights), its one-line errors, and ``edgedet export --format ncnn``'s checks
that run before the slow part (a missing converter or runtime).

Detector tests skip when ncnn is not installed; the real demo model is exercised in
tests/integration/test_ncnn.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edgedet.model import load_detector, resolve_backend
from edgedet.model.export.convert import _with_input_shape
from tests.paths import DEMO_MODEL, REPO
from tests.unit.test_backends import OUT, SHAPE, check_cpu_only, expected, load_error, metadata, run_threads

HAS_NCNN = importlib.util.find_spec("ncnn") is not None
needs_ncnn = pytest.mark.skipif(not HAS_NCNN, reason="ncnn not installed (pip install 'edgedet[ncnn]')")

GRAPH = "7767517\n2 2\nInput in0 0 1 in0{shape}\nReshape reshape_0 1 1 in0 out0 0=32 1=6\n"


def write_ncnn(directory: Path, meta: dict[str, Any] | None, graph: str | None = None,
               shape: str = " 0=8 1=8 2=3") -> Path:
    """A ``*_ncnn_model`` directory as ``edgedet export --format ncnn`` lays it out."""
    directory.mkdir(parents=True)
    (directory / "model.ncnn.param").write_text(GRAPH.format(shape=shape) if graph is None else graph)
    (directory / "model.ncnn.bin").write_bytes(b"")  # Input and Reshape have no weights
    if meta is not None:
        (directory / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return directory


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize(
    ("path", "backend", "want"),
    [
        ("demo_ncnn_model", "auto", "ncnn"),
        ("demo_ncnn_model/", "auto", "ncnn"),
        ("demo_ncnn_model/model.ncnn.param", "auto", "ncnn"),
        ("m.torchscript", "ncnn", "ncnn"),
        ("demo_ncnn_model", "torchscript", "torchscript"),
    ],
)
def test_resolve_backend_ncnn(path: str, backend: str, want: str) -> None:
    assert resolve_backend(path, backend) == want


def test_resolve_backend_directory_with_param(tmp_path: Path) -> None:
    model = write_ncnn(tmp_path / "exported", metadata())
    assert resolve_backend(model) == "ncnn"


@needs_ncnn
def test_tune_takes_ncnn_exports_of_the_same_checkpoint(tmp_path: Path) -> None:
    from edgedet.tune import candidates

    def export(name: str, sha: str) -> str:
        return str(write_ncnn(tmp_path / name, metadata(edgedet={"format": "ncnn", "source_sha256": sha})))

    ours, sibling = export("a_ncnn_model", "abc"), export("b_ncnn_model", "abc")
    export("c_ncnn_model", "other checkpoint")
    assert candidates(ours, []) == [ours, sibling]


def test_export_writes_the_input_shape_into_the_graph() -> None:
    text = _with_input_shape(GRAPH.format(shape=""), (3, 384, 640))
    assert text.splitlines()[2] == "Input in0 0 1 in0 0=640 1=384 2=3"
    assert _with_input_shape(GRAPH.format(shape=" 0=8 1=8 2=3"), (3, 16, 16)) == GRAPH.format(shape=" 0=8 1=8 2=3")


# --------------------------------------------------------------------------- detector


@needs_ncnn
@pytest.mark.parametrize("target", ["directory", "param"])
def test_ncnn_detector_loads_and_infers(tmp_path: Path, target: str) -> None:
    from edgedet.model.ncnn import NcnnDetector, read_metadata

    model = write_ncnn(tmp_path / "tiny_ncnn_model", metadata())
    det = NcnnDetector(model if target == "directory" else model / "model.ncnn.param", threads=1)
    assert (det.info.name, det.info.names, det.input_shape, det.anchors) == ("tiny", ("person", "car"), SHAPE, 32)
    assert (det.backend, det.device, det.threads, det.np_dtype, det.input_layout) == (
        "ncnn", "cpu", 1, np.float32, "nchw")
    assert det.runtime.startswith("ncnn ") and det.precision == "fp32"
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    out = det.infer(x)
    assert out.dtype == np.float32 and np.array_equal(out, expected(x))
    assert read_metadata(model) == det.info


@needs_ncnn
def test_ncnn_batch_runs_frame_by_frame(tmp_path: Path) -> None:
    det = load_detector(write_ncnn(tmp_path / "tiny_ncnn_model", metadata()), threads=1)
    x = np.random.default_rng(1).random((3, *SHAPE[1:]), dtype=np.float32)
    assert np.array_equal(det.infer(x), x.reshape(3, *OUT[1:]))


@needs_ncnn
def test_ncnn_infer_is_thread_safe(tmp_path: Path) -> None:
    from edgedet.model.ncnn import NcnnDetector

    assert run_threads(NcnnDetector(write_ncnn(tmp_path / "tiny_ncnn_model", metadata()), threads=1)) == []


@needs_ncnn
def test_ncnn_half_is_fp16_on_the_cpu(tmp_path: Path) -> None:
    """model.half: fp16 storage, fp32 arithmetic (fp16 arithmetic broke parity on the Cortex-A76)."""
    from edgedet.model.ncnn import NcnnDetector

    det = NcnnDetector(write_ncnn(tmp_path / "tiny_ncnn_model", metadata()), half=True, threads=1)
    assert det.np_dtype is np.float32 and det.precision == "fp16"
    opt = det._net.opt
    assert (opt.use_fp16_storage, opt.use_fp16_packed, opt.use_fp16_arithmetic) == (True, True, False)
    x = np.random.default_rng(2).random(SHAPE, dtype=np.float32)
    np.testing.assert_allclose(det.infer(x), expected(x), rtol=1e-3)  # fp16 rounding at most


def _ncnn_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty_ncnn_model"
    empty.mkdir()
    no_bin = write_ncnn(tmp_path / "nobin_ncnn_model", metadata())
    (no_bin / "model.ncnn.bin").unlink()
    two = write_ncnn(tmp_path / "two_ncnn_model", metadata())
    (two / "other.ncnn.param").write_text(GRAPH.format(shape=""))
    bad_yaml = write_ncnn(tmp_path / "badyaml_ncnn_model", metadata())
    (bad_yaml / "metadata.yaml").write_text("names: [unclosed\n")
    unknown = GRAPH.replace("Reshape reshape_0", "pnnx.Expression pnnx_expr_0")
    not_ncnn = DEMO_MODEL if DEMO_MODEL.is_file() else write_ncnn(tmp_path / "ok_ncnn_model", None) / "model.ncnn.bin"
    return {
        "missing": (tmp_path / "nope_ncnn_model", "nope_ncnn_model: model file not found"),
        "empty dir": (empty, "empty_ncnn_model: no ncnn model (*.ncnn.param) in this directory"),
        "two models": (two, "several ncnn models (model.ncnn.param, other.ncnn.param); name the .param file"),
        "not ncnn": (not_ncnn, "not an ncnn model"),
        "no metadata": (write_ncnn(tmp_path / "nometa_ncnn_model", None),
                        "nometa_ncnn_model: no model metadata (metadata.yaml next to model.ncnn.param)"),
        "no bin": (no_bin, "model.ncnn.param: weights file model.ncnn.bin is missing next to it"),
        "no magic": (write_ncnn(tmp_path / "junk_ncnn_model", metadata(), graph="hello\n"),
                     "model.ncnn.param: not an ncnn model (no 7767517 magic on its first line)"),
        "truncated": (write_ncnn(tmp_path / "cut_ncnn_model", metadata(), graph="\n".join(GRAPH.splitlines()[:3])),
                      "not an ncnn model or truncated (1 layer lines, the header says 2)"),
        "unknown layer": (write_ncnn(tmp_path / "pnnx_ncnn_model", metadata(), graph=unknown.format(shape="")),
                          "model.ncnn.param: layers ncnn cannot run: pnnx.Expression (an incomplete conversion)"),
        "class count": (write_ncnn(tmp_path / "three_ncnn_model", metadata(names={0: "a", 1: "b", 2: "c"})),
                        "model outputs 2 classes but its metadata names 3 (a, b, c...)"),
        "imgsz": (write_ncnn(tmp_path / "size_ncnn_model", metadata(imgsz=[16, 16])),
                  "model.ncnn.param: model input is 1x3x8x8 but its metadata says imgsz 16x16"),
        "bad yaml": (bad_yaml, "metadata.yaml: cannot read model metadata: "),
    }


@needs_ncnn
@pytest.mark.parametrize("case", ["missing", "empty dir", "two models", "not ncnn", "no metadata", "no bin",
                                  "no magic", "truncated", "unknown layer", "class count", "imgsz", "bad yaml"])
def test_ncnn_bad_files_one_line_errors(tmp_path: Path, case: str) -> None:
    from edgedet.model.ncnn import NcnnDetector

    path, message = _ncnn_cases(tmp_path)[case]
    assert message in load_error(NcnnDetector, path)


@needs_ncnn
def test_ncnn_cpu_only_and_fixed_input(tmp_path: Path) -> None:
    from edgedet.model.ncnn import NcnnDetector

    # ncnn would run any size on the export's fixed anchors: a wrong size is refused before it runs
    check_cpu_only(NcnnDetector, write_ncnn(tmp_path / "tiny_ncnn_model", metadata()), "ncnn")


def test_ncnn_metadata_without_the_runtime(tmp_path: Path) -> None:
    """`edgedet info` reads the metadata.yaml without importing ncnn."""
    model = write_ncnn(tmp_path / "tiny_ncnn_model", metadata())
    code = ("import sys; from edgedet.modelinfo import describe; print(describe(sys.argv[1])); "
            "print('ncnn' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("tiny_ncnn_model (ncnn)") and "input      1x3x8x8, stride 8" in lines
    assert "classes    2: person, car" in lines and lines[-1] == "False"


# --------------------------------------------------------------------------- export: missing tools

HIDE = "import sys; sys.modules[sys.argv[1]] = None; from edgedet.cli import main; sys.exit(main(sys.argv[2:]))"


@pytest.mark.parametrize(
    ("hidden", "message"),
    [
        ("pnnx", "error: edgedet export --format ncnn needs the pnnx converter: pip install 'edgedet[export]'"),
        ("ncnn", "error: edgedet export --format ncnn checks the model with ncnn: pip install 'edgedet[ncnn]'"),
    ],
)
def test_export_ncnn_without_its_tools_fails_at_once(tmp_path: Path, hidden: str, message: str) -> None:
    if hidden == "ncnn" and importlib.util.find_spec("pnnx") is None:
        pytest.skip("pnnx not installed: the pnnx check comes first")
    out = tmp_path / "x_ncnn_model"
    result = subprocess.run(
        [sys.executable, "-c", HIDE, hidden, "export", "--weights", str(tmp_path / "none.pt"), "--format", "ncnn",
         "-o", str(out)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [message]
    assert not out.exists()


def test_export_ncnn_pnnx_without_its_binary(tmp_path: Path) -> None:
    """A pnnx package without the converter binary (a broken install): a one-line error, not a download."""
    (tmp_path / "shim" / "pnnx").mkdir(parents=True)
    (tmp_path / "shim" / "pnnx" / "__init__.py").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "edgedet", "export", "--weights", str(tmp_path / "none.pt"), "--format", "ncnn"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{tmp_path / 'shim'}{os.pathsep}{REPO}"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the pnnx package has no converter binary" in lines[0], result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--half"], "--precision fp16: not available for --format ncnn (an ncnn export is fp32; run it in fp16 "
                     "with model.half: true)"),
        (["--precision", "int8", "--calib", "x"], "--precision int8: not available for --format ncnn"),
    ],
)
def test_export_ncnn_precision_is_fp32(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgedet", "export", "--weights", str(tmp_path / "none.pt"), "--format", "ncnn", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2 and message in result.stderr, result.stderr
