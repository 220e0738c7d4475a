"""OpenCV, imported once with its own thread pool off: `from pipeline.ingest.opencv import cv2`.

Worker pools start by fork (pipeline/core/files.py). A process forked while OpenCV's thread pool
is running inherits that pool's locks but not its threads, and hangs in its first parallel
OpenCV call (seen: workers stuck in cv2.setNumThreads). With the pool off in every process that
imports our image code, forking is safe; the stages get their parallelism from processes, and
one thread is what each of them wants anyway.
"""

import cv2

cv2.setNumThreads(1)

__all__ = ["cv2"]
