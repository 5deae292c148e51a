"""Config reload (SIGHUP / ``systemctl reload``): what changed between two configs, and applying it.

``plan(old, new)`` is pure; ``apply(pipeline, old, path, notifier)`` re-reads the file and applies
the plan: cameras added, removed or changed restart only those capture threads; event thresholds
and zones apply at once; a model (or workers) change reloads the model and restarts the inference
threads without dropping MQTT. Sections that need a restart (mqtt, metrics, node_id, state_dir,
outbox) keep their running values, with a warning. Any error keeps the running config.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgedet.config import CameraConfig, CameraTracking, Config, load_config
from edgedet.config.detect import DetectConfig
from edgedet.errors import EdgedetError, ModelError
from edgedet.logs import set_secrets
from edgedet.pipeline import LoadedModel, Pipeline, load_model
from edgedet.sdnotify import Notifier

log = logging.getLogger("edgedet.app")

MODEL_LOAD_TIMEOUT_S = 300.0  # a model file on a hung mount: reject the reload, keep detecting

RESTART_ONLY = ("node_id", "state_dir", "mqtt", "metrics", "outbox", "web")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    model: bool = False  # model or workers section changed
    events: bool = False  # thresholds, snapshots or any camera's zones/masks changed
    log_level: bool = False
    homeassistant: bool = False  # the homeassistant section changed (applied at once)
    ignored: tuple[str, ...] = field(default=())  # sections that need a restart

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.model or self.events or self.log_level
                    or self.homeassistant)

    def summary(self) -> str:
        parts = []
        for word, names in (("added", self.added), ("removed", self.removed), ("restarted", self.changed)):
            if names:
                parts.append(f"cameras {word}: {', '.join(names)}")
        if self.model:
            parts.append("model reloaded")
        if self.events:
            parts.append("event rules updated")
        if self.log_level:
            parts.append("log level changed")
        if self.homeassistant:
            parts.append("Home Assistant discovery updated")
        return "; ".join(parts) or "no changes"


def _capture_view(cam: CameraConfig) -> CameraConfig:
    """The camera settings that need a capture restart (zones, masks and tracking apply without one; labels,
    detect and profiles are applied in place by edgedet/profile_runner.py after the reload)."""
    return replace(cam, zones={}, masks=[], tracking=CameraTracking(), labels=None, detect=DetectConfig(), profiles={})


def plan(old: Config, new: Config) -> ReloadPlan:
    old_cams = {n: c for n, c in old.cameras.items() if c.enabled}
    new_cams = {n: c for n, c in new.cameras.items() if c.enabled}
    added = tuple(n for n in new_cams if n not in old_cams)
    removed = tuple(n for n in old_cams if n not in new_cams)
    changed = tuple(
        n for n in new_cams if n in old_cams and _capture_view(new_cams[n]) != _capture_view(old_cams[n])
    )
    zones_changed = any(
        (c.zones, c.masks, c.tracking) != (old_cams[n].zones, old_cams[n].masks, old_cams[n].tracking)
        for n, c in new_cams.items() if n in old_cams
    )
    ignored = tuple(key for key in RESTART_ONLY if getattr(old, key, None) != getattr(new, key, None))
    return ReloadPlan(
        added=added,
        removed=removed,
        changed=changed,
        model=old.model != new.model or old.workers != new.workers,
        events=old.events != new.events or zones_changed,
        log_level=old.log_level != new.log_level,
        homeassistant=old.homeassistant != new.homeassistant,
        ignored=ignored,
    )


def apply(pipeline: Pipeline, cfg: Config, config_path: str | Path | None, notifier: Notifier,
          stop: threading.Event, tick: Callable[[], None]) -> Config:
    """Re-read ``config_path`` and apply what changed; returns the config in force (the old one on error).

    A new model loads on a thread of its own while the old one keeps detecting; this (main) thread
    waits for it, calling ``tick`` for the watchdog, and gives up on ``stop`` (SIGTERM must stop the
    daemon within TimeoutStopSec even while a model file hangs) or after ``MODEL_LOAD_TIMEOUT_S``.
    """
    if config_path is None:
        log.warning("SIGHUP: no config file to reload")
        return cfg
    notifier.reloading()
    model: LoadedModel | None = None
    try:
        new = load_config(config_path)
        set_secrets(cfg.secrets() + new.secrets())  # the running config's too: its cameras stop after this
        change = plan(cfg, new)
        if change.model:
            model = _load_while_ticking(new, stop, tick)
            if model is None:  # stopping: the daemon shuts down with the running config
                return cfg
    except EdgedetError as exc:
        log.error("config reload rejected, keeping the running config: %s", str(exc).replace("\n", "; "))
        notifier.ready("reload rejected")
        return cfg
    with pipeline.cams.hub.holding():  # never "every camera ended" while cameras restart
        _apply_plan(pipeline, cfg, new, change, model)
    log.info("config reloaded: %s", change.summary())
    notifier.ready(f"reloaded: {change.summary()}")
    # Sections that need a restart keep their running values.
    return replace(new, **{key: getattr(cfg, key) for key in change.ignored})


def _apply_plan(pipeline: Pipeline, cfg: Config, new: Config, change: ReloadPlan, model: LoadedModel | None) -> None:
    for key in change.ignored:
        log.warning("config reload: '%s' changed; it takes effect after a restart", key)
    if change.log_level:
        logging.getLogger().setLevel(new.log_level)
    if model is not None:
        pipeline.start_model(model)
    pipeline.cams.stop(list(change.removed) + list(change.changed))
    for name in change.removed:
        pipeline.forget_camera(name)
    enabled = [n for n, c in new.cameras.items() if c.enabled]
    events = pipeline.events
    if events is None and new.events.enabled and not cfg.events.enabled:
        log.warning("config reload: events were disabled at start; 'events.enabled: true' takes effect after a restart")
    if events is not None and change.changed:
        # A restarted camera counts frames from seq 0 again, which its tracker would ignore (it
        # drops frames at or below the last seq): end its events and give it a new tracker.
        events.reconfigure(new.events, {n: new.cameras[n] for n in enabled if n not in change.changed}, cfg.state_dir)
    names = model.detector.info.names if model is not None else None
    pipeline.ha.configure(new.homeassistant, enabled, names, classes=new.model.classes,  # sends only what changed
                          events_enabled=new.events.enabled)
    for name in change.added + change.changed:
        pipeline.start_camera(name, new.cameras[name])
    if events is not None and (change.events or change.added or change.removed or change.changed):
        events.reconfigure(new.events, {n: new.cameras[n] for n in enabled}, cfg.state_dir)  # state_dir: restart-only


def _load_while_ticking(new: Config, stop: threading.Event, tick: Callable[[], None]) -> LoadedModel | None:
    """The new model, loaded on a daemon thread; None when ``stop`` was set first. Raises what the load raised,
    or ``ModelError`` after ``MODEL_LOAD_TIMEOUT_S``."""
    result: list[LoadedModel] = []
    failed: list[BaseException] = []

    def load() -> None:
        try:
            result.append(load_model(new.model, new.workers, new.cameras))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            failed.append(exc)

    loader = threading.Thread(target=load, name="reload-model", daemon=True)
    loader.start()
    deadline = time.monotonic() + MODEL_LOAD_TIMEOUT_S
    while loader.is_alive():
        tick()
        if stop.wait(0.1):
            log.warning("stopping during a reload; the new model (%s) is not used", new.model.path)
            return None
        if time.monotonic() > deadline:
            raise ModelError(f"{new.model.path}: model did not load within {MODEL_LOAD_TIMEOUT_S:.0f} s")
    if failed:
        raise failed[0]
    return result[0]
