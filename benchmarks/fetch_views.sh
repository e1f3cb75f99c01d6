#!/usr/bin/env bash
# Rebuild the real multi-view set of benchmarks/honest_validation.py (--views DIR): the 26 views
# left01..left14.jpg / right01..right14.jpg (no 10; 640x480) of OpenCV's samples/data, from the Debian
# package opencv-doc (apt-get download: nothing is installed). The data is not kept in the repository.
# Credits and license: benchmarks/VIEWS-CREDITS.md. Never use the graf* or aloe* images of the same
# package: they are reserved for evaluation.
#   bash benchmarks/fetch_views.sh /tmp/views
set -euo pipefail
dest=${1:?usage: fetch_views.sh DEST_DIR}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download opencv-doc >/dev/null)
dpkg-deb -x "$work"/opencv-doc_*.deb "$work/x"
mkdir -p "$dest"
src="$work/x/usr/share/doc/opencv-doc/examples/data"
for f in "$src"/left[0-9][0-9].jpg "$src"/right[0-9][0-9].jpg; do
  cp "$f" "$dest/"
done
cp "$work/x/usr/share/doc/opencv-doc/copyright" "$dest/COPYRIGHT.opencv-doc"
echo "$(ls "$dest"/*.jpg | wc -l) views in $dest (opencv-doc $(dpkg-deb -f "$work"/opencv-doc_*.deb Version))"
