#!/usr/bin/env bash
# Smoke test of the app bundle: build dist/medview/ (unless --no-build), then run it the way
# a workstation would: no network, no Python on PATH, an empty home folder, nothing from
# the build environment. Checks the command line, the selftest, a prediction on a real
# DICOM, the GUI opening a study given on the command line (with the model run on it) and
# times from launch to the first window and the first prediction.
#
#   bash packaging/smoke_test.sh [--no-build] [DIST]      (DIST defaults to dist/medview)
#
# Not part of `make test` (the build takes minutes and gigabytes). Output: one line per
# check, the start-up times, the size report, and a screenshot in build/smoke/.
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD=1
if [ "${1:-}" = "--no-build" ]; then BUILD=0; shift; fi
DIST="$(realpath -m "${1:-dist/medview}")"
OUT="$(pwd)/build/smoke"
rm -rf "$OUT" && mkdir -p "$OUT/home"

if [ "$BUILD" = 1 ]; then
    bash packaging/build.sh || { echo "build failed"; exit 1; }
fi
EXE="$DIST/medview"
[ -x "$EXE" ] || { echo "no bundle at $DIST (build it with make package)"; exit 1; }
SAMPLE="$(find "$DIST" -name RG1_UNCR.dcm | head -n 1)"

# Isolation, as on a workstation that never had Python: a new network namespace (only a
# loopback interface, down) and a mount namespace in which every Python installation on
# this machine (system, pyenv, the build venv) is hidden under an empty tmpfs; then an
# environment with nothing but a minimal PATH and an empty home folder.
HIDE=""
VENV_DIR="$(cd "$(dirname "${PYTHON:-.venv/bin/python}")/.." 2>/dev/null && pwd)"
for d in /usr/lib/python3* /usr/local/lib/python3* "$HOME/.pyenv" /opt/conda "$VENV_DIR"; do
    [ -d "$d" ] && HIDE="$HIDE $d"
done
export MEDVIEW_HIDE="$HIDE"
ISO=()
if unshare -mn true 2>/dev/null; then
    ISO=(unshare -mn bash -c \
         'for d in $MEDVIEW_HIDE; do mount -t tmpfs none "$d" || exit 97; done; exec "$@"' iso)
else
    echo "note: no network/mount namespaces here: network present, Python not hidden"
fi
CLEAN=(env -i PATH=/usr/bin:/bin HOME="$OUT/home" LANG=C.UTF-8
       XDG_RUNTIME_DIR="$OUT/home" MEDVIEW_MODELS_DIR="$OUT/home/models")
run() { "${ISO[@]}" "${CLEAN[@]}" "$@"; }

pass=0
fail=0
check() {  # check NAME COMMAND...: passes when the command exits 0
    local name="$1"; shift
    if "$@" >"$OUT/$name.log" 2>&1; then
        echo "[PASS] $name"; pass=$((pass + 1))
    else
        echo "[FAIL] $name (see $OUT/$name.log)"; tail -n 15 "$OUT/$name.log"; fail=$((fail + 1))
    fi
}

