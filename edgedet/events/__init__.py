"""The events stage: confirmed events per camera and label, from the per-frame detections.

| module | holds |
|---|---|
| ``zones.py`` | ``Zone`` polygons (zones and masks) from the camera config, ``box_iou`` |
| ``snapshots.py`` | ``SnapshotStore``: JPEG snapshots under ``<state_dir>/snapshots`` with retention |
| ``messages.py`` | ``EventMessage`` (``new`` / ``update`` / ``end``) and its JSON form |
| ``tracker.py`` | ``EventRules`` and ``EventTracker``: K-of-N start, rate-limited updates, timed end |
| ``stage.py`` | ``EventStage``: one tracker per camera, publishing to MQTT, metrics |

The message's JSON Schema is ``edgedet.schemas.load_schema("event")``.
"""
