"""Files and modules other tools read: hloc h5 files, COLMAP databases, per-image npz."""
