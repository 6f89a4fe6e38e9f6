#!/usr/bin/env bash
# The single source of truth for what bitsmith needs on a machine.
# Installs missing Debian packages (as root, or through sudo) and creates .venv with the
# package and its test extras. A second run skips everything that is already present.
set -euo pipefail
cd "$(dirname "$0")/.."

# iverilog runs the generated RTL (tests and `bitsmith rtl`); verilator is the faster optional simulator;
# g++ compiles the HLS-export reference check (and brings gcc, which builds the engine's AVX2 int8 kernel,
# setup.py); chromium (headless) renders the HTML report in its test.
DEBIAN_PACKAGES=(dataset-fashion-mnist iverilog verilator g++ chromium)
PYTHON=${PYTHON:-python3}

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then as_root=(); elif command -v sudo >/dev/null; then as_root=(sudo); else
        echo "setup: need root (or sudo) to install Debian packages: ${missing[*]}" >&2; exit 1
    fi
    echo "setup: installing Debian packages: ${missing[*]}"
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
# Reinstall only when the declared dependencies or the compiled kernel's source change.
stamp=.venv/.bitsmith-installed
want=$(cat pyproject.toml setup.py src/bitsmith/integer/*.c | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing bitsmith and its dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    # synth: Yosys and nextpnr as wheels, for the synthesis and place-and-route tests (-m slow)
    .venv/bin/python -m pip install -q -e ".[test,synth]"
    echo "$want" > "$stamp"
fi
