# Sourced by scripts/demo and scripts/check: make sure .venv exists and holds this checkout.
# Re-installs only when pyproject.toml changed, so the second run starts in a second.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${HANGUP_PYTHON:-python3.11}
VENV="$ROOT/.venv"
command -v "$PYTHON" >/dev/null || { echo "hangup: $PYTHON not found on PATH (set HANGUP_PYTHON)" >&2; exit 2; }
if [ ! -x "$VENV/bin/python" ]; then
  echo "hangup: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.hangup-installed"
want=$(cat "$ROOT/pyproject.toml" | "$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "hangup: installing hangup and its test tools into $VENV" >&2
  "$VENV/bin/python" -m pip install -qq --upgrade pip >&2
  "$VENV/bin/python" -m pip install -qq -e "$ROOT[test]" >&2
  echo "$want" >"$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
