"""The `lipsync` command: the one place that may import both the library (lipsync) and its Ray
adapter (cluster), so the library itself never depends on Ray. Entry point: lipsync_cli.main:app."""
