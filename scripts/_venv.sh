# Sourced by scripts/demo and scripts/check: make sure .venv exists and holds this checkout.
# The sourcing script sets VENV_FOR first: "demo" needs hangup and its dependencies only (about
# 100 MB); "check" adds the [test] extra (pytest, ruff, mypy, the deploy linters: about 280 MB
# more). One .venv serves both: a venv that has the test tools keeps them, so scripts/demo
# after scripts/check installs nothing, and scripts/check after scripts/demo adds only the tools.
# Re-installs only when pyproject.toml changed or more is needed, so a second run starts in a
# second.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${HANGUP_PYTHON:-python3.11}
VENV="$ROOT/.venv"
command -v "$PYTHON" >/dev/null || { echo "hangup: $PYTHON not found on PATH (set HANGUP_PYTHON)" >&2; exit 2; }
if [ ! -x "$VENV/bin/python" ]; then
  echo "hangup: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
# The stamp is "<sha256 of pyproject.toml> <demo|check>": what was installed, and for whom.
stamp="$VENV/.hangup-installed"
want=$("$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$ROOT/pyproject.toml")
have_hash="" have_for=""
if [ -f "$stamp" ]; then read -r have_hash have_for <"$stamp" || true; fi
# A stamp from before VENV_FOR holds the hash alone: that install had the test tools.
if [ -n "$have_hash" ] && [ -z "$have_for" ]; then have_for=check; fi
need_for=${VENV_FOR:?set VENV_FOR=demo or VENV_FOR=check before sourcing _venv.sh}
[ "$have_for" = check ] && need_for=check  # never strip the test tools from a venv that has them
if [ "$have_hash" != "$want" ] || [ "$have_for" != "$need_for" ]; then
  "$VENV/bin/python" -m pip install -qq --upgrade pip >&2
  if [ "$need_for" = check ]; then
    echo "hangup: installing hangup and its test tools into $VENV" >&2
    "$VENV/bin/python" -m pip install -qq -e "$ROOT[test]" >&2
  else
    echo "hangup: installing hangup (without the test tools) into $VENV" >&2
    "$VENV/bin/python" -m pip install -qq -e "$ROOT" >&2
  fi
  echo "$want $need_for" >"$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
