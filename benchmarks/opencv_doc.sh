# Sourced by fetch_views.sh and fetch_pairs.sh: downloads the Debian package opencv-doc (apt-get download:
# nothing is installed) into a temporary folder removed on exit, and sets
#   src      its examples/data folder (OpenCV's samples/data),
#   version  the package version,
# after copying the package's copyright file to "$1/COPYRIGHT.opencv-doc".
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download opencv-doc >/dev/null)
dpkg-deb -x "$work"/opencv-doc_*.deb "$work/x"
mkdir -p "$1"
cp "$work/x/usr/share/doc/opencv-doc/copyright" "$1/COPYRIGHT.opencv-doc"
src="$work/x/usr/share/doc/opencv-doc/examples/data"
version=$(dpkg-deb -f "$work"/opencv-doc_*.deb Version)
