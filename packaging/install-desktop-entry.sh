#!/usr/bin/env bash
# Add medview to the desktop menu, with its icon and file associations (DICOM, NIfTI,
# PNG/JPEG/TIFF), for the current user. Run it from the unpacked bundle folder:
#     ./install-desktop-entry.sh            # or: ./install-desktop-entry.sh --uninstall
# Files dropped on the menu entry or a launcher are opened, like `medview FILE...`.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DATA="${XDG_DATA_HOME:-$HOME/.local/share}"
APPS="$DATA/applications"
ICONS="$DATA/icons/hicolor/scalable/apps"
MIME="$DATA/mime/packages"

refresh() {
    command -v update-desktop-database >/dev/null && update-desktop-database -q "$APPS" || true
    command -v update-mime-database >/dev/null && update-mime-database "$DATA/mime" || true
    command -v gtk-update-icon-cache >/dev/null \
        && gtk-update-icon-cache -q -t "$DATA/icons/hicolor" || true
}

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$APPS/medview.desktop" "$ICONS/medview.svg" "$MIME/medview-nifti.xml"
    refresh
    echo "medview desktop entry removed"
    exit 0
fi

[ -x "$HERE/medview" ] || { echo "run this from the medview bundle folder" >&2; exit 1; }
mkdir -p "$APPS" "$ICONS" "$MIME"
exe="$HERE/medview"
sed -e "s|^Exec=medview|Exec=\"$exe\"|" -e "s|^TryExec=medview|TryExec=$exe|" \
    "$HERE/medview.desktop" > "$APPS/medview.desktop.tmp"
mv "$APPS/medview.desktop.tmp" "$APPS/medview.desktop"
cp "$HERE/medview.svg" "$ICONS/medview.svg"
cat > "$MIME/medview-nifti.xml.tmp" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<mime-info xmlns="http://www.freedesktop.org/standards/shared-mime-info">
  <mime-type type="image/x-nifti">
    <comment>NIfTI medical image</comment>
    <glob pattern="*.nii"/>
    <glob pattern="*.nii.gz" weight="60"/>
  </mime-type>
</mime-info>
XML
mv "$MIME/medview-nifti.xml.tmp" "$MIME/medview-nifti.xml"
refresh
echo "medview added to the applications menu ($APPS/medview.desktop)"
