"""Input/output: storage URIs (storage.py, the only fsspec user) and media (media.py, the only ffmpeg user)."""
