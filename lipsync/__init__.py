"""lipsync: a lip-sync dubbing engine (SyncTalk_2D-style) that trains characters and dubs catalogs.

Data flow: video --prepare--> dataset --train--> character bundle --render/dub--> dubbed video.
This package is the library; it never imports Ray (see cluster/ for the Ray adapters).
"""

__version__ = "0.1.0"
