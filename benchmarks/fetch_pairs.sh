#!/usr/bin/env bash
# Rebuild the real image pairs of benchmarks/unrelated_pairs.py (--pairs DIR), the related pairs the
# unrelated-pairs gate must keep:
# six pairs of real photos (one rendered) of one scene from OpenCV's samples/data, from the Debian package opencv-doc
# (apt-get download: nothing is installed), and pairs.txt listing them. The data is not kept in the repository.
# Credits and license: benchmarks/VIEWS-CREDITS.md. Never use the graf* or aloe* images of the same
# package: they are reserved for evaluation.
#   bash benchmarks/fetch_pairs.sh /tmp/real-pairs
set -euo pipefail
dest=${1:?usage: fetch_pairs.sh DEST_DIR}
source "$(dirname "$0")/opencv_doc.sh" "$dest"
pairs="left.jpg right.jpg
aero1.jpg aero3.jpg
leuvenA.jpg leuvenB.jpg
basketball1.png basketball2.png
rubberwhale1.png rubberwhale2.png
Blender_Suzanne1.jpg Blender_Suzanne2.jpg"
for f in $pairs; do
  cp "$src/$f" "$dest/"
done
echo "$pairs" > "$dest/pairs.txt"
echo "$(wc -l < "$dest/pairs.txt") pairs in $dest (opencv-doc $version)"
