"""Hostile config and model files (issue 10 item 13): an alias bomb, absurd nesting, oversized or
inflating files and metadata of the wrong types each get one line (ConfigError / ModelError) within
a second, in bounded memory, naming the file. The time and memory bounds asserted here are generous
guards; the measured figures are printed (``pytest -s``)."""

from __future__ import annotations

import importlib.util
import json
import pickle
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgedet.config import load_config, parse_config
from edgedet.errors import ConfigError, ModelError
from edgedet.model import base, openvino, torchscript
from edgedet.model.base import decode_string_props, info_from_mapping, parse_metadata

GUARD_S = 60.0  # a hang guard, not a timing claim: milliseconds natively, 5.5 s under qemu-user
GUARD_BYTES = 64 * 2**20


def bomb(levels: int = 7, key: str = "x") -> str:
    """A "billion laughs" of ~300 bytes: 9 ** levels strings once every alias is expanded."""
    lines = [f"{key}0: &{key}0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"{key}{i}: &{key}{i} [{', '.join([f'*{key}{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def measured(call: Callable[[], Any], expect: type[Exception]) -> tuple[Exception, float, int]:
    """(the exception ``call`` raised, seconds, peak bytes allocated)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(expect) as info:
            call()
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return info.value, elapsed, peak


def one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------- config

MINIMAL = "cameras:\n  gate: {url: 0}\nmodel: {path: m.torchscript}\n"


def test_alias_bomb_config_is_one_line_within_a_second(tmp_path: Path) -> None:
    cfg = tmp_path / "edgedet.yaml"
    cfg.write_text(MINIMAL + bomb())
    exc, elapsed, peak = measured(lambda: load_config(cfg, check_files=False), ConfigError)
    print(f"\nalias bomb config ({cfg.stat().st_size} bytes): {elapsed * 1000:.1f} ms, peak {peak / 2**20:.2f} MiB")
    assert one_line(exc) == (
        f"{cfg}:9: YAML aliases expand this value to more than 100000 values (an alias bomb?); "
        "write the values out or use fewer aliases"
    )
    assert elapsed < GUARD_S and peak < GUARD_BYTES


def test_merge_key_bomb_is_refused_before_merging() -> None:
    lines = ["m0: &m0 {k0: x, k1: x, k2: x, k3: x, k4: x, k5: x, k6: x, k7: x, k8: x}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}" for i in range(1, 8)]
    exc, elapsed, peak = measured(lambda: parse_config(MINIMAL + "\n".join(lines), "merge.yaml"), ConfigError)
    print(f"\nmerge-key bomb: {elapsed * 1000:.1f} ms, peak {peak / 2**20:.2f} MiB")
    assert one_line(exc).startswith("merge.yaml:8: YAML aliases expand this value to more than 100000 values")
    assert elapsed < GUARD_S and peak < GUARD_BYTES


def test_aliases_used_as_meant_still_load(tmp_path: Path) -> None:
    (tmp_path / "m.torchscript").write_bytes(b"x")
    text = (
        "cameras:\n"
        "  gate: &cam {url: 0, zones: {door: &door [[0, 0], [100, 0], [100, 100]]}}\n"
        "  yard: {<<: *cam, url: 1, zones: {door: *door}}\n"
        "model: {path: m.torchscript}\n"
    )
    cfg = parse_config(text, "ok.yaml", tmp_path)
    assert cfg.cameras["yard"].zones == cfg.cameras["gate"].zones


@pytest.mark.parametrize("opening", ["[", "{a: "])
def test_absurd_nesting_is_one_line(opening: str) -> None:
    exc, elapsed, _ = measured(lambda: parse_config(MINIMAL + "deep: " + opening * 5000, "deep.yaml"), ConfigError)
    print(f"\n5000 x {opening!r}: {elapsed * 1000:.1f} ms")
    assert one_line(exc) == "deep.yaml:4: YAML nested more than 64 levels deep (a config needs a few)"
    assert elapsed < GUARD_S


def test_oversized_config_file_is_not_read(tmp_path: Path) -> None:
    cfg = tmp_path / "huge.yaml"
    with cfg.open("w") as fh:
        fh.write(MINIMAL)
        fh.write("# " + "x" * (9 * 2**20) + "\n")
    exc, _, peak = measured(lambda: load_config(cfg), ConfigError)
    assert one_line(exc) == f"{cfg}: config file is larger than 8 MiB (is it the right file?)"
    assert peak < 2 * GUARD_BYTES  # the 8 MiB read, not the whole file


# --------------------------------------------------------------------------- model metadata


def meta(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"stride": 32, "task": "detect", "batch": 1, "imgsz": [64, 64],
                           "names": {0: "person", 1: "car"}, "args": {"half": False}}
    out.update(overrides)
    return out


def fake_openvino_dir(tmp_path: Path, metadata_text: str) -> Path:
    """The files read_metadata looks at (no OpenVINO needed): an IR .xml head, a .bin, metadata.yaml."""
    d = tmp_path / "tiny_openvino_model"
    d.mkdir(parents=True)
    (d / "tiny.xml").write_text('<?xml version="1.0"?>\n<net name="tiny"></net>\n')
    (d / "tiny.bin").write_bytes(b"\0")
    (d / "metadata.yaml").write_text(metadata_text)
    return d


def fake_torchscript(path: Path, config_txt: bytes, compress: bool = False) -> Path:
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode) as zf:
        zf.writestr("m/data.pkl", pickle.dumps({}))
        zf.writestr("m/code/__torch__.py", "")
        zf.writestr("m/extra/config.txt", config_txt)
    return path


def test_openvino_metadata_alias_bomb_is_one_line(tmp_path: Path) -> None:
    text = bomb(key="n") + "stride: 32\nimgsz: [64, 64]\nnames: *n6\n"
    model = fake_openvino_dir(tmp_path, text)
    exc, elapsed, peak = measured(lambda: openvino.read_metadata(model), ModelError)
    print(f"\nalias bomb metadata.yaml ({len(text)} bytes): {elapsed * 1000:.1f} ms, peak {peak / 2**20:.2f} MiB")
    assert one_line(exc) == (
        f"{model / 'metadata.yaml'}: model metadata expands to more than 100000 values (a YAML alias bomb?); "
        "re-export the model"
    )
    assert elapsed < GUARD_S and peak < GUARD_BYTES


def test_openvino_metadata_that_refers_to_itself(tmp_path: Path) -> None:
    model = fake_openvino_dir(tmp_path, "names: &n [person, *n]\nimgsz: [64, 64]\n")
    with pytest.raises(ModelError) as info:
        openvino.read_metadata(model)
    assert one_line(info.value).endswith(
        "model metadata refers to itself (a recursive YAML alias); re-export the model")


def test_openvino_metadata_too_large_or_too_deep(tmp_path: Path) -> None:
    big = fake_openvino_dir(tmp_path / "big", "names: [" + "person, " * 200_000 + "]\n")
    with pytest.raises(ModelError, match=r"model metadata is [0-9]+ bytes \(more than 1024 KiB\)"):
        openvino.read_metadata(big)
    deep = fake_openvino_dir(tmp_path / "deep", "names: " + "[" * 5000 + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="nested too deeply"):
        openvino.read_metadata(deep)
    assert time.perf_counter() - t0 < GUARD_S


def test_torchscript_metadata_that_inflates_is_not_read(tmp_path: Path) -> None:
    model = fake_torchscript(tmp_path / "zipbomb.torchscript", b" " * (64 * 2**20), compress=True)
    exc, elapsed, peak = measured(lambda: torchscript.read_metadata(model), ModelError)
    print(f"\ninflating config.txt ({model.stat().st_size} bytes zipped, 64 MiB inflated): "
          f"{elapsed * 1000:.1f} ms, peak {peak / 2**20:.2f} MiB")
    assert one_line(exc) == f"{model}: model metadata is {64 * 2**20} bytes (more than 1024 KiB); re-export the model"
    assert elapsed < GUARD_S and peak < GUARD_BYTES


def test_json_metadata_nested_too_deeply() -> None:
    with pytest.raises(ModelError, match="nested too deeply"):
        parse_metadata("[" * 100_000, Path("m.torchscript"))


WRONG_TYPES = [
    ({"stride": "thirty-two"}, "metadata 'stride' must be a positive integer (got 'thirty-two')"),
    ({"stride": 32.5}, "metadata 'stride' must be a positive integer (got 32.5)"),
    ({"stride": True}, "metadata 'stride' must be a positive integer (got True)"),
    ({"stride": [32]}, "metadata 'stride' must be a positive integer (got [32])"),
    ({"stride": 0}, "metadata 'stride' must be a positive integer (got 0)"),
    ({"batch": "one"}, "metadata 'batch' must be a positive integer (got 'one')"),
    ({"batch": -1}, "metadata 'batch' must be a positive integer (got -1)"),
    ({"batch": {"n": 1}}, "metadata 'batch' must be a positive integer (got {'n': 1})"),
    ({"args": {"half": "no"}}, "metadata 'half' must be true or false (got 'no')"),
]


@pytest.mark.parametrize("fmt", ["torchscript", "openvino", "onnx"])
@pytest.mark.parametrize(("overrides", "message"), WRONG_TYPES, ids=[m for _, m in WRONG_TYPES])
def test_metadata_of_the_wrong_type_is_one_model_error(tmp_path: Path, fmt: str, overrides: dict[str, Any],
                                                        message: str) -> None:
    data = meta(**overrides)
    with pytest.raises(ModelError) as info:
        if fmt == "torchscript":
            torchscript.read_metadata(fake_torchscript(tmp_path / "m.torchscript", json.dumps(data).encode()))
        elif fmt == "openvino":
            openvino.read_metadata(fake_openvino_dir(tmp_path, yaml.safe_dump(data)))
        else:  # as ONNX metadata_props hold it: every value a string
            props = {k: v if isinstance(v, str) else str(v) for k, v in data.items()}
            info_from_mapping(decode_string_props(props), Path("m.onnx"), "m")
    if fmt == "onnx":  # the value stays the string ONNX stored
        message = message.split(" (got ")[0]
    assert message in one_line(info.value)
    assert one_line(info.value).endswith("re-export the model")


def test_integral_strings_still_count_as_integers() -> None:
    info = info_from_mapping(decode_string_props({"stride": "32", "batch": "1", "imgsz": "[64, 64]",
                                                  "names": "{0: 'person'}"}), Path("m.onnx"), "m")
    assert (info.stride, info.batch) == (32, 1)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
                    reason="onnxruntime not installed (pip install 'edgedet[onnx]')")
def test_onnx_metadata_too_large_is_one_line(tmp_path: Path) -> None:
    from edgedet.model.onnxruntime import read_metadata
    from tests.unit.test_backends import metadata, write_onnx

    names = {i: f"class-{i:07d}" for i in range(100_000)}  # ~2.4 MB of metadata_props
    model = write_onnx(tmp_path / "big.onnx", metadata(names=names))
    with pytest.raises(ModelError) as info:
        read_metadata(model)
    assert one_line(info.value).startswith(f"{model}: model metadata is ")
    assert base.MAX_METADATA_BYTES == 2**20
