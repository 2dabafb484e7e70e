#!/usr/bin/env bash
# Makes a base image equivalent to python:3.11-slim from Debian's own packages, for hosts
# that reach a Debian mirror but no container registry (CI here, air-gapped sites):
#
#   scripts/container-base.sh [TAG]        default TAG: localhost/keyturn-base:bookworm
#   podman build --format docker --build-arg BASE=localhost/keyturn-base:bookworm -t keyturn .
#
# Python 3.11 is Debian bookworm's; a virtual environment at /usr/local gives
# /usr/local/bin/python and pip, so `pip install --prefix=/install` lays out
# lib/python3.11/site-packages as in the official image and the Dockerfile works on
# either unchanged. Documentation, manual pages and translations are left out, as in the
# slim images (copyright files stay). Needs root, mmdebstrap and podman; about 35 s.
# The mirror is mmdebstrap's default unless DEBIAN_MIRROR names another.
set -euo pipefail
tag=${1:-localhost/keyturn-base:bookworm}

mirror=()
[ -n "${DEBIAN_MIRROR:-}" ] && mirror=("$DEBIAN_MIRROR")
log=$(mktemp "${TMPDIR:-/tmp}/keyturn-base.XXXXXX")
trap 'rm -f "$log"' EXIT

# Merged /usr by mmdebstrap's own hook: the usrmerge package would pull in Perl (46 MB).
if ! mmdebstrap --quiet --variant=minbase \
  --include=python3,python3-venv,ca-certificates \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --customize-hook='chroot "$1" python3 -m venv /usr/local' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/*' \
  bookworm - "${mirror[@]}" 2>"$log" |
  podman import --quiet \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null; then
  cat "$log" >&2
  echo "could not make the base image $tag" >&2
  exit 1
fi
echo "base image $tag: $(podman image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}')"
