"""Secrets out of text (issue 10 item 14): URL passwords whatever shape the URL has, secret-looking
parameters matched by pattern, the log filter (messages, tracebacks, stacks; refreshed by
``set_secrets``) and config problems that never show a secret."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgedet import logs
from edgedet.config import parse_config
from edgedet.errors import ConfigError
from edgedet.logs import RedactFilter, scrub, set_secrets
from edgedet.redact import mask_url, spellings, url_secrets

REPO = Path(__file__).resolve().parents[2]

# (url, masked, secrets found)
SHAPES = [
    ("rtsp://admin:Pw-0001@cam/x", "rtsp://admin:***@cam/x", ["Pw-0001"]),
    ("admin:Pw-0002@cam.local/live", "admin:***@cam.local/live", ["Pw-0002"]),  # no scheme
    ("rtsp:/admin:Pw-0003@cam/x", "rtsp:/admin:***@cam/x", ["Pw-0003"]),  # one slash
    ("//admin:Pw-0004@cam/x", "//admin:***@cam/x", ["Pw-0004"]),
    ("rtsp:admin:Pw-0005@cam", "rtsp:***@cam", ["admin:Pw-0005"]),  # no slashes: user and password hidden
    ("admin:Pw/0006@cam/x", "admin:***@cam/x", ["Pw/0006"]),  # unencoded '/' in the password
    ("rtsp://admin:Pw@0007@cam/x", "rtsp://admin:***@cam/x", ["Pw@0007"]),  # unencoded '@'
    ("rtsp://admin:Pw%400008@cam/x", "rtsp://admin:***@cam/x", ["Pw%400008"]),  # percent-encoded
    ("rtsp://cam/x?auth_token=Tk0009&ch=1", "rtsp://cam/x?auth_token=***&ch=1", ["Tk0009"]),
    ("http://cam/x?access_key=Ak0010&passphrase=Pp0011", "http://cam/x?access_key=***&passphrase=***",
     ["Ak0010", "Pp0011"]),
    ("https://s3/x?X-Amz-Signature=Sg0012&X-Amz-Credential=Cr/0013", "https://s3/x?X-Amz-Signature=***"
     "&X-Amz-Credential=***", ["Sg0012", "Cr/0013"]),
    ("http://cam/x?apikey=Ky0014#access_token=Fr0015", "http://cam/x?apikey=***#access_token=***",
     ["Ky0014", "Fr0015"]),
    ("rtsp://cam:554/user=admin&password=Pw0016&channel=1", "rtsp://cam:554/user=admin&password=***&channel=1",
     ["Pw0016"]),  # in the path, as some DVRs want it
    ("http://cam/x?SessionID=Ss0017&client_secret=Cs0018", "http://cam/x?SessionID=***&client_secret=***",
     ["Ss0017", "Cs0018"]),
    # switches behind secret-looking names are masked but not scrubbed from every log line
    ("rtsp://cam/x?keyframe=1&auth=true", "rtsp://cam/x?keyframe=***&auth=***", []),
    ("/var/clips/a:b@c.mp4", "/var/clips/a:b@c.mp4", []),  # a path has no credentials
    ("rtsp://admin@cam/x", "rtsp://admin@cam/x", []),
]


@pytest.mark.parametrize(("url", "masked", "secrets"), SHAPES, ids=[s[0] for s in SHAPES])
def test_url_shapes(url: str, masked: str, secrets: list[str]) -> None:
    assert mask_url(url) == masked
    assert sorted(url_secrets(url)) == sorted(secrets)


def test_spellings() -> None:
    assert spellings("Yard%40Pw x") == {"Yard%40Pw x", "Yard@Pw x", "Yard%40Pw%20x", "Yard%40Pw+x"}


@pytest.fixture
def clean_secrets() -> Iterator[None]:
    yield
    set_secrets(())


def _logged(flt: logging.Filter, emit: object) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(flt)
    logger = logging.getLogger("edgedet.test_redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        emit(logger)  # type: ignore[operator]
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return out.getvalue()


def test_filter_scrubs_messages_tracebacks_and_stacks_in_every_spelling() -> None:
    flt = RedactFilter(["Yard%40Pw7"])

    def emit(log: logging.Logger) -> None:
        log.warning("open %s failed", "rtsp://v:Yard%40Pw7@cam")
        try:
            raise RuntimeError("cannot open rtsp://v:Yard@Pw7@cam/x")
        except RuntimeError:
            log.exception("camera crashed; url %s", "Yard%40Pw7", stack_info=True)

    text = _logged(flt, emit)
    assert "Traceback" in text and "RuntimeError: cannot open rtsp://v:***@cam/x" in text
    assert "Stack (most recent call last)" in text
    assert "Yard" not in text, text


def test_set_secrets_refreshes_the_filter(clean_secrets: None) -> None:
    set_secrets(["old-secret-1"])
    assert scrub("a old-secret-1 b new-secret-2") == "a *** b new-secret-2"
    set_secrets(["old-secret-1", "new-secret-2"])  # what a reload does: the running and the new config's
    assert scrub("a old-secret-1 b new-secret-2") == "a *** b ***"
    text = _logged(logs._FILTER, lambda log: log.error("x %s", "new-secret-2"))  # the filter setup_logging installs
    assert text == "ERROR edgedet.test_redact: x ***\n"


def test_uncaught_exceptions_go_through_the_filter() -> None:
    code = (
        "import threading, sys\n"
        "from edgedet.logs import setup_logging\n"
        "setup_logging('INFO', ['Thr3ad-Pw'])\n"
        "def boom(): raise ValueError('rtsp://u:Thr3ad-Pw@cam')\n"
        "t = threading.Thread(target=boom, name='capture:gate'); t.start(); t.join()\n"
        "raise KeyError('Thr3ad-Pw main')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "CRITICAL edgedet: uncaught exception in thread capture:gate" in result.stderr, result.stderr
    assert "CRITICAL edgedet: uncaught exception" in result.stderr.split("capture:gate", 1)[1], result.stderr
    assert "ValueError: rtsp://u:***@cam" in result.stderr and "KeyError: '*** main'" in result.stderr
    assert "Thr3ad-Pw" not in result.stderr and result.returncode == 1


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        ("admin:Odd-Pw-1@cam.local/live", "Odd-Pw-1"),  # no scheme: not a file
        ("rtsp:/admin:Odd-Pw-2@cam/x", "Odd-Pw-2"),  # one slash
        ("cam.local/live?auth_token=Odd-Tok-3", "Odd-Tok-3"),  # taken for a file: 'file not found'
        ("/srv/clips/x.mp4?apikey=Odd-Key-4", "Odd-Key-4"),
        ("rtsp://admin:Odd%2FPw-5@cam:99999/x", "Odd/Pw-5"),  # bad port; the decoded spelling too
    ],
)
def test_config_problems_never_show_a_secret(tmp_path: Path, value: str, secret: str) -> None:
    text = f"cameras:\n  gate: {{url: '{value}'}}\nmodel: {{path: m.torchscript}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", tmp_path)
    message = str(info.value)
    assert message.startswith("c.yaml:2: cameras.gate.url: ") and "***" in message, message
    assert secret not in message
