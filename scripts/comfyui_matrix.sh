#!/usr/bin/env bash
# The test matrix on this machine: ComfyUI checkouts x frontends.
#
#   scripts/comfyui_matrix.sh          prepare the frontends from PyPI, check every checkout and
#                                      its venv, say what to do for what is missing, and print
#                                      the two variables the test suite reads
#   scripts/comfyui_matrix.sh env      only print those variables for the cells present
#                                      (no download); `.ci/run` uses this
#
# Settings (environment):
#   COMFY_ROOT          where the checkouts and frontends live (default ~/comfy)
#   COMFYUI_CHECKOUTS   checkouts to use (default: $COMFY_ROOT/ComfyUI and $COMFY_ROOT/ComfyUI-*)
#   FRONTEND_VERSIONS   comfyui-frontend-package versions (default "1.27.10 1.35.9 1.58.1")
# Fetching a ComfyUI checkout is not done here: the script prints how.
set -uo pipefail

root="${COMFY_ROOT:-$HOME/comfy}"
frontends_dir="$root/frontends"
versions="${FRONTEND_VERSIONS:-1.27.10 1.35.9 1.58.1}"
mode="${1:-prepare}"

checkouts() {
  if [ -n "${COMFYUI_CHECKOUTS:-}" ]; then
    printf '%s\n' $COMFYUI_CHECKOUTS
    return
  fi
  for dir in "$root/ComfyUI" "$root"/ComfyUI-*; do
    [ -f "$dir/main.py" ] && printf '%s\n' "$dir"
  done
}

version_of() {  # ComfyUI writes its version to comfyui_version.py at release
  sed -n 's/^__version__ *= *["'"'"']\([^"'"'"']*\)["'"'"'].*/\1/p' "$1/comfyui_version.py" 2>/dev/null | head -1
}

python_of() {  # the checkout's venv, as comfy-cli lays it out
  for candidate in "$1/.venv/bin/python" "$1/venv/bin/python"; do
    [ -x "$candidate" ] && { printf '%s\n' "$candidate"; return; }
  done
  return 1
}

static_of() {
  local static="$frontends_dir/$1/comfyui_frontend_package/static"
  [ -f "$static/index.html" ] && printf '%s\n' "$static"
}

# Prints the python's problem with the checkout's requirements, or nothing when it has them.
missing_requirements() {
  "$2" - "$1/requirements.txt" <<'PY'
import importlib.metadata as metadata, re, sys
missing = []
for line in open(sys.argv[1]):
    name = re.split(r"[\s<>=!~\[;#@]", line.strip(), maxsplit=1)[0]
    if not name:
        continue
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        missing.append(name)
for module in ("torch", "aiohttp", "yaml"):
    try:
        __import__(module)
    except Exception as error:
        missing.append(f"{module} ({error.__class__.__name__}: {error})")
print(" ".join(missing))
PY
}

prepare_frontend() {
  local version="$1" dest="$frontends_dir/$1" work
  if static_of "$version" >/dev/null; then
    echo "frontend $version: ready at $(static_of "$version")"
    return 0
  fi
  work="$(mktemp -d)"
  if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" \
      "comfyui-frontend-package==$version" >"$work/pip.log" 2>&1; then
    echo "frontend $version: pip download failed:" >&2
    tail -3 "$work/pip.log" >&2
    return 1
  fi
  mkdir -p "$dest"
  python3 -m zipfile -e "$work"/comfyui_frontend_package-*.whl "$dest" || return 1
  rm -rf "$work"
  static_of "$version" >/dev/null || { echo "frontend $version: no static/index.html in the wheel" >&2; return 1; }
  echo "frontend $version: unpacked to $(static_of "$version")"
}

check_checkout() {
  local dir="$1" version python missing
  version="$(version_of "$dir")"
  if ! python="$(python_of "$dir")"; then
    echo "ComfyUI ${version:-?} at $dir: no venv. Make one:"
    echo "  python3 -m venv $dir/.venv"
    echo "  $dir/.venv/bin/pip install torch torchvision torchaudio   # the build for your GPU, or CPU"
    echo "  $dir/.venv/bin/pip install -r $dir/requirements.txt"
    return 1
  fi
  missing="$(missing_requirements "$dir" "$python")"
  if [ -n "$missing" ]; then
    echo "ComfyUI ${version:-?} at $dir: $python lacks: $missing"
    echo "  $python -m pip install -r $dir/requirements.txt   (keep the torch you have: add torch==\$($python -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '<version>'))"
    return 1
  fi
  echo "ComfyUI ${version:-?} at $dir: ready ($python)"
}

print_env() {
  local matrix="" frontends="" dir version python static
  while IFS= read -r dir; do
    [ -n "$dir" ] || continue
    python="$(python_of "$dir")" || continue
    version="$(version_of "$dir")"
    if ! "$python" -c "import torch, aiohttp, yaml" >/dev/null 2>&1; then
      echo "matrix: leaving out $dir: $python cannot import torch, aiohttp and yaml" >&2
      continue
    fi
    matrix="${matrix:+$matrix;}${version:-$(basename "$dir")}=$dir|$python"
  done < <(checkouts)
  for version in $versions; do
    static="$(static_of "$version")" || continue
    frontends="${frontends:+$frontends;}$version=$static"
  done
  printf 'export COMFYUI_MATRIX=%q\n' "$matrix"
  printf 'export COMFYUI_FRONTENDS=%q\n' "$frontends"
}

how_to_fetch() {
  cat <<TEXT
ComfyUI checkouts are not fetched by this script. The two docs/compatibility.md names:
  git clone https://github.com/comfyanonymous/ComfyUI "$root/ComfyUI" && git -C "$root/ComfyUI" checkout v0.3.64
  git clone https://github.com/comfyanonymous/ComfyUI "$root/ComfyUI-0.8.0" && git -C "$root/ComfyUI-0.8.0" checkout 3cd7b32f
  (or: pipx install comfy-cli && comfy --skip-prompt --workspace "$root/ComfyUI" install --cpu --version 0.3.64)
then run this script again to check their venvs.
TEXT
}

case "$mode" in
  env)
    print_env
    ;;
  prepare)
    status=0
    for version in $versions; do prepare_frontend "$version" || status=1; done
    found=0
    while IFS= read -r dir; do
      [ -n "$dir" ] || continue
      found=$((found + 1))
      check_checkout "$dir" || status=1
    done < <(checkouts)
    [ "$found" -ge 2 ] || { how_to_fetch; status=1; }
    echo
    echo "# the test suite's matrix on this machine (paste into your shell, or run: eval \"\$($0 env)\"):"
    print_env
    exit "$status"
    ;;
  *)
    echo "usage: $0 [prepare|env]" >&2
    exit 2
    ;;
esac