offline() { run "$EXE" "$@"; }
selftest() {
    run "$EXE" selftest | tee "$OUT/selftest.txt"
    grep -q "\[PASS\] app bundle" "$OUT/selftest.txt"
}
version() {  # the version the bundle reports is the one it was built from
    offline --version | grep -qx "$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
}
models() {
    offline models | tee "$OUT/models.txt"
    grep -q cxr-pneumonia-type "$OUT/models.txt" && grep -q "cxr-pneumonia " "$OUT/models.txt"
}
info() { offline info "$SAMPLE" | tee "$OUT/info.txt"; grep -q "1 series" "$OUT/info.txt"; }
predict() {
    offline predict "$SAMPLE" --model cxr-pneumonia --csv "$OUT/home/worklist.csv" &&
        head -n 2 "$OUT/home/worklist.csv" | tee /dev/stderr | grep -q "cxr-pneumonia"
}
gui_cmd() {  # gui_cmd LOG COMMAND...: a GUI command, under Xvfb when there is one
    local log="$1"; shift
    if command -v xvfb-run >/dev/null; then
        run timeout 300 /usr/bin/xvfb-run -a -s "-screen 0 1600x1000x24" \
            env MEDVIEW_LAUNCH_T0="$(date +%s.%N)" "$@" >"$log" 2>"$log.err"
    else
        run timeout 300 env QT_QPA_PLATFORM=offscreen MEDVIEW_LAUNCH_T0="$(date +%s.%N)" \
            "$@" >"$log" 2>"$log.err"
    fi
}
gui_run() { local log="$1"; shift; gui_cmd "$log" "$EXE" "$@"; }
gui() {
    for k in 1 2 3; do
        gui_run "$OUT/startup-$k.json" "$SAMPLE" --model cxr-pneumonia \
            --startup-report || return 1
        tail -n 1 "$OUT/startup-$k.json"
        grep -q first_prediction_s "$OUT/startup-$k.json" || return 1
    done
}
screenshot() {
    gui_run "$OUT/screenshot.log" "$SAMPLE" --model cxr-pneumonia \
        --screenshot "$OUT/home/bundle.png" && cp "$OUT/home/bundle.png" "$OUT/bundle.png" &&
        [ -s "$OUT/bundle.png" ]
}
desktop() {  # install the menu entry, then open a file the way a launcher does (%F)
    local xdg="$OUT/xdg" entry exec_line
    XDG_DATA_HOME="$xdg" "$DIST/install-desktop-entry.sh" || return 1
    entry="$xdg/applications/medview.desktop"
    if command -v desktop-file-validate >/dev/null; then
        desktop-file-validate "$entry" || return 1
    fi
    grep -q "^MimeType=application/dicom;" "$entry" || return 1
    exec_line="$(sed -n 's/^Exec=//p' "$entry")"
    eval "set -- ${exec_line/\%F/\"\$SAMPLE\"}"
    [ "$1" = "$EXE" ] || return 1
    gui_cmd "$OUT/desktop-open.json" "$@" --startup-report || return 1
    cat "$OUT/desktop-open.json"
    grep -q first_image_s "$OUT/desktop-open.json" &&
        XDG_DATA_HOME="$xdg" "$DIST/install-desktop-entry.sh" --uninstall &&
        [ ! -e "$entry" ]
}

isolated() {  # inside: no usable Python, no network
    [ ${#ISO[@]} -gt 0 ] || return 0
    ! run /usr/bin/python3 -c "" 2>/dev/null && ! run /usr/bin/python3.11 -c "" 2>/dev/null &&
        ! run /usr/bin/timeout 5 bash -c 'exec 3<>/dev/tcp/1.1.1.1/443' 2>/dev/null
}

check isolated isolated
check version version
check selftest selftest
check models models
check info info
check predict predict
check gui gui
check screenshot screenshot
check desktop-entry desktop

echo
echo "start-up, launch to first window / first image / first prediction (s), 3 launches:"
for k in 1 2 3; do [ -f "$OUT/startup-$k.json" ] && tail -n 1 "$OUT/startup-$k.json"; done
if [ -x "$VENV_DIR/bin/medview" ] && command -v xvfb-run >/dev/null; then
    echo "the same, from the installed package in $VENV_DIR (baseline, not isolated):"
    for k in 1 2 3; do
        MEDVIEW_MODELS_DIR="$OUT/home/models" MEDVIEW_LAUNCH_T0="$(date +%s.%N)" \
            timeout 300 xvfb-run -a -s "-screen 0 1600x1000x24" "$VENV_DIR/bin/medview" \
            "$SAMPLE" --model cxr-pneumonia --startup-report 2>/dev/null | tail -n 1
    done
fi
echo
python3 packaging/bundle_report.py "$DIST" 2>/dev/null || true
echo
echo "smoke: $pass passed, $fail failed"
[ "$fail" = 0 ]
