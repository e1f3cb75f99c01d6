"""The child process of :class:`silk_keypoints.ecosystem.colmap.IsolatedVerifier`.

Run by path (``python colmap_worker.py``), never imported by the package: it needs only pycolmap and numpy,
so it starts in a fraction of the package's import time, and a crash inside pycolmap ends this process, not
the import. Protocol: pickled requests ``(camera0, camera1, points0, points1, matches, options)`` on stdin
(the arguments of ``pycolmap.estimate_two_view_geometry``), one pickled reply
``(config, inlier_matches, F, E, H)`` per request on the original stdout; pycolmap's own output goes to stderr.
"""

import os
import pickle
import sys


def main() -> None:
    import numpy as np
    import pycolmap

    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything pycolmap prints must not corrupt the replies
    requests = sys.stdin.buffer
    while True:
        try:
            camera0, camera1, points0, points1, matches, options = pickle.load(requests)
        except EOFError:
            return
        g = pycolmap.estimate_two_view_geometry(camera0, points0, camera1, points1, matches, options)
        inliers = np.asarray(g.inlier_matches, dtype=np.uint32).reshape(-1, 2)
        pickle.dump((int(g.config), inliers, g.F, g.E, g.H), replies)
        replies.flush()


if __name__ == "__main__":
    main()
