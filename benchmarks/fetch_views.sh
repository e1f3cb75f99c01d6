#!/usr/bin/env bash
# Rebuild the real multi-view set of benchmarks/honest_validation.py (--views DIR): the 26 views
# left01..left14.jpg / right01..right14.jpg (no 10; 640x480) of OpenCV's samples/data, from the Debian
# package opencv-doc (apt-get download: nothing is installed). The data is not kept in the repository.
# Credits and license: benchmarks/VIEWS-CREDITS.md. Never use the graf* or aloe* images of the same
# package: they are reserved for evaluation.
#   bash benchmarks/fetch_views.sh /tmp/views
set -euo pipefail
dest=${1:?usage: fetch_views.sh DEST_DIR}
source "$(dirname "$0")/opencv_doc.sh" "$dest"
for f in "$src"/left[0-9][0-9].jpg "$src"/right[0-9][0-9].jpg; do
  cp "$f" "$dest/"
done
echo "$(ls "$dest"/*.jpg | wc -l) views in $dest (opencv-doc $version)"
