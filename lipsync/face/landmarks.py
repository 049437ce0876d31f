"""MediaPipe Face Mesh landmarks, one face per frame, in pixel coordinates.

`mediapipe==0.10.14` ships the Face Mesh models inside its wheel, so this works offline. The
detector runs in video (tracking) mode: after the first detection it tracks the face from the
previous frame's landmarks, which is both faster and steadier than detecting every frame. Feed it
the frames of one video in order; use a new detector for another video.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from types import TracebackType

import cv2
import numpy as np

N_LANDMARKS = 468  # Face Mesh without iris refinement
WARM_UP_SIZE = 64  # side of the blank frame that makes the graph open its models in __init__

logger = logging.getLogger(__name__)
_STDERR_LOCK = threading.Lock()  # fd 2 is one per process


def _ignore_protobuf_deprecation() -> None:
    """mediapipe 0.10.14 calls protobuf's deprecated GetPrototype on every result (harmless with
    protobuf<5). Added again by each detector: a caller (pytest) may have reset the filters."""
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated",
                            category=UserWarning, module=r"google\.protobuf")


@contextlib.contextmanager
def _native_stderr_to_log(what: str) -> Iterator[None]:
    """Whatever native code writes to fd 2 inside the block (TFLite's "Created TensorFlow Lite
    XNNPACK delegate", absl's "All log messages before absl::InitializeLog()", "Feedback manager
    requires a model with a single signature") goes to the debug log instead of the terminal;
    it is written back to stderr when the block raises. GLOG_minloglevel / TF_CPP_MIN_LOG_LEVEL
    were measured to silence none of these lines in mediapipe 0.10.14."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as captured:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (a daemon): nothing to keep off a terminal
            yield
            return
        os.dup2(captured.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace").strip()
            if text and failed:
                os.write(2, (text + "\n").encode())
            elif text:
                logger.debug("%s: %s", what, text)


class FaceMeshDetector:
    """One MediaPipe Face Mesh graph; `detect(frame_bgr)` -> (468, 2) float32 pixels or None.

    Use as a context manager (or call `close()`): the graph holds native threads and buffers.
    """

    def __init__(self, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5):
        _ignore_protobuf_deprecation()
        with _native_stderr_to_log("mediapipe face mesh"):
            # Imported here so that `lipsync.face.geometry` users do not pay for mediapipe's import.
            from mediapipe.python.solutions import face_mesh

            self._mesh = face_mesh.FaceMesh(
                static_image_mode=False,  # video mode: track between frames
                max_num_faces=1,
                refine_landmarks=False,  # 468 points; iris points are not needed
                min_detection_confidence=min_detection_confidence,
                min_tracking_confidence=min_tracking_confidence,
            )
            # The graph opens its models (and logs) on its threads after start: one blank frame
            # waits for that here. No face in it, so tracking state is as before.
            self._mesh.process(np.zeros((WARM_UP_SIZE, WARM_UP_SIZE, 3), np.uint8))
        self._closed = False

    def detect(self, frame_bgr: np.ndarray) -> np.ndarray | None:
        """Landmarks of the face in `frame_bgr` ((H, W, 3) uint8 BGR) as (468, 2) float32 (x, y)
        pixels of that frame, or None when no face is found."""
        if self._closed:
            raise RuntimeError("FaceMeshDetector is closed")
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 BGR, got {frame_bgr.shape} {frame_bgr.dtype}")
        height, width = frame_bgr.shape[:2]
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        result = self._mesh.process(rgb)
        if not result.multi_face_landmarks:
            return None
        points = result.multi_face_landmarks[0].landmark
        # MediaPipe gives (x, y) normalised to the image size: (468, 2) -> pixels.
        xy = np.array([(p.x, p.y) for p in points], dtype=np.float32)
        xy *= np.array([width, height], dtype=np.float32)
        return xy

    def close(self) -> None:
        if not self._closed:
            self._mesh.close()
            self._closed = True

    def __enter__(self) -> FaceMeshDetector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
